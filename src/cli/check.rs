//! `ecr-pull-secrets check`: a preflight of a configuration without changing anything. It
//! validates the flags, reaches the API server, asks it (SelfSubjectAccessReview) for every
//! permission the controller needs, reads the credentials Secret and fetches one token per
//! identity. Tokens are reduced to their hosts and expiry at once; nothing secret is printed.
//! Exit code 0 only when nothing failed.

use std::fmt::Write as _;
use std::future::Future;
use std::time::SystemTime;

use futures::future::join_all;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use serde::Serialize;

use crate::aws::credentials::{self, CredentialsError, SecretCredentials};
use crate::aws::ecr::{EcrPublicTokenSource, EcrTokenSource, TokenSource};
use crate::cli::args::{CheckArgs, CheckOutput, RunArgs};
use crate::cli::run;
use crate::core::pipeline::PipelineConfig;
use crate::core::registry::RegistryHost;
use crate::core::token::{ECR_PUBLIC, ECR_PUBLIC_HOST, ErrorClass, FetchError, Token, error_chain};
use crate::k8s::client;

/// Names in the shipped manifests (deploy/common.yaml); other names need edited roles.
pub(crate) const SHIPPED_NAMESPACE: &str = "ecr-pull-secrets";
pub(crate) const SHIPPED_SECRET_NAME: &str = "ecr-pull-secret";
pub(crate) const SHIPPED_LEASE_NAME: &str = "ecr-pull-secrets";
pub(crate) const SHIPPED_CREDENTIALS_SECRET: &str = "aws-credentials";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// The outcome of one check. A failure always carries a fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Check {
    pub(crate) status: Status,
    pub(crate) name: String,
    pub(crate) detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fix: Option<String>,
}

impl Check {
    pub(crate) fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            status: Status::Pass,
            name: name.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    pub(crate) fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            status: Status::Fail,
            name: name.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub(crate) fn skip(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            status: Status::Skip,
            name: name.into(),
            detail: detail.into(),
            fix: None,
        }
    }
}

/// Every check, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Report {
    pub(crate) checks: Vec<Check>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    ok: bool,
    passed: usize,
    failed: usize,
    skipped: usize,
    checks: &'a [Check],
}

impl Report {
    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// True when nothing failed (skipped checks are fine).
    pub(crate) fn ok(&self) -> bool {
        self.count(Status::Fail) == 0
    }

    /// `6 passed, 1 failed, 2 skipped`.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Skip)
        )
    }

    /// One line per check (`PASS  name  detail`), a `fix:` line under each failure (`as
    /// above` when it repeats the previous line's), and the summary.
    pub(crate) fn text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        let mut previous_fix = None;
        for check in &self.checks {
            let _ = writeln!(
                out,
                "{}  {:width$}  {}",
                check.status.label(),
                check.name,
                one_line(&check.detail)
            );
            if let Some(fix) = &check.fix {
                if previous_fix == Some(fix) {
                    let _ = writeln!(out, "      fix: as above");
                } else {
                    let _ = writeln!(out, "      fix: {}", one_line(fix));
                }
            }
            previous_fix = check.fix.as_ref();
        }
        let _ = writeln!(out, "\n{}", self.summary());
        out
    }

    pub(crate) fn json(&self) -> String {
        let report = JsonReport {
            ok: self.ok(),
            passed: self.count(Status::Pass),
            failed: self.count(Status::Fail),
            skipped: self.count(Status::Skip),
            checks: &self.checks,
        };
        serde_json::to_string_pretty(&report).expect("plain strings serialize") + "\n"
    }
}

/// Multi-line messages (the AWS SDK's credential chain report) joined with `; `, so every
/// check stays one line.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(if out.ends_with(':') { " " } else { "; " });
        }
        out.push_str(line);
    }
    out
}

/// Where the shipped manifests grant a permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// The ClusterRole `ecr-pull-secrets` (every namespace).
    ClusterRole,
    /// The Role `ecr-pull-secrets` in the controller's namespace.
    Role,
}

/// One verb on one resource the controller needs, as a SelfSubjectAccessReview asks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Permission {
    pub(crate) verb: &'static str,
    pub(crate) group: &'static str,
    pub(crate) resource: &'static str,
    /// `None`: cluster-scoped, or every namespace.
    pub(crate) namespace: Option<String>,
    /// Only this object (a `resourceNames` rule); `None`: any name.
    pub(crate) name: Option<String>,
    pub(crate) grant: Grant,
    /// A subresource such as `status`.
    pub(crate) subresource: Option<&'static str>,
    /// The EcrPullSecret that needs this (its secretName or credentials Secret).
    pub(crate) resource_owner: Option<String>,
}

impl Permission {
    /// kubectl's spelling: `secrets/ecr-pull-secret`, `leases.coordination.k8s.io/<name>`.
    pub(crate) fn target(&self) -> String {
        let mut target = self.resource.to_string();
        if !self.group.is_empty() {
            target = format!("{target}.{}", self.group);
        }
        if let Some(name) = &self.name {
            target = format!("{target}/{name}");
        }
        if let Some(subresource) = self.subresource {
            target = format!("{target} (subresource {subresource})");
        }
        target
    }

    /// `patch secrets/ecr-pull-secret in every namespace`.
    pub(crate) fn describe(&self) -> String {
        let scope = match (&self.namespace, self.resource) {
            (_, "namespaces") => String::new(),
            (None, _) => " in every namespace".to_string(),
            (Some(ns), _) => format!(" in namespace {ns}"),
        };
        format!("{} {}{scope}", self.verb, self.target())
    }

    fn review(&self) -> SelfSubjectAccessReview {
        SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(self.group.to_string()),
                    resource: Some(self.resource.to_string()),
                    verb: Some(self.verb.to_string()),
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    subresource: self.subresource.map(str::to_string),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        }
    }
}

/// Every permission `run` with these flags needs, mirroring deploy/common.yaml. The lease and
/// the credentials Secret live in `own_namespace` unless --lease-namespace says otherwise.
pub(crate) fn required_permissions(args: &RunArgs, own_namespace: &str) -> Vec<Permission> {
    let cluster = |verb, group, resource, name: Option<&str>| Permission {
        verb,
        group,
        resource,
        namespace: None,
        name: name.map(str::to_string),
        grant: Grant::ClusterRole,
        subresource: None,
        resource_owner: None,
    };
    let local = |verb, group, resource, namespace: &str, name: Option<&str>| Permission {
        verb,
        group,
        resource,
        namespace: Some(namespace.to_string()),
        name: name.map(str::to_string),
        grant: Grant::Role,
        subresource: None,
        resource_owner: None,
    };
    let mut needed = Vec::new();
    for verb in ["get", "list", "watch"] {
        needed.push(cluster(verb, "", "namespaces", None));
    }
    // A server-side apply that creates is authorised as create, which takes no name.
    needed.push(cluster("create", "", "secrets", None));
    // The Secret watch selects metadata.name, so list and watch are asked by name too.
    for verb in ["get", "list", "watch", "patch", "delete"] {
        needed.push(cluster(verb, "", "secrets", Some(&args.secret.secret_name)));
    }
    if args.selection.service_accounts.is_some() {
        for verb in ["get", "list", "watch", "patch"] {
            needed.push(cluster(verb, "", "serviceaccounts", None));
        }
    }
    for verb in ["create", "patch"] {
        needed.push(cluster(verb, "events.k8s.io", "events", None));
    }
    let lease_namespace = args
        .lease
        .lease_namespace
        .as_deref()
        .unwrap_or(own_namespace);
    needed.push(local(
        "create",
        "coordination.k8s.io",
        "leases",
        lease_namespace,
        None,
    ));
    for verb in ["get", "list", "watch", "update"] {
        needed.push(local(
            verb,
            "coordination.k8s.io",
            "leases",
            lease_namespace,
            Some(&args.lease.lease_name),
        ));
    }
    if let Some(name) = &args.credentials_secret {
        for verb in ["get", "list", "watch"] {
            needed.push(local(verb, "", "secrets", own_namespace, Some(name)));
        }
    }
    if args.resources {
        // Finalizers are added and removed with patches; status is written with its own patch.
        for verb in ["get", "list", "watch", "patch"] {
            needed.push(cluster(
                verb,
                crate::core::crd::GROUP,
                "ecrpullsecrets",
                None,
            ));
        }
        needed.push(Permission {
            subresource: Some("status"),
            ..cluster("patch", crate::core::crd::GROUP, "ecrpullsecrets", None)
        });
    }
    needed
}

/// What EcrPullSecret `owner` (configured as `resource`) needs beyond the controller's own
/// permissions: its Secret by name everywhere, its credentials Secret by name.
pub(crate) fn resource_permissions(
    owner: &str,
    resource: &PipelineConfig,
    base: &RunArgs,
    own_namespace: &str,
) -> Vec<Permission> {
    let permission =
        |verb, resource: &'static str, namespace: Option<&str>, name: Option<&str>| Permission {
            verb,
            group: "",
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            grant: if namespace.is_some() {
                Grant::Role
            } else {
                Grant::ClusterRole
            },
            subresource: None,
            resource_owner: Some(owner.to_string()),
        };
    // What the controller's own flags do not ask for already.
    let mut needed = Vec::new();
    if resource.secret_name != base.secret.secret_name {
        for verb in ["get", "list", "watch", "patch", "delete"] {
            needed.push(permission(
                verb,
                "secrets",
                None,
                Some(&resource.secret_name),
            ));
        }
    }
    if resource.service_accounts.is_some() && base.selection.service_accounts.is_none() {
        for verb in ["get", "list", "watch", "patch"] {
            needed.push(permission(verb, "serviceaccounts", None, None));
        }
    }
    if let Some(name) = &resource.identity.credentials_secret
        && base.credentials_secret.as_ref() != Some(name)
    {
        for verb in ["get", "list", "watch"] {
            needed.push(permission(verb, "secrets", Some(own_namespace), Some(name)));
        }
    }
    needed
}

/// `ServiceAccount ns/name` or `user name`, from the username the API server authenticated.
pub(crate) fn subject(username: Option<&str>) -> String {
    match username {
        Some(user) => match user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((namespace, name)) => format!("ServiceAccount {namespace}/{name}"),
            None => format!("user {user}"),
        },
        None => "the controller's ServiceAccount".to_string(),
    }
}

/// How to grant a denied permission: which shipped role holds it, and which `resourceNames`
/// to edit when a name differs from the shipped one.
pub(crate) fn fix_for(permission: &Permission, username: Option<&str>) -> String {
    let who = subject(username);
    let mut fix = match (permission.grant, permission.namespace.as_deref()) {
        (Grant::Role, Some(namespace)) => {
            let mut fix = format!(
                "apply deploy/common.yaml: its Role and RoleBinding ecr-pull-secrets grant this; they must be in namespace {namespace} and bind {who}"
            );
            if namespace != SHIPPED_NAMESPACE {
                let _ = write!(fix, " (the shipped ones are in {SHIPPED_NAMESPACE})");
            }
            fix
        }
        _ => format!(
            "apply deploy/common.yaml: its ClusterRole ecr-pull-secrets grants this; a ClusterRoleBinding must bind it to {who}"
        ),
    };
    let renamed = |flag: &str, name: &str, shipped: &str, rule: &str| {
        format!(
            "; {flag} is {name}, so change resourceNames [\"{shipped}\"] to [\"{name}\"] in the {rule} rule"
        )
    };
    if let (Some(owner), Some(name)) = (&permission.resource_owner, &permission.name) {
        let (rule, value) = match permission.grant {
            Grant::ClusterRole => ("ClusterRole's secrets", "customResources.secretNames"),
            Grant::Role => ("Role's credentials", "customResources.credentialsSecrets"),
        };
        let _ = write!(
            fix,
            "; EcrPullSecret {owner} needs Secret {name}: add \"{name}\" to resourceNames in the {rule} rule (Helm: {value})"
        );
        return fix;
    }
    match (
        permission.resource,
        permission.grant,
        permission.name.as_deref(),
    ) {
        ("secrets", Grant::ClusterRole, Some(name)) if name != SHIPPED_SECRET_NAME => {
            fix.push_str(&renamed(
                "--secret-name",
                name,
                SHIPPED_SECRET_NAME,
                "ClusterRole's secrets",
            ))
        }
        ("secrets", Grant::Role, Some(name)) if name != SHIPPED_CREDENTIALS_SECRET => {
            fix.push_str(&renamed(
                "--credentials-secret",
                name,
                SHIPPED_CREDENTIALS_SECRET,
                "Role's secrets",
            ))
        }
        ("leases", _, Some(name)) if name != SHIPPED_LEASE_NAME => fix.push_str(&renamed(
            "--lease-name",
            name,
            SHIPPED_LEASE_NAME,
            "Role's leases",
        )),
        _ => {}
    }
    fix
}

/// What one token covers: `<hosts>; expires <RFC 3339> (in 11h59m)`. Never the token.
pub(crate) fn describe_token(hosts: &[String], expires_at: SystemTime, now: SystemTime) -> String {
    let when = match expires_at.duration_since(now) {
        Ok(left) => format!("in {}", crate::core::time::span(left)),
        Err(past) => format!("expired {} ago", crate::core::time::span(past.duration())),
    };
    format!(
        "token for {}; expires {} ({when})",
        hosts.join(", "),
        crate::core::time::rfc3339(expires_at)
    )
}

/// The hosts the controller writes with this token: ECR Public's one host; a region's
/// configured hosts, or without any, the credentials' own registry in the region.
pub(crate) fn token_hosts(token: &Token, configured: &[RegistryHost]) -> Vec<String> {
    if token.identity == ECR_PUBLIC {
        return vec![ECR_PUBLIC_HOST.to_string()];
    }
    if configured.is_empty() {
        return vec![token.registry.clone()];
    }
    configured
        .iter()
        .filter(|h| h.region() == token.identity)
        .map(|h| h.host().to_string())
        .collect()
}

/// A short summary of what is being checked, for the configuration line.
pub(crate) fn describe_config(config: &PipelineConfig) -> String {
    let mut identities = config.regions();
    if config.ecr_public {
        identities.push(ECR_PUBLIC.to_string());
    }
    let credentials = match &config.identity.credentials_secret {
        Some(name) => format!("credentials Secret {name}"),
        None => "default AWS credentials chain".to_string(),
    };
    let mut out = format!(
        "secret {}; identities {}; {credentials}",
        config.secret_name,
        identities.join(", ")
    );
    if let Some(role) = &config.identity.role {
        let _ = write!(out, "; role {}", role.role_arn);
    }
    out
}

/// Runs every check and prints the report; true when nothing failed.
pub async fn check(args: &CheckArgs) -> bool {
    let report = run_checks(&args.run).await;
    let shown = match args.output {
        CheckOutput::Text => report.text(),
        CheckOutput::Json => report.json(),
    };
    print!("{shown}");
    report.ok()
}

/// `future` bounded by --api-timeout.
async fn bounded<T>(args: &RunArgs, future: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(args.client.api_timeout, future)
        .await
        .ok()
}

/// Every check, in order. Never an error: a problem is a failed check with its fix.
pub(crate) async fn run_checks(args: &RunArgs) -> Report {
    let mut report = Report::default();
    let flags = args.as_pipeline();
    let valid = match &flags {
        Ok(config) => {
            report
                .checks
                .push(Check::pass("configuration", describe_config(config)));
            true
        }
        Err(message) => {
            report.checks.push(Check::fail(
                "configuration",
                message.clone(),
                "change the flag or environment variable named above (docs/configuration.md lists them all)",
            ));
            false
        }
    };

    let cluster = kubernetes(args, &mut report).await;
    match &cluster {
        Some((client, username)) => {
            let own_namespace = run::own_namespace(client, args);
            let extra = if args.resources {
                resources(args, client, &own_namespace, &mut report).await
            } else {
                Vec::new()
            };
            permissions(
                args,
                extra,
                client,
                &own_namespace,
                username.as_deref(),
                &mut report,
            )
            .await;
        }
        None => report.checks.push(Check::skip(
            "permission",
            "needs the Kubernetes API server (see above)",
        )),
    }
    let base = credentials_secret(args, cluster.as_ref().map(|c| &c.0), &mut report).await;

    if !valid {
        report.checks.push(Check::skip(
            "aws",
            "the configuration is invalid; fix it first",
        ));
    } else if let (Ok(base), Ok(config)) = (base, &flags) {
        aws(args, config, base, &mut report).await;
    } else {
        report.checks.push(Check::skip(
            "aws",
            "needs the credentials Secret (see above)",
        ));
    }
    report
}

const KUBE_FIX: &str = "run the check where the controller runs (kubectl -n ecr-pull-secrets exec deploy/ecr-pull-secrets -- ecr-pull-secrets check), or point KUBECONFIG at the cluster; check that the API server is reachable and the credentials are valid";

/// The API server answers; returns the client and the username it authenticated us as.
async fn kubernetes(args: &RunArgs, report: &mut Report) -> Option<(Client, Option<String>)> {
    let config = match client::kube_config().await {
        Ok(config) => config,
        Err(error) => {
            report
                .checks
                .push(Check::fail("kubernetes", error.to_string(), KUBE_FIX));
            return None;
        }
    };
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = match client::client_from(config) {
        Ok(client) => client,
        Err(error) => {
            report
                .checks
                .push(Check::fail("kubernetes", error.to_string(), KUBE_FIX));
            return None;
        }
    };
    let version = match bounded(args, client.apiserver_version()).await {
        Some(Ok(info)) => info.git_version,
        Some(Err(error)) => {
            report.checks.push(Check::fail(
                "kubernetes",
                format!("API server {url}: {}", error_chain(&error)),
                KUBE_FIX,
            ));
            return None;
        }
        None => {
            report.checks.push(Check::fail(
                "kubernetes",
                format!(
                    "API server {url} did not answer within {:?} (--api-timeout)",
                    args.client.api_timeout
                ),
                KUBE_FIX,
            ));
            return None;
        }
    };
    let username = whoami(args, &client).await;
    let mut detail = format!("API server {url} answered, version {version}");
    if let Some(user) = &username {
        let _ = write!(detail, "; authenticated as {user}");
    }
    report.checks.push(Check::pass("kubernetes", detail));
    Some((client, username))
}

/// Our username, from a SelfSubjectReview (every authenticated user may ask); best effort.
async fn whoami(args: &RunArgs, client: &Client) -> Option<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = bounded(
        args,
        api.create(&PostParams::default(), &SelfSubjectReview::default()),
    )
    .await?
    .ok()?;
    review.status?.user_info?.username
}

/// With --resources: the CRD is served, every EcrPullSecret's spec makes a configuration; returns
/// the permissions the resources need beyond the controller's own.
async fn resources(
    args: &RunArgs,
    client: &Client,
    own_namespace: &str,
    report: &mut Report,
) -> Vec<Permission> {
    let api: Api<crate::core::crd::EcrPullSecret> = Api::all(client.clone());
    let list = match bounded(args, api.list(&Default::default())).await {
        Some(Ok(list)) => list,
        Some(Err(error))
            if crate::core::api_failure::ApiFailure::of(&error)
                == crate::core::api_failure::ApiFailure::NotFound =>
        {
            report.checks.push(Check::fail(
                "resources",
                "the EcrPullSecret CRD is not installed",
                "make install, or kubectl apply -f deploy/crd/ecrpullsecrets.yaml",
            ));
            return Vec::new();
        }
        Some(Err(error)) => {
            report.checks.push(Check::fail(
                "resources",
                format!("listing EcrPullSecrets: {error}"),
                "grant list on ecrpullsecrets (deploy/common.yaml's ClusterRole)",
            ));
            return Vec::new();
        }
        None => {
            report.checks.push(Check::fail(
                "resources",
                format!(
                    "listing EcrPullSecrets took longer than {:?}",
                    args.client.api_timeout
                ),
                KUBE_FIX,
            ));
            return Vec::new();
        }
    };
    if list.items.is_empty() {
        report
            .checks
            .push(Check::pass("resources", "no EcrPullSecret yet"));
    }
    let mut needed = Vec::new();
    for resource in &list.items {
        let name = kube::ResourceExt::name_any(resource);
        match resource.spec.pipeline(&name, &args.inherited()) {
            Ok(config) => {
                report.checks.push(Check::pass(
                    "resources",
                    format!("EcrPullSecret {name}: {}", describe_config(&config)),
                ));
                needed.extend(resource_permissions(&name, &config, args, own_namespace));
            }
            Err(message) => report.checks.push(Check::fail(
                "resources",
                format!("EcrPullSecret {name}: {message}"),
                "fix the resource's spec (docs/configuration.md, EcrPullSecret resources)",
            )),
        }
    }
    needed
}

/// One SelfSubjectAccessReview per needed verb, all at once.
async fn permissions(
    args: &RunArgs,
    extra: Vec<Permission>,
    client: &Client,
    own_namespace: &str,
    username: Option<&str>,
    report: &mut Report,
) {
    let mut needed = required_permissions(args, own_namespace);
    for permission in extra {
        // One review per distinct question, whoever needs it.
        let question = |p: &Permission| (p.verb, p.resource, p.namespace.clone(), p.name.clone());
        if !needed.iter().any(|p| question(p) == question(&permission)) {
            needed.push(permission);
        }
    }
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answers = join_all(needed.iter().map(|permission| {
        let api = api.clone();
        async move {
            let review = permission.review();
            bounded(args, api.create(&PostParams::default(), &review)).await
        }
    }))
    .await;
    for (permission, answer) in needed.iter().zip(answers) {
        let check = match answer {
            Some(Ok(review)) => {
                let status = review.status.unwrap_or_default();
                if status.allowed {
                    Check::pass("permission", permission.describe())
                } else {
                    let mut detail = format!("{}: denied", permission.describe());
                    for why in [status.reason, status.evaluation_error]
                        .into_iter()
                        .flatten()
                        .filter(|s| !s.is_empty())
                    {
                        let _ = write!(detail, " ({why})");
                    }
                    Check::fail("permission", detail, fix_for(permission, username))
                }
            }
            Some(Err(error)) => Check::fail(
                "permission",
                format!(
                    "{}: the access review failed: {error}",
                    permission.describe()
                ),
                "every authenticated user may create SelfSubjectAccessReviews (ClusterRole system:basic-user); check the API server and that role",
            ),
            None => Check::fail(
                "permission",
                format!(
                    "{}: the access review did not answer within {:?} (--api-timeout)",
                    permission.describe(),
                    args.client.api_timeout
                ),
                KUBE_FIX,
            ),
        };
        report.checks.push(check);
    }
    if args.selection.service_accounts.is_none() {
        report.checks.push(Check::skip(
            "permission",
            "get, list, watch, patch serviceaccounts: not needed without --service-accounts",
        ));
    }
}

/// The credentials Secret exists and holds keys. `Ok(None)`: the default chain is used;
/// `Err`: AWS cannot be checked.
async fn credentials_secret(
    args: &RunArgs,
    client: Option<&Client>,
    report: &mut Report,
) -> Result<Option<SecretCredentials>, ()> {
    let Some(name) = &args.credentials_secret else {
        report.checks.push(Check::skip(
            "credentials",
            "no --credentials-secret: the default AWS chain is used (environment, profile, web identity)",
        ));
        return Ok(None);
    };
    let Some(client) = client else {
        report.checks.push(Check::skip(
            "credentials",
            format!("Secret {name} needs the Kubernetes API server (see above)"),
        ));
        return Err(());
    };
    let namespace = run::own_namespace(client, args);
    let loaded = bounded(
        args,
        credentials::load_from_secret(client.clone(), &namespace, name),
    )
    .await;
    let error = match loaded {
        Some(Ok(keys)) => {
            let session = if keys.session_token().is_some() {
                ", aws_session_token"
            } else {
                ""
            };
            report.checks.push(Check::pass(
                "credentials",
                format!(
                    "Secret {namespace}/{name} has aws_access_key_id, aws_secret_access_key{session}"
                ),
            ));
            return Ok(Some(SecretCredentials::new(keys)));
        }
        Some(Err(error)) => error,
        None => {
            report.checks.push(Check::fail(
                "credentials",
                format!(
                    "reading Secret {namespace}/{name} did not finish within {:?} (--api-timeout)",
                    args.client.api_timeout
                ),
                KUBE_FIX,
            ));
            return Err(());
        }
    };
    let fix = match &error {
        CredentialsError::NotFound { .. } => format!(
            "kubectl -n {namespace} create secret generic {name} --from-literal=aws_access_key_id=... --from-literal=aws_secret_access_key=..."
        ),
        CredentialsError::Forbidden { .. } => format!(
            "grant get, list, watch on secrets with resourceNames [\"{name}\"] in namespace {namespace} (the Role in deploy/common.yaml)"
        ),
        CredentialsError::MissingKey { .. } | CredentialsError::NotText { .. } => format!(
            "put text values under aws_access_key_id and aws_secret_access_key (optionally aws_session_token) in Secret {namespace}/{name}"
        ),
        CredentialsError::Invalid { .. } => format!(
            "put the keys exactly as AWS issued them in Secret {namespace}/{name} (the rules are in docs/configuration.md#credentials)"
        ),
        CredentialsError::Api { .. } => KUBE_FIX.to_string(),
        // Only the watch reports this; `check` reads with get.
        CredentialsError::WatchForbidden { .. } => format!(
            "grant get, list, watch on secrets with resourceNames [\"{name}\"] in namespace {namespace} (the Role in deploy/common.yaml)"
        ),
    };
    report
        .checks
        .push(Check::fail("credentials", error.to_string(), fix));
    Err(())
}

/// One token per identity, as `run` would fetch it.
async fn aws(
    args: &RunArgs,
    config: &PipelineConfig,
    base: Option<SecretCredentials>,
    report: &mut Report,
) {
    let sdk_config = match crate::aws::sdk::sdk_config(config, base).await {
        Ok(config) => config,
        Err(error) => {
            report.checks.push(Check::fail(
                "aws",
                error.to_string(),
                "provide AWS credentials: --credentials-secret, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or another source of the default chain",
            ));
            return;
        }
    };
    let regions = config.regions();
    let private = join_all(regions.iter().map(|region| {
        let source = EcrTokenSource::new(&sdk_config, region);
        async move { fetch(args, &source).await }
    }));
    let public = async {
        if config.ecr_public {
            Some(fetch(args, &EcrPublicTokenSource::new(&sdk_config)).await)
        } else {
            None
        }
    };
    let (private, public) = futures::join!(private, public);
    let now = SystemTime::now();
    let answers = regions
        .iter()
        .map(String::as_str)
        .zip(private)
        .chain(public.map(|answer| (ECR_PUBLIC, answer)));
    for (identity, answer) in answers {
        let name = format!("aws {identity}");
        report.checks.push(match answer {
            Ok(token) => Check::pass(
                name,
                describe_token(
                    &token_hosts(&token, &config.registries),
                    token.expires_at,
                    now,
                ),
            ),
            Err(error) => {
                let fix = error.advice.map(str::to_string).unwrap_or_else(|| match error.class {
                    ErrorClass::Configuration => "check the credentials, --region and --registry".to_string(),
                    ErrorClass::Transient => "AWS or the network failed for now; run the check again, and check network access to the ECR endpoint".to_string(),
                });
                Check::fail(
                    name,
                    format!(
                        "GetAuthorizationToken failed ({}): {}",
                        error.class.as_str(),
                        error.message
                    ),
                    fix,
                )
            }
        });
    }
    if !config.ecr_public {
        report.checks.push(Check::skip(
            "aws ecr-public",
            "not configured (--ecr-public)",
        ));
    }
}

/// One fetch, bounded by --api-timeout.
async fn fetch(args: &RunArgs, source: &impl TokenSource) -> Result<Token, FetchError> {
    bounded(args, source.fetch())
        .await
        .unwrap_or_else(|| {
            Err(FetchError {
                region: source.identity().to_string(),
                class: ErrorClass::Transient,
                message: format!(
                    "no answer within {:?} (--api-timeout)",
                    args.client.api_timeout
                ),
                advice: Some(
                    "check network access to the ECR endpoint of this region (and to STS with --role-arn)",
                ),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command};
    use crate::core::token::tests::token_at;
    use clap::Parser;
    use std::time::Duration;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["ecr-pull-secrets", "check", "--region", "eu-west-1"];
        argv.extend_from_slice(extra);
        let Command::Check(check) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not check")
        };
        check.run
    }

    fn described(needed: &[Permission]) -> Vec<String> {
        needed.iter().map(Permission::describe).collect()
    }

    #[test]
    fn default_permissions_mirror_the_shipped_roles() {
        let needed = required_permissions(&args(&[]), "ecr-pull-secrets");
        assert_eq!(
            described(&needed),
            [
                "get namespaces",
                "list namespaces",
                "watch namespaces",
                "create secrets in every namespace",
                "get secrets/ecr-pull-secret in every namespace",
                "list secrets/ecr-pull-secret in every namespace",
                "watch secrets/ecr-pull-secret in every namespace",
                "patch secrets/ecr-pull-secret in every namespace",
                "delete secrets/ecr-pull-secret in every namespace",
                "create events.events.k8s.io in every namespace",
                "patch events.events.k8s.io in every namespace",
                "create leases.coordination.k8s.io in namespace ecr-pull-secrets",
                "get leases.coordination.k8s.io/ecr-pull-secrets in namespace ecr-pull-secrets",
                "list leases.coordination.k8s.io/ecr-pull-secrets in namespace ecr-pull-secrets",
                "watch leases.coordination.k8s.io/ecr-pull-secrets in namespace ecr-pull-secrets",
                "update leases.coordination.k8s.io/ecr-pull-secrets in namespace ecr-pull-secrets",
            ]
        );
        // The shipped manifests name what the defaults need.
        let shipped = include_str!("../../deploy/common.yaml");
        for name in [
            SHIPPED_SECRET_NAME,
            SHIPPED_LEASE_NAME,
            SHIPPED_CREDENTIALS_SECRET,
        ] {
            assert!(
                shipped.contains(&format!("resourceNames: [\"{name}\"]")),
                "{name}"
            );
        }
        assert!(shipped.contains(&format!("namespace: {SHIPPED_NAMESPACE}")));
    }

    #[test]
    fn flags_add_and_move_permissions() {
        let needed = required_permissions(
            &args(&[
                "--service-accounts",
                "default",
                "--credentials-secret",
                "aws",
                "--secret-name",
                "pull",
                "--lease-name",
                "elect",
                "--lease-namespace",
                "leases",
            ]),
            "system",
        );
        let shown = described(&needed);
        for expected in [
            "patch secrets/pull in every namespace",
            "patch serviceaccounts in every namespace",
            "list serviceaccounts in every namespace",
            "create leases.coordination.k8s.io in namespace leases",
            "update leases.coordination.k8s.io/elect in namespace leases",
            "get secrets/aws in namespace system",
            "list secrets/aws in namespace system",
            "watch secrets/aws in namespace system",
        ] {
            assert!(
                shown.iter().any(|s| s == expected),
                "{expected}: {shown:#?}"
            );
        }
        assert!(!shown.iter().any(|s| s.contains("ecr-pull-secret")));
        // Namespaces are cluster-scoped: never asked in a namespace.
        assert!(
            needed
                .iter()
                .filter(|p| p.resource == "namespaces")
                .all(|p| p.namespace.is_none() && p.name.is_none())
        );
    }

    #[test]
    fn reviews_ask_exactly_the_permission() {
        let needed = required_permissions(&args(&["--credentials-secret", "aws"]), "system");
        let lease = needed
            .iter()
            .find(|p| p.resource == "leases" && p.verb == "update")
            .unwrap();
        let attributes = lease.review().spec.resource_attributes.unwrap();
        assert_eq!(attributes.group.as_deref(), Some("coordination.k8s.io"));
        assert_eq!(attributes.resource.as_deref(), Some("leases"));
        assert_eq!(attributes.verb.as_deref(), Some("update"));
        assert_eq!(attributes.namespace.as_deref(), Some("system"));
        assert_eq!(attributes.name.as_deref(), Some("ecr-pull-secrets"));
        let create = needed
            .iter()
            .find(|p| p.resource == "secrets" && p.verb == "create")
            .unwrap()
            .review()
            .spec
            .resource_attributes
            .unwrap();
        assert_eq!(create.group.as_deref(), Some(""));
        assert_eq!(create.namespace, None);
        assert_eq!(create.name, None);
    }

    #[test]
    fn fixes_name_the_role_the_subject_and_renamed_resource_names() {
        let run = args(&[
            "--secret-name",
            "pull",
            "--credentials-secret",
            "keys",
            "--lease-name",
            "elect",
        ]);
        let needed = required_permissions(&run, "system");
        let user = Some("system:serviceaccount:system:puller");
        let find = |resource: &str, verb: &str, named: bool| {
            needed
                .iter()
                .find(|p| p.resource == resource && p.verb == verb && p.name.is_some() == named)
                .unwrap()
        };
        let fix = fix_for(find("namespaces", "list", false), user);
        assert!(fix.contains("ClusterRole ecr-pull-secrets"), "{fix}");
        assert!(fix.contains("ServiceAccount system/puller"), "{fix}");
        assert!(!fix.contains("resourceNames"), "{fix}");
        let fix = fix_for(find("secrets", "patch", true), user);
        assert!(
            fix.contains("--secret-name is pull, so change resourceNames [\"ecr-pull-secret\"] to [\"pull\"] in the ClusterRole's secrets rule"),
            "{fix}"
        );
        let credentials = needed
            .iter()
            .find(|p| p.grant == Grant::Role && p.resource == "secrets")
            .unwrap();
        let fix = fix_for(credentials, user);
        assert!(fix.contains("Role and RoleBinding"), "{fix}");
        assert!(fix.contains("namespace system"), "{fix}");
        assert!(
            fix.contains("(the shipped ones are in ecr-pull-secrets)"),
            "{fix}"
        );
        assert!(fix.contains("[\"aws-credentials\"] to [\"keys\"]"), "{fix}");
        let fix = fix_for(find("leases", "get", true), None);
        assert!(
            fix.contains("[\"ecr-pull-secrets\"] to [\"elect\"]"),
            "{fix}"
        );
        assert!(fix.contains("the controller's ServiceAccount"), "{fix}");

        // Shipped names: nothing to rename.
        let shipped = args(&["--credentials-secret", "aws-credentials"]);
        for permission in required_permissions(&shipped, SHIPPED_NAMESPACE) {
            let fix = fix_for(&permission, Some("admin"));
            assert!(!fix.contains("resourceNames"), "{fix}");
            assert!(!fix.contains("shipped ones"), "{fix}");
            assert!(fix.contains("user admin"), "{fix}");
        }
    }

    #[test]
    fn resources_need_the_crd_and_their_own_secret_names() {
        let base = args(&["--resources", "--credentials-secret", "aws-credentials"]);
        let needed = required_permissions(&base, SHIPPED_NAMESPACE);
        let status = needed
            .iter()
            .find(|p| p.subresource == Some("status"))
            .expect("status patch");
        assert_eq!(
            status.describe(),
            "patch ecrpullsecrets.ecr-pull-secrets.io (subresource status) in every namespace"
        );
        let spec: crate::core::crd::EcrPullSecretSpec = serde_yaml_ng::from_str(
            "secretName: team-pull\necrPublic: true\nserviceAccounts: [default]\ncredentials: {secretRef: {name: team-keys}}\n",
        )
        .unwrap();
        let resource = spec.pipeline("team", &base.inherited()).unwrap();
        let extra = resource_permissions("team", &resource, &base, SHIPPED_NAMESPACE);
        let described: Vec<String> = extra.iter().map(Permission::describe).collect();
        for expected in [
            "patch secrets/team-pull in every namespace",
            "get secrets/team-keys in namespace ecr-pull-secrets",
            "patch serviceaccounts in every namespace",
        ] {
            assert!(described.contains(&expected.to_string()), "{described:?}");
        }
        // The controller's own Secret names are not asked again.
        assert!(!described.iter().any(|d| d.contains("aws-credentials")));
        let fix = fix_for(
            extra
                .iter()
                .find(|p| p.name.as_deref() == Some("team-pull"))
                .unwrap(),
            None,
        );
        assert!(
            fix.contains("EcrPullSecret team needs Secret team-pull: add \"team-pull\" to resourceNames in the ClusterRole's secrets rule"),
            "{fix}"
        );
    }

    #[test]
    fn subjects() {
        assert_eq!(
            subject(Some(
                "system:serviceaccount:ecr-pull-secrets:ecr-pull-secrets"
            )),
            "ServiceAccount ecr-pull-secrets/ecr-pull-secrets"
        );
        assert_eq!(subject(Some("admin")), "user admin");
        assert_eq!(subject(None), "the controller's ServiceAccount");
    }

    #[test]
    fn token_lines_show_hosts_and_expiry_never_the_token() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = token_at("eu-west-1", "hunter2", t0, Duration::from_secs(12 * 3600));
        let line = describe_token(
            &token_hosts(&token, &[]),
            token.expires_at,
            t0 + Duration::from_secs(30),
        );
        assert_eq!(
            line,
            "token for 123456789012.dkr.ecr.eu-west-1.amazonaws.com; expires 2027-01-15T20:00:00Z (in 11h59m)"
        );
        assert!(!line.contains("hunter2") && !line.contains(token.auth()));
        assert!(
            describe_token(&["h".into()], t0, t0 - Duration::from_secs(42)).ends_with("(in 42s)")
        );
        assert!(
            describe_token(&["h".into()], t0, t0 + Duration::from_secs(7200))
                .ends_with("(expired 2h ago)")
        );
    }

    #[test]
    fn token_hosts_follow_the_configured_registries() {
        let t0 = SystemTime::now();
        let token = token_at("us-east-1", "p", t0, Duration::from_secs(60));
        let configured: Vec<RegistryHost> = [
            "111111111111.dkr.ecr.us-east-1.amazonaws.com",
            "222222222222.dkr.ecr.eu-west-1.amazonaws.com",
            "333333333333.dkr.ecr-fips.us-east-1.amazonaws.com",
        ]
        .iter()
        .map(|h| h.parse().unwrap())
        .collect();
        assert_eq!(
            token_hosts(&token, &configured),
            [
                "111111111111.dkr.ecr.us-east-1.amazonaws.com",
                "333333333333.dkr.ecr-fips.us-east-1.amazonaws.com"
            ]
        );
        assert_eq!(
            token_hosts(&token, &[]),
            ["123456789012.dkr.ecr.us-east-1.amazonaws.com"]
        );
        let public = Token::public(token.auth(), t0, t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(token_hosts(&public, &configured), ["public.ecr.aws"]);
    }

    fn sample() -> Report {
        Report {
            checks: vec![
                Check::pass("configuration", "secret ecr-pull-secret"),
                Check::fail(
                    "permission",
                    "list namespaces: denied",
                    "apply deploy/common.yaml",
                ),
                Check::skip("aws ecr-public", "not configured (--ecr-public)"),
            ],
        }
    }

    #[test]
    fn text_report_aligns_names_and_puts_a_fix_under_each_failure() {
        assert_eq!(
            sample().text(),
            "PASS  configuration   secret ecr-pull-secret\n\
             FAIL  permission      list namespaces: denied\n      \
             fix: apply deploy/common.yaml\n\
             SKIP  aws ecr-public  not configured (--ecr-public)\n\
             \n\
             1 passed, 1 failed, 1 skipped\n"
        );
        assert!(!sample().ok());
        let repeated = Report {
            checks: vec![
                Check::fail("permission", "get namespaces: denied", "bind the role"),
                Check::fail("permission", "list namespaces: denied", "bind the role"),
                Check::pass("kubernetes", "ok"),
                Check::fail("permission", "watch namespaces: denied", "bind the role"),
            ],
        };
        let text = repeated.text();
        let fixes: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("fix: "))
            .collect();
        assert_eq!(fixes, ["bind the role", "as above", "bind the role"]);
        let multi = Report {
            checks: vec![Check::fail(
                "aws",
                "no credentials:\n  Environment: unset\n  Profile: unset",
                "set keys",
            )],
        };
        assert!(
            multi.text().starts_with("FAIL  aws  no credentials: Environment: unset; Profile: unset\n      fix: set keys\n"),
            "{}",
            multi.text()
        );
        let mut passing = sample();
        passing.checks.remove(1);
        assert!(passing.ok(), "skips are fine");
        assert!(Report::default().ok());
    }

    #[test]
    fn json_report_has_counts_and_every_check() {
        let value: serde_json::Value = serde_json::from_str(&sample().json()).unwrap();
        assert_eq!(value["ok"], false);
        assert_eq!(value["passed"], 1);
        assert_eq!(value["failed"], 1);
        assert_eq!(value["skipped"], 1);
        assert_eq!(value["checks"][1]["status"], "fail");
        assert_eq!(value["checks"][1]["fix"], "apply deploy/common.yaml");
        assert!(value["checks"][0].get("fix").is_none());
    }

    #[test]
    fn config_line_names_identities_and_credentials_never_the_external_id() {
        let line = describe_config(
            &args(&[
                "--ecr-public",
                "--credentials-secret",
                "aws",
                "--role-arn",
                "arn:aws:iam::123456789012:role/puller",
                "--role-external-id",
                "sesame",
            ])
            .as_pipeline()
            .unwrap(),
        );
        assert_eq!(
            line,
            "secret ecr-pull-secret; identities eu-west-1, ecr-public; credentials Secret aws; role arn:aws:iam::123456789012:role/puller"
        );
    }

    #[test]
    fn check_takes_runs_flags_and_an_output_format() {
        let cli = Cli::try_parse_from([
            "ecr-pull-secrets",
            "check",
            "--region",
            "eu-west-1",
            "--output",
            "json",
            "--credentials-secret",
            "aws",
        ])
        .unwrap();
        let Command::Check(check) = cli.command else {
            panic!("not check")
        };
        assert_eq!(check.output, CheckOutput::Json);
        assert_eq!(check.run.credentials_secret.as_deref(), Some("aws"));
        assert!(
            Cli::try_parse_from(["ecr-pull-secrets", "run", "--output", "json"]).is_err(),
            "--output is check's own"
        );
    }
}
