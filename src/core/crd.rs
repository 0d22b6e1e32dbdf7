//! The `EcrPullSecret` custom resource: many pull secrets, each with its own registries,
//! credentials, namespaces and limits, in one controller.
//!
//! The CRD YAML is generated from these types (`ecr-pull-secrets crd`) and checked in under
//! `deploy/crd/`. The API server enforces the schema and CEL rules below, so most mistakes are
//! refused at `kubectl apply` with a readable message; [`EcrPullSecretSpec::pipeline`]
//! checks the rest (globs, the label selector) and the resource's status names any problem.

// Several printer columns repeat `type_ = "string"`; clippy takes that for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::core::{Expression, Selector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::core::names::is_dns_subdomain;
use crate::core::pipeline::{
    AssumeRole, AwsIdentity, Inherited, MAX_REFRESH_INTERVAL, PipelineConfig, REFRESH_MARGIN,
    fraction_within, validate_role_arn, within, writes_within,
};
use crate::core::registry::{RegistryHost, RegistryHostError, dns_suffix};
use crate::core::selection::{SPEC, Selection};
use crate::core::service_accounts::Targets;
use crate::core::token::RefreshPolicy;

pub use crate::core::meta::OWNER_LABEL;

pub(crate) const GROUP: &str = "ecr-pull-secrets.io";
/// Holds a resource until its secrets and ServiceAccount entries are removed.
pub(crate) const FINALIZER: &str = "ecr-pull-secrets.io/cleanup";

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
    #[x_kube(validation = Rule::new(r"self.matches('^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/.+$')").message("roleArn must be an IAM role ARN such as arn:aws:iam::123456789012:role/ecr-puller"))]
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
        "# Generated by `ecr-pull-secrets crd` from src/core/crd.rs; do not edit (tests/deploy.rs checks it).\n",
    );
    out.push_str(&serde_yaml_ng::to_string(&crd).expect("the CRD serializes"));
    out
}

/// Parses a Go-style duration (`90s`, `1h30m`, `1.5h`), the syntax the CRD's rules accept.
pub(crate) fn parse_go_duration(text: &str) -> Result<Duration, String> {
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

/// `matchLabels` and `matchExpressions` as kube's [`Selector`]. Kube's conversion error names
/// neither the requirement nor what is allowed, so a refusal is described here.
pub(crate) fn spec_selector(selector: &LabelSelector) -> Result<Selector, String> {
    Selector::try_from(selector.clone()).map_err(|error| {
        let refused = selector
            .match_expressions
            .iter()
            .flatten()
            .find(|r| Expression::try_from((*r).clone()).is_err());
        match refused {
            Some(r) if matches!(r.operator.as_str(), "In" | "NotIn") => format!(
                "matchExpressions: {} {} needs at least one value",
                r.key, r.operator
            ),
            Some(r) => format!(
                "matchExpressions: operator {:?} of {} is not one of In, NotIn, Exists, DoesNotExist",
                r.operator, r.key
            ),
            None => format!("matchExpressions: {error}"),
        }
    })
}

impl EcrPullSecretSpec {
    /// The pipeline this resource (named `name`) stands for: what the spec sets, else what it
    /// `inherits` from the controller's flags. Errors name the spec field and the fix; the API
    /// server already refused most bad input (these checks hold for a CRD applied without its
    /// rules, too).
    pub fn pipeline(&self, name: &str, inherited: &Inherited) -> Result<PipelineConfig, String> {
        if !is_dns_subdomain(&self.secret_name) {
            return Err(format!(
                "spec.secretName {:?} is not a Secret name (DNS subdomain), e.g. ecr-pull-secret",
                self.secret_name
            ));
        }
        let registries = self.registry_hosts()?;
        if registries.is_empty() && !self.ecr_public {
            return Err(
                "spec: name at least one registry in spec.registries, or set spec.ecrPublic: true"
                    .into(),
            );
        }
        let service_accounts = match &self.service_accounts {
            Some(names) => Some(
                names
                    .join(",")
                    .parse::<Targets>()
                    .map_err(|e| format!("spec.serviceAccounts: {e}"))?,
            ),
            None => None,
        };
        let (write_qps, write_burst) = self.write_limits(inherited)?;
        Ok(PipelineConfig {
            secret_name: self.secret_name.clone(),
            owner: Some(name.to_string()),
            registries,
            region: None,
            ecr_public: self.ecr_public,
            selection: self.selection()?,
            service_accounts,
            adopt_existing: self.adopt_existing,
            identity: self.identity(inherited)?,
            refresh: self.refresh_policy(inherited)?,
            write_qps,
            write_burst,
        })
    }

    /// `spec.registries`: each a host, or an account and region.
    fn registry_hosts(&self) -> Result<Vec<RegistryHost>, String> {
        self.registries
            .iter()
            .map(|r| {
                let host = match (&r.host, &r.account_id, &r.region) {
                    (Some(host), None, None) => host.clone(),
                    (None, Some(account), Some(region)) => {
                        format!("{account}.dkr.ecr.{region}.{}", dns_suffix(region))
                    }
                    _ => {
                        return Err(
                            "spec.registries: each entry is a host, or an accountId with a region"
                                .to_string(),
                        );
                    }
                };
                host.parse::<RegistryHost>()
                    .map_err(|e: RegistryHostError| format!("spec.registries: {e}"))
            })
            .collect()
    }

    /// `spec.namespaces`.
    fn selection(&self) -> Result<Selection, String> {
        let namespaces = self.namespaces.clone().unwrap_or_default();
        let selector = match &namespaces.selector {
            Some(selector) => {
                spec_selector(selector).map_err(|e| format!("{}: {e}", SPEC.selector))?
            }
            None => Selector::default(),
        };
        Selection::with_selector(&SPEC, &namespaces.include, &namespaces.exclude, selector)
            .map_err(|e| e.to_string())
    }

    /// Without spec.credentials the resource is the controller's own identity (its credentials
    /// and role); with it, its secretRef (else the controller's base credentials) and only its
    /// own role.
    fn identity(&self, inherited: &Inherited) -> Result<AwsIdentity, String> {
        let Some(credentials) = &self.credentials else {
            return Ok(inherited.identity.clone());
        };
        let role = match &credentials.role_arn {
            Some(arn) => {
                validate_role_arn("spec.credentials.roleArn", arn)?;
                Some(AssumeRole {
                    role_arn: arn.clone(),
                    external_id: credentials.external_id.clone(),
                    session_name: credentials
                        .role_session_name
                        .clone()
                        .unwrap_or_else(|| "ecr-pull-secrets".into()),
                })
            }
            None => None,
        };
        Ok(AwsIdentity {
            credentials_secret: match &credentials.secret_ref {
                Some(secret) => Some(secret.name.clone()),
                None => inherited.identity.credentials_secret.clone(),
            },
            role,
        })
    }

    /// `spec.refresh` over the controller's refresh policy.
    fn refresh_policy(&self, inherited: &Inherited) -> Result<RefreshPolicy, String> {
        let spec = self.refresh.clone().unwrap_or_default();
        let mut refresh = inherited.refresh;
        if let Some(margin) = &spec.margin {
            let margin =
                parse_go_duration(margin).map_err(|e| format!("spec.refresh.margin: {e}"))?;
            refresh.margin = within("spec.refresh.margin", margin, REFRESH_MARGIN)?;
        }
        if let Some(fraction) = spec.fraction {
            refresh.fraction = fraction_within("spec.refresh.fraction", fraction)?;
        }
        if let Some(frequency) = &spec.frequency {
            let frequency =
                parse_go_duration(frequency).map_err(|e| format!("spec.refresh.frequency: {e}"))?;
            refresh.max_interval = Some(within(
                "spec.refresh.frequency",
                frequency,
                MAX_REFRESH_INTERVAL,
            )?);
        }
        Ok(refresh)
    }

    /// `spec.writes` (qps, burst) over the controller's write limits.
    fn write_limits(&self, inherited: &Inherited) -> Result<(u32, u32), String> {
        let writes = self.writes.clone().unwrap_or_default();
        let qps = match writes.qps {
            Some(qps) => writes_within("spec.writes.qps", qps.into())?,
            None => inherited.write_qps,
        };
        let burst = match writes.burst {
            Some(burst) => writes_within("spec.writes.burst", burst.into())?,
            None => inherited.write_burst,
        };
        Ok((qps, burst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pipeline::ROLE_ARN_PARTITIONS;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    /// The flags' defaults (`cli::args` checks that `RunArgs::inherited` gives these).
    fn base() -> Inherited {
        Inherited {
            identity: AwsIdentity::default(),
            refresh: crate::core::token::RefreshPolicy::default(),
            write_qps: 20,
            write_burst: 50,
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
    fn spec_selector_is_kubes() {
        use kube::core::SelectorExt;
        let requirement =
            |key: &str, operator: &str, values: Option<&[&str]>| LabelSelectorRequirement {
                key: key.into(),
                operator: operator.into(),
                values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
            };
        let selector = LabelSelector {
            match_labels: Some(BTreeMap::from([("env".into(), "prod".into())])),
            match_expressions: Some(vec![
                requirement("team", "In", Some(&["b", "a"])),
                requirement("legacy", "DoesNotExist", None),
            ]),
        };
        let selector = spec_selector(&selector).unwrap();
        assert_eq!(selector.to_string(), "env=prod,team in (a,b),!legacy");
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(selector.matches(&labels(&[("env", "prod"), ("team", "a")])));
        assert!(!selector.matches(&labels(&[("env", "prod"), ("team", "c")])));
        assert!(!selector.matches(&labels(&[("env", "prod"), ("team", "a"), ("legacy", "")])));
        for (bad, expected) in [
            (
                requirement("x", "Near", None),
                "operator \"Near\" of x is not one of In, NotIn, Exists, DoesNotExist",
            ),
            (
                requirement("x", "NotIn", None),
                "matchExpressions: x NotIn needs at least one value",
            ),
        ] {
            let bad = LabelSelector {
                match_expressions: Some(vec![bad]),
                ..LabelSelector::default()
            };
            let error = spec_selector(&bad).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        assert!(
            spec_selector(&LabelSelector::default())
                .unwrap()
                .selects_all()
        );
    }

    #[test]
    fn spec_becomes_a_pipeline() {
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
        let args = spec.pipeline("team", &base()).unwrap();
        assert_eq!(args.secret_name, "team-pull");
        assert_eq!(args.owner.as_deref(), Some("team"));
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
        let labels = |env: &str| BTreeMap::from([("env".to_string(), env.to_string())]);
        let decide = |name, env| {
            args.selection
                .decide(name, &labels(env), &BTreeMap::new(), false)
                .reason()
        };
        assert_eq!(decide("team-a", "prod"), "selected");
        assert_eq!(decide("team-legacy", "prod"), "excluded");
        assert_eq!(decide("other", "prod"), "not-included");
        assert_eq!(decide("team-a", "dev"), "label-selector");
        assert!(args.service_accounts.unwrap().matches("builder"));
        assert_eq!(
            args.identity.credentials_secret.as_deref(),
            Some("team-keys")
        );
        let role = args.identity.role.unwrap();
        assert_eq!(role.external_id.as_deref(), Some("xyz"));
        assert_eq!(role.session_name, "ecr-pull-secrets");
        assert_eq!(
            args.refresh.max_interval,
            Some(Duration::from_secs(6 * 3600))
        );
        assert_eq!(args.refresh.margin, Duration::from_secs(1800));
        assert_eq!(args.refresh.fraction, 0.25);
        assert_eq!((args.write_qps, args.write_burst), (5, 10));
    }

    #[test]
    fn credentials_replace_the_controllers_identity_as_a_whole() {
        let controller = Inherited {
            identity: AwsIdentity {
                credentials_secret: Some("controller-keys".into()),
                role: Some(AssumeRole {
                    role_arn: "arn:aws:iam::123456789012:role/controller".into(),
                    external_id: None,
                    session_name: "ecr-pull-secrets".into(),
                }),
            },
            ..base()
        };
        // No spec.credentials: the controller's identity, role included.
        let own = spec("secretName: s\necrPublic: true\n")
            .pipeline("r", &controller)
            .unwrap();
        assert_eq!(own.identity, controller.identity);
        // spec.credentials with keys only: those keys, and no role.
        let keys = spec("secretName: s\necrPublic: true\ncredentials: {secretRef: {name: k}}\n")
            .pipeline("r", &controller)
            .unwrap();
        assert_eq!(keys.identity.credentials_secret.as_deref(), Some("k"));
        assert_eq!(keys.identity.role, None);
        // spec.credentials with a role only: the controller's base credentials, that role.
        let role = spec(
            "secretName: s\necrPublic: true\ncredentials: {roleArn: 'arn:aws:iam::123456789012:role/team'}\n",
        )
        .pipeline("r", &controller)
        .unwrap();
        assert_eq!(
            role.identity.credentials_secret.as_deref(),
            Some("controller-keys")
        );
        assert_eq!(
            role.identity.role.map(|r| r.role_arn).as_deref(),
            Some("arn:aws:iam::123456789012:role/team")
        );
    }

    #[test]
    fn spec_errors_name_the_field() {
        let bad_glob = spec("secretName: s\necrPublic: true\nnamespaces: {include: ['Team_A']}\n");
        let error = bad_glob.pipeline("r", &base()).unwrap_err();
        assert!(error.contains("Team_A"), "{error}");
        assert!(error.contains("spec.namespaces.include"), "{error}");
        assert!(!error.contains("--target-namespaces"), "{error}");
        let bad_host = spec(
            "secretName: s\nregistries: [{host: 123456789012.dkr.ecr.cn-north-1.amazonaws.com}]\n",
        );
        let error = bad_host.pipeline("r", &base()).unwrap_err();
        assert!(error.starts_with("spec.registries"), "{error}");
        // What the CEL rules refuse is refused here too, naming the field (a CRD applied
        // without its rules, or an older one, lets it through).
        for (yaml, field) in [
            (
                "refresh: {margin: 13h}",
                "spec.refresh.margin 13h is out of range",
            ),
            (
                "refresh: {frequency: 30s}",
                "spec.refresh.frequency 30s is out of range",
            ),
            ("refresh: {fraction: 1.5}", "spec.refresh.fraction 1.5"),
            ("writes: {qps: 0}", "spec.writes.qps 0 is out of range"),
            ("writes: {burst: 10001}", "spec.writes.burst 10001"),
            (
                "credentials: {roleArn: 'arn:aws-iso:iam::123456789012:role/x'}",
                "spec.credentials.roleArn",
            ),
            (
                "namespaces: {selector: {matchLabels: {'a b': c}}}",
                "spec.namespaces.selector",
            ),
            (
                "namespaces: {selector: {matchExpressions: [{key: env, operator: Near}]}}",
                "spec.namespaces.selector: matchExpressions: operator \"Near\"",
            ),
            (
                "namespaces: {selector: {matchExpressions: [{key: env, operator: In, values: []}]}}",
                "spec.namespaces.selector: ",
            ),
            (
                "namespaces: {selector: {matchLabels: {env: -prod}}}",
                "spec.namespaces.selector: \"-prod\" is not a valid label value",
            ),
        ] {
            let error = spec(&format!("secretName: s\necrPublic: true\n{yaml}\n"))
                .pipeline("r", &base())
                .unwrap_err();
            assert!(error.starts_with(field), "{yaml}: {error}");
            assert!(!error.contains("--"), "{yaml}: {error}");
        }
        let error = spec("secretName: Not_A_Name\necrPublic: true\n")
            .pipeline("r", &base())
            .unwrap_err();
        assert!(error.starts_with("spec.secretName"), "{error}");
        assert!(spec("secretName: s\n").pipeline("r", &base()).is_err());
    }

    #[test]
    fn crd_has_the_rules_and_columns() {
        let yaml = crd_yaml();
        // The CEL rule accepts exactly the partitions the controller does.
        let alternatives: Vec<String> = ROLE_ARN_PARTITIONS
            .iter()
            .filter_map(|p| p.strip_prefix("aws"))
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        assert!(
            yaml.contains(&format!("^arn:aws({})?:iam::", alternatives.join("|"))),
            "the roleArn rule differs from ROLE_ARN_PARTITIONS"
        );
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
