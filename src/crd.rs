//! The `EcrPullSecret` custom resource: many pull secrets, each with its own registries,
//! credentials, namespaces and limits, in one controller.
//!
//! The CRD YAML is generated from these types (`ecr-pull-secrets crd`) and checked in under
//! `deploy/crd/`. The API server enforces the schema and CEL rules below, so most mistakes are
//! refused at `kubectl apply` with a readable message; [`EcrPullSecretSpec::to_run_args`]
//! checks the rest (globs, the label selector) and the resource's status names any problem.

// Several printer columns repeat `type_ = "string"`; clippy takes that for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::config::RunArgs;
use crate::service_account::Targets;

pub const GROUP: &str = "ecr-pull-secrets.io";
/// Holds a resource until its secrets and ServiceAccount entries are removed.
pub const FINALIZER: &str = "ecr-pull-secrets.io/cleanup";
/// On every Secret a resource writes: which resource owns it. Flag-configured secrets have none.
pub const OWNER_LABEL: &str = "ecr-pull-secrets.io/owner";

const HOST_RULE: &str =
    r"self.matches('^[0-9]{12}\\.dkr\\.ecr(-fips)?\\.[a-z0-9-]+\\.amazonaws\\.com(\\.cn)?$')";
const REGION_RULE: &str = r"self.matches('^[a-z]{2,}(-[a-z0-9]+)+-[0-9]+$')";
const NAME_RULE: &str =
    r"self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
/// Go duration syntax, as CEL's `duration()` and `kubectl` use it: `90s`, `30m`, `6h`, `1h30m`.
const DURATION_RULE: &str = r"self.matches('^([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+$')";

/// Keeps an Amazon ECR pull secret in every selected namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "ecr-pull-secrets.io",
    version = "v1alpha1",
    kind = "EcrPullSecret",
    plural = "ecrpullsecrets",
    shortname = "eps",
    status = "EcrPullSecretStatus",
    doc = "Keeps an Amazon ECR image pull secret valid in every selected namespace.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Secret", type_ = "string", json_path = ".spec.secretName"),
    printcolumn(
        name = "Namespaces",
        type_ = "integer",
        description = "Selected namespaces holding the current secret",
        json_path = ".status.namespaces.synced"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        description = "When the earliest token written expires",
        json_path = ".status.tokenExpiresAt"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.registries) > 0 || self.ecrPublic").message("name at least one registry in spec.registries, or set spec.ecrPublic: true"))]
pub struct EcrPullSecretSpec {
    /// Private ECR registries to write credentials for. One token is fetched per region and
    /// written under every host of that region.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub registries: Vec<Registry>,

    /// Also write credentials for ECR Public (public.ecr.aws; token from us-east-1).
    #[serde(default)]
    pub ecr_public: bool,

    /// Name of the pull secret written into each namespace. Unique among EcrPullSecrets;
    /// immutable (create a new resource to rename).
    #[x_kube(validation = Rule::new(NAME_RULE).message("secretName must be a DNS subdomain: lower-case letters, digits, '-' and '.', e.g. ecr-pull-secret"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("secretName is immutable: create a new EcrPullSecret with the new name, then delete this one (its secrets are removed)"))]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,

    /// Which namespaces get the secret. Empty: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespaceSelection>,

    /// ServiceAccounts whose imagePullSecrets get the secret in every selected namespace:
    /// names (e.g. default), or ["*"] for all. Our entry is appended; other entries are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!('*' in self) || size(self) == 1").message("serviceAccounts: '*' (every ServiceAccount) cannot be combined with names"))]
    #[x_kube(validation = Rule::new(format!("self.all(n, n == '*' || {})", NAME_RULE.replace("self.", "n."))).message("serviceAccounts: each entry must be a ServiceAccount name (DNS subdomain) or '*'"))]
    #[schemars(length(min = 1, max = 64), inner(length(max = 253)))]
    pub service_accounts: Option<Vec<String>>,

    /// Take over a same-named Secret that lacks our labels (default: leave it alone and report
    /// a conflict).
    #[serde(default)]
    pub adopt_existing: bool,

    /// AWS credentials. Default: the controller's own (its credentials Secret or default chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,

    /// When tokens are refreshed. Default: at half their lifetime, at least 1h before expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Refresh>,

    /// Kubernetes writes per second for this resource (each resource has its own limiter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<WriteLimits>,
}

/// A private ECR registry: its host, or the account and region it is in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.host) ? !has(self.accountId) && !has(self.region) : has(self.accountId) && has(self.region)").message("each registry needs either host, or accountId and region (not both)"))]
pub struct Registry {
    /// Registry host, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(HOST_RULE).message("host must look like 123456789012.dkr.ecr.eu-west-1.amazonaws.com (12-digit account, dkr.ecr or dkr.ecr-fips, region, amazonaws.com or amazonaws.com.cn; no https:// or path)"))]
    #[schemars(length(max = 256))]
    pub host: Option<String>,
    /// 12-digit AWS account ID (with region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{12}$')").message("accountId must be the 12-digit AWS account ID, e.g. '123456789012' (quote it in YAML)"))]
    #[schemars(length(max = 12))]
    pub account_id: Option<String>,
    /// AWS region (with accountId), e.g. eu-west-1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(REGION_RULE).message("region must be an AWS region name such as eu-west-1"))]
    #[schemars(length(max = 32))]
    pub region: Option<String>,
}

/// Namespace selection; every part must match. The annotation ecr-pull-secrets.io/exclude=true
/// on a namespace always opts it out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelection {
    /// Only these namespaces: names or globs (team-*, *-prod). Empty: every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(max = 253)))]
    pub include: Vec<String>,
    /// Never these namespaces: names or globs; wins over include.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(max = 253)))]
    pub exclude: Vec<String>,
    /// Only namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Where the AWS credentials come from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.externalId) || has(self.roleArn)").message("credentials.externalId needs credentials.roleArn"))]
pub struct Credentials {
    /// A Secret in the controller's namespace with aws_access_key_id and aws_secret_access_key
    /// (optionally aws_session_token); watched, so rotated keys apply without a restart.
    /// Default: the controller's own credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// IAM role to assume on top of the base credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^arn:aws(-cn|-us-gov|-iso[a-z]*)?:iam::[0-9]{12}:role/.+$')").message("roleArn must be an IAM role ARN such as arn:aws:iam::123456789012:role/ecr-puller"))]
    #[schemars(length(max = 2048))]
    pub role_arn: Option<String>,
    /// External ID required by the role's trust policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1224))]
    pub external_id: Option<String>,
    /// Session name of the assumed role (shows in CloudTrail). Default: ecr-pull-secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(r"self.matches('^[\\w+=,.@-]{2,64}$')").message("roleSessionName: 2 to 64 characters of letters, digits and +=,.@-"))]
    #[schemars(length(max = 64))]
    pub role_session_name: Option<String>,
}

/// A Secret in the controller's own namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct SecretRef {
    #[x_kube(validation = Rule::new(NAME_RULE).message("secretRef.name must be a Secret name (DNS subdomain)"))]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Refresh timing. A token is refreshed at the earliest of: `margin` before expiry,
/// `fraction` of its lifetime before expiry, and `frequency` after it was fetched.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Refresh {
    /// Upper bound on the time between refreshes (the edenlab operator's `frequency`), e.g. 6h.
    /// Go duration syntax (90m, 6h, 1h30m); at least 1m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("frequency must be a duration such as 30m, 6h or 1h30m"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$') || duration(self) >= duration('1m')").message("frequency must be at least 1m (refreshing more often only costs AWS calls)"))]
    #[schemars(length(max = 32))]
    pub frequency: Option<String>,
    /// Refresh at least this long before expiry. Default: 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("margin must be a duration such as 30m, 1h or 1h30m"))]
    #[schemars(length(max = 32))]
    pub margin: Option<String>,
    /// ... and at least this fraction of the token's lifetime before expiry. Default: 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0").message("fraction must be between 0 and 1 (exclusive), e.g. 0.5"))]
    pub fraction: Option<f64>,
}

/// Write rate limits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WriteLimits {
    /// Sustained writes per second. Default: 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub qps: Option<i32>,
    /// Writes allowed in a burst above qps. Default: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub burst: Option<i32>,
}

/// What the controller observed for a resource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EcrPullSecretStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready: every selected namespace holds the current secret and every token refreshes.
    /// Degraded: something needs attention; the reason and message say what.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// When the earliest token written expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<String>,
    /// The oldest of the identities' last successful refreshes (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<String>,
    /// Namespaces by the state of their secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespaceCounts>,
    /// One entry per token identity (region, or ecr-public).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityStatus>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceCounts {
    /// Holding the current secret.
    #[schemars(extend("format" = "int32"))]
    pub synced: u32,
    /// Last write failed (retried with backoff).
    #[schemars(extend("format" = "int32"))]
    pub failed: u32,
    /// A foreign Secret with our name is in the way (left untouched).
    #[schemars(extend("format" = "int32"))]
    pub conflict: u32,
    /// Waiting for the first token.
    #[schemars(extend("format" = "int32"))]
    pub pending: u32,
    /// Holding the last good token, which has expired: refreshing has failed for longer than
    /// a token lives, and pulls fail until AWS answers again.
    #[serde(default)]
    #[schemars(extend("format" = "int32"))]
    pub expired: u32,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IdentityStatus {
    /// A region, or ecr-public.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<String>,
    /// Fetches failed in a row since the last success.
    #[schemars(extend("format" = "int32"))]
    pub consecutive_failures: u32,
    /// The last failure, when the latest fetch failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The CRD as YAML, as `ecr-pull-secrets crd` prints it and deploy/crd/ holds it.
pub fn crd_yaml() -> String {
    let crd = EcrPullSecret::crd();
    let mut out = String::from(
        "# Generated by `ecr-pull-secrets crd` from src/crd.rs; do not edit (tests/deploy.rs checks it).\n",
    );
    out.push_str(&serde_yaml_ng::to_string(&crd).expect("the CRD serializes"));
    out
}

/// Parses a Go-style duration (`90s`, `1h30m`, `1.5h`), the syntax the CRD's rules accept.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration; use forms such as 30m, 6h or 1h30m");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// `matchLabels` and `matchExpressions` in `kubectl -l` syntax, which [`crate::selection`] parses.
pub fn selector_string(selector: &LabelSelector) -> Result<Option<String>, String> {
    let mut parts = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        parts.push(format!("{key}={value}"));
    }
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default();
        let key = &expression.key;
        match expression.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "matchExpressions: {key} {} needs at least one value",
                    expression.operator
                ));
            }
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.clone()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            other => {
                return Err(format!(
                    "matchExpressions: operator {other:?} of {key} is not one of In, NotIn, Exists, DoesNotExist"
                ));
            }
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join(",")))
}

impl EcrPullSecretSpec {
    /// The controller configuration this resource stands for: `base` (the controller's own
    /// flags: timeouts, namespace, concurrency) with everything the spec sets. Errors name the
    /// spec field and the fix; the API server already refused most bad input.
    pub fn to_run_args(&self, base: &RunArgs) -> Result<RunArgs, String> {
        let mut args = base.clone();
        args.secret_name = self.secret_name.clone();
        args.registries = self
            .registries
            .iter()
            .map(|r| {
                let host = match (&r.host, &r.account_id, &r.region) {
                    (Some(host), None, None) => host.clone(),
                    (None, Some(account), Some(region)) => format!(
                        "{account}.dkr.ecr.{region}.{}",
                        crate::registry::dns_suffix(region)
                    ),
                    _ => {
                        return Err(
                            "spec.registries: each entry is a host, or an accountId with a region"
                                .to_string(),
                        );
                    }
                };
                host.parse()
                    .map_err(|e: crate::registry::RegistryHostError| {
                        format!("spec.registries: {e}")
                    })
            })
            .collect::<Result<_, _>>()?;
        args.region = None;
        args.ecr_public = self.ecr_public;
        let namespaces = self.namespaces.clone().unwrap_or_default();
        args.target_namespaces = namespaces.include;
        args.exclude_namespaces = namespaces.exclude;
        args.namespace_selector = match &namespaces.selector {
            Some(selector) => {
                selector_string(selector).map_err(|e| format!("spec.namespaces.selector: {e}"))?
            }
            None => None,
        };
        args.service_accounts = match &self.service_accounts {
            Some(names) => Some(
                names
                    .join(",")
                    .parse::<Targets>()
                    .map_err(|e| format!("spec.serviceAccounts: {e}"))?,
            ),
            None => None,
        };
        args.adopt_existing = self.adopt_existing;
        // Without spec.credentials the resource is the controller's own identity (its
        // credentials and role); with it, its secretRef (else the controller's base
        // credentials) and only its own role.
        if let Some(credentials) = self.credentials.clone() {
            if let Some(secret) = credentials.secret_ref {
                args.credentials_secret = Some(secret.name);
            }
            args.role_arn = credentials.role_arn;
            args.role_external_id = credentials.external_id;
            if let Some(session) = credentials.role_session_name {
                args.role_session_name = session;
            }
        }
        let refresh = self.refresh.clone().unwrap_or_default();
        if let Some(margin) = &refresh.margin {
            args.refresh_margin =
                parse_go_duration(margin).map_err(|e| format!("spec.refresh.margin: {e}"))?;
        }
        if let Some(fraction) = refresh.fraction {
            args.refresh_fraction = fraction;
        }
        if let Some(frequency) = &refresh.frequency {
            args.max_refresh_interval = Some(
                parse_go_duration(frequency).map_err(|e| format!("spec.refresh.frequency: {e}"))?,
            );
        }
        let writes = self.writes.clone().unwrap_or_default();
        // The schema keeps both at 1 or more.
        args.write_qps = writes.qps.map_or(args.write_qps, |q| q.max(1) as u32);
        args.write_burst = writes.burst.map_or(args.write_burst, |b| b.max(1) as u32);
        // validate's messages name the flags; a resource's user wrote the spec fields.
        args.validate().map_err(|e| {
            e.replace("--target-namespaces", "spec.namespaces.include")
                .replace("--exclude-namespaces", "spec.namespaces.exclude")
                .replace("--namespace-selector", "spec.namespaces.selector")
        })?;
        Ok(args)
    }
}

/// Labels a resource's Secrets carry besides the managed-by label.
pub fn owner_labels(owner: Option<&str>) -> BTreeMap<String, String> {
    owner
        .map(|o| BTreeMap::from([(OWNER_LABEL.to_string(), o.to_string())]))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn base() -> RunArgs {
        match crate::config::Cli::parse_from(["ecr-pull-secrets", "run", "--region", "us-east-1"])
            .command
        {
            crate::config::Command::Run(args) => args,
            _ => unreachable!(),
        }
    }

    fn spec(yaml: &str) -> EcrPullSecretSpec {
        serde_yaml_ng::from_str(yaml).expect("spec parses")
    }

    #[test]
    fn go_durations() {
        let s = Duration::from_secs;
        for (text, expected) in [
            ("90s", s(90)),
            ("30m", s(1800)),
            ("6h", s(6 * 3600)),
            ("1h30m", s(5400)),
            ("1.5h", s(5400)),
            ("500ms", Duration::from_millis(500)),
        ] {
            assert_eq!(parse_go_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "6", "h", "6 h", "1d", "-1h", "1h-"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_selector_in_kubectl_syntax() {
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("env".into(), "prod".into())])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "team".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "legacy".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        let text = selector_string(&selector).unwrap().unwrap();
        assert_eq!(text, "env=prod,team in (a,b),!legacy");
        crate::selection::Selection::new(&[], &[], Some(&text)).expect("the selection parses it");
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..LabelSelector::default()
        };
        assert!(selector_string(&bad).unwrap_err().contains("Near"));
        assert_eq!(selector_string(&LabelSelector::default()), Ok(None));
    }

    #[test]
    fn spec_becomes_run_args() {
        let spec = spec(
            r#"
            secretName: team-pull
            registries:
              - host: 123456789012.dkr.ecr.eu-west-1.amazonaws.com
              - accountId: "210987654321"
                region: cn-north-1
            namespaces:
              include: [team-*]
              exclude: [team-legacy]
              selector: {matchLabels: {env: prod}}
            serviceAccounts: [default, builder]
            credentials:
              secretRef: {name: team-keys}
              roleArn: arn:aws:iam::123456789012:role/puller
              externalId: xyz
            refresh: {frequency: 6h, margin: 30m, fraction: 0.25}
            writes: {qps: 5, burst: 10}
            "#,
        );
        let args = spec.to_run_args(&base()).unwrap();
        assert_eq!(args.secret_name, "team-pull");
        assert_eq!(
            args.registries
                .iter()
                .map(|r| r.host().to_string())
                .collect::<Vec<_>>(),
            [
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                "210987654321.dkr.ecr.cn-north-1.amazonaws.com.cn"
            ]
        );
        assert_eq!(args.regions(), ["cn-north-1", "eu-west-1"]);
        assert_eq!(args.target_namespaces, ["team-*"]);
        assert_eq!(args.namespace_selector.as_deref(), Some("env=prod"));
        assert!(args.service_accounts.unwrap().matches("builder"));
        assert_eq!(args.credentials_secret.as_deref(), Some("team-keys"));
        assert_eq!(args.role_external_id.as_deref(), Some("xyz"));
        assert_eq!(
            args.max_refresh_interval,
            Some(Duration::from_secs(6 * 3600))
        );
        assert_eq!(args.refresh_margin, Duration::from_secs(1800));
        assert_eq!((args.write_qps, args.write_burst), (5, 10));
    }

    #[test]
    fn credentials_replace_the_controllers_identity_as_a_whole() {
        let mut controller = base();
        controller.role_arn = Some("arn:aws:iam::123456789012:role/controller".into());
        controller.credentials_secret = Some("controller-keys".into());
        // No spec.credentials: the controller's identity, role included.
        let own = spec("secretName: s\necrPublic: true\n")
            .to_run_args(&controller)
            .unwrap();
        assert_eq!(own.role_arn, controller.role_arn);
        // spec.credentials with keys only: those keys, and no role.
        let keys = spec("secretName: s\necrPublic: true\ncredentials: {secretRef: {name: k}}\n")
            .to_run_args(&controller)
            .unwrap();
        assert_eq!(keys.credentials_secret.as_deref(), Some("k"));
        assert_eq!(keys.role_arn, None);
        // spec.credentials with a role only: the controller's base credentials, that role.
        let role = spec(
            "secretName: s\necrPublic: true\ncredentials: {roleArn: 'arn:aws:iam::123456789012:role/team'}\n",
        )
        .to_run_args(&controller)
        .unwrap();
        assert_eq!(role.credentials_secret.as_deref(), Some("controller-keys"));
        assert_eq!(
            role.role_arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/team")
        );
    }

    #[test]
    fn spec_errors_name_the_field() {
        let bad_glob = spec("secretName: s\necrPublic: true\nnamespaces: {include: ['Team_A']}\n");
        let error = bad_glob.to_run_args(&base()).unwrap_err();
        assert!(error.contains("Team_A"), "{error}");
        assert!(error.contains("spec.namespaces.include"), "{error}");
        assert!(!error.contains("--target-namespaces"), "{error}");
        let bad_host = spec(
            "secretName: s\nregistries: [{host: 123456789012.dkr.ecr.cn-north-1.amazonaws.com}]\n",
        );
        let error = bad_host.to_run_args(&base()).unwrap_err();
        assert!(error.starts_with("spec.registries"), "{error}");
    }

    #[test]
    fn crd_has_the_rules_and_columns() {
        let yaml = crd_yaml();
        for needle in [
            "name: ecrpullsecrets.ecr-pull-secrets.io",
            "scope: Cluster",
            "x-kubernetes-validations",
            "secretName is immutable",
            "jsonPath: .spec.secretName",
            "status: {}",
        ] {
            assert!(yaml.contains(needle), "missing {needle:?} in\n{yaml}");
        }
    }
}
