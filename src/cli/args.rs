//! Command line and environment configuration. Every flag also reads an environment variable.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::core::names::{is_dns_label, is_dns_subdomain};
use crate::core::pipeline::{
    AssumeRole, AwsIdentity, Bounds, Inherited, MAX_REFRESH_INTERVAL, MAX_WRITES_PER_SECOND,
    PipelineConfig, REFRESH_MARGIN, validate_role_arn, within,
};
use crate::core::registry::{RegistryHost, is_region};
use crate::core::selection::{FLAGS, Selection};
use crate::core::service_accounts::Targets;
use crate::core::time::format_duration;
use crate::core::token::RefreshPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "ecr-pull-secrets",
    version,
    about = "Keeps Amazon ECR image pull secrets valid in every selected namespace"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller: fetch tokens and keep the pull secret in every selected namespace.
    Run(RunArgs),
    /// Remove every managed pull secret and our ServiceAccount entries (for uninstalling).
    /// Stop the controller first, or it recreates them.
    Cleanup(CleanupArgs),
    /// Show, per namespace, the pull secret's state, registries, expiry, last write and
    /// conflicts, and who leads. Read-only; pass the selection flags given to `run`.
    #[command(after_help = STATUS_EXIT_CODES)]
    Status(StatusArgs),
    /// Print the EcrPullSecret CustomResourceDefinition (YAML), for `kubectl apply -f -`.
    Crd,
    /// Check the configuration, the cluster permissions and AWS access without changing
    /// anything: fetches one token per identity and prints its hosts and expiry (never the
    /// token). Takes `run`'s flags; exit code 0 only when every check passes.
    Check(CheckArgs),
}

/// `status --help` and docs/operations.md say the same.
pub(crate) const STATUS_EXIT_CODES: &str = "\
Exit codes:
  0  every selected namespace is synced (and has its ServiceAccount entries)
  1  error: API server unreachable, permission missing (the message names it), bad flags
  2  usage error (unknown flag, bad value)
  3  report complete, but some selected namespace is not synced: missing, outdated, expired,
     edited or conflict, or a target ServiceAccount lacks our entry";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

// ---------------------------------------------------------------------------------------------
// Flag groups: each flag shared by several commands is defined once, in one group, and
// flattened into every command that takes it (same name, environment variable and default).

/// The pull secret's name: `run`, `status` and `cleanup` (and `check`, which takes `run`'s
/// flags).
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// Name of the pull secret in each namespace.
    #[arg(long, env = "ECR_PULL_SECRETS_SECRET_NAME", default_value = "ecr-pull-secret", value_parser = parse_secret_name)]
    pub(crate) secret_name: String,
}

/// What should be where: the namespaces that hold the secret and the ServiceAccounts that carry
/// it. `run` writes it, `status` compares against it.
#[derive(Debug, Clone, Args)]
pub struct SelectionArgs {
    /// Only these namespaces hold the secret: names or globs (team-*), comma-separated.
    /// Default: every namespace.
    #[arg(
        long,
        env = "ECR_PULL_SECRETS_TARGET_NAMESPACES",
        value_delimiter = ','
    )]
    pub(crate) target_namespaces: Vec<String>,

    /// Namespaces that never hold the secret: names or globs, comma-separated; wins over
    /// --target-namespaces.
    #[arg(
        long,
        env = "ECR_PULL_SECRETS_EXCLUDE_NAMESPACES",
        value_delimiter = ','
    )]
    pub(crate) exclude_namespaces: Vec<String>,

    /// Only namespaces whose labels match this selector (kubectl -l syntax), e.g.
    /// 'env=prod,team in (a,b)'. A namespace can also opt out with the annotation
    /// ecr-pull-secrets.io/exclude=true.
    #[arg(long, env = "ECR_PULL_SECRETS_NAMESPACE_SELECTOR")]
    pub(crate) namespace_selector: Option<String>,

    /// ServiceAccounts that carry the pull secret in imagePullSecrets in every selected
    /// namespace (`run` adds it, `status` checks it): names (e.g. default), or * for all.
    /// Default: none.
    #[arg(long, env = "ECR_PULL_SECRETS_SERVICE_ACCOUNTS")]
    pub(crate) service_accounts: Option<Targets>,
}

impl SelectionArgs {
    /// The namespace selection, validated; errors name the flag and the fix.
    pub(crate) fn to_selection(&self) -> Result<Selection, String> {
        Selection::new(
            &FLAGS,
            &self.target_namespaces,
            &self.exclude_namespaces,
            self.namespace_selector.as_deref(),
        )
        .map_err(|e| e.to_string())
    }
}

/// Where the controller runs and the Lease its replicas contend for: `run` takes it, `status`
/// reads the Lease to show the leader.
#[derive(Debug, Clone, Args)]
pub struct LeaseArgs {
    /// The controller's own namespace: its credentials Secret, and its Lease by default.
    /// Default: the pod's namespace (POD_NAMESPACE), else the kubeconfig's namespace.
    #[arg(long, env = "POD_NAMESPACE", value_parser = parse_namespace)]
    pub(crate) namespace: Option<String>,

    /// Name of the Lease the controller's replicas contend for (in --lease-namespace).
    #[arg(long, env = "ECR_PULL_SECRETS_LEASE_NAME", default_value = "ecr-pull-secrets", value_parser = parse_secret_name)]
    pub(crate) lease_name: String,

    /// Namespace of the Lease. Default: --namespace (POD_NAMESPACE), else the kubeconfig's.
    #[arg(long, env = "ECR_PULL_SECRETS_LEASE_NAMESPACE", value_parser = parse_namespace)]
    pub(crate) lease_namespace: Option<String>,
}

/// How the commands talk to the API server.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Timeout of each Kubernetes API call.
    #[arg(long, env = "ECR_PULL_SECRETS_API_TIMEOUT", default_value = "10s", value_parser = parse_api_timeout)]
    pub(crate) api_timeout: Duration,
}

// ---------------------------------------------------------------------------------------------
// Commands

/// The flags of `status`: those of `run` that decide what should be where, and where its Lease is.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub(crate) secret: SecretArgs,

    #[command(flatten)]
    pub(crate) selection: SelectionArgs,

    #[command(flatten)]
    pub(crate) lease: LeaseArgs,

    #[command(flatten)]
    pub(crate) client: ClientArgs,

    /// Output format: a table for people, or JSON for scripts (documented in
    /// docs/operations.md).
    #[arg(
        long,
        short = 'o',
        env = "ECR_PULL_SECRETS_OUTPUT",
        value_enum,
        default_value = "table"
    )]
    pub(crate) output: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,

    /// Report format.
    #[arg(
        long,
        short = 'o',
        env = "ECR_PULL_SECRETS_CHECK_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub(crate) output: CheckOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckOutput {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub(crate) secret: SecretArgs,

    /// Only print what would be removed.
    #[arg(long)]
    pub(crate) dry_run: bool,

    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(
        long,
        env = "ECR_PULL_SECRETS_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `ecr_pull_secrets=debug`).
    /// RUST_LOG, when set, takes precedence.
    #[arg(
        long,
        env = "ECR_PULL_SECRETS_LOG_LEVEL",
        default_value = "info",
        global = true,
        value_parser = parse_log_level
    )]
    pub log_level: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub(crate) secret: SecretArgs,

    /// ECR registry host to write credentials for (repeatable, or comma-separated in the
    /// environment variable), e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com. Default: the
    /// registry of the credentials' own account in --region.
    #[arg(
        long = "registry",
        env = "ECR_PULL_SECRETS_REGISTRIES",
        value_delimiter = ','
    )]
    pub(crate) registries: Vec<RegistryHost>,

    /// AWS region used when no --registry is given.
    #[arg(long, env = "AWS_REGION")]
    pub(crate) region: Option<String>,

    #[command(flatten)]
    pub(crate) selection: SelectionArgs,

    /// Take over a same-named Secret that lacks our managed label (default: leave it alone and
    /// report a conflict).
    #[arg(long, env = "ECR_PULL_SECRETS_ADOPT_EXISTING")]
    pub(crate) adopt_existing: bool,

    /// Sustained Kubernetes writes per second, across all namespaces.
    #[arg(long, env = "ECR_PULL_SECRETS_WRITE_QPS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WRITES_PER_SECOND)))]
    pub(crate) write_qps: u32,

    /// Writes allowed in a burst above --write-qps.
    #[arg(long, env = "ECR_PULL_SECRETS_WRITE_BURST", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WRITES_PER_SECOND)))]
    pub(crate) write_burst: u32,

    /// Secret in the controller's namespace holding aws_access_key_id and aws_secret_access_key
    /// (optionally aws_session_token). Without it the default AWS chain is used (environment,
    /// profile, web identity).
    #[arg(long, env = "ECR_PULL_SECRETS_CREDENTIALS_SECRET", value_parser = parse_secret_name)]
    pub(crate) credentials_secret: Option<String>,

    #[command(flatten)]
    pub(crate) lease: LeaseArgs,

    /// Also write credentials for ECR Public (public.ecr.aws; token from us-east-1). Needs
    /// ecr-public:GetAuthorizationToken and sts:GetServiceBearerToken.
    #[arg(long, env = "ECR_PULL_SECRETS_ECR_PUBLIC")]
    pub(crate) ecr_public: bool,

    /// IAM role to assume (with STS) on top of the base credentials, e.g.
    /// arn:aws:iam::123456789012:role/ecr-puller.
    #[arg(long, env = "ECR_PULL_SECRETS_ROLE_ARN")]
    pub(crate) role_arn: Option<String>,

    /// External ID required by the role's trust policy.
    #[arg(long, env = "ECR_PULL_SECRETS_ROLE_EXTERNAL_ID", requires = "role_arn", value_parser = parse_external_id)]
    pub(crate) role_external_id: Option<String>,

    /// Session name of the assumed role (shows in CloudTrail).
    #[arg(
        long,
        env = "ECR_PULL_SECRETS_ROLE_SESSION_NAME",
        default_value = "ecr-pull-secrets",
        value_parser = parse_session_name
    )]
    pub(crate) role_session_name: String,

    /// Also refresh at most this long after each fetch, whatever the token's lifetime (e.g. 6h;
    /// the edenlab operator's `frequency`). Default: no bound.
    #[arg(long, env = "ECR_PULL_SECRETS_MAX_REFRESH_INTERVAL", value_parser = parse_max_refresh_interval)]
    pub(crate) max_refresh_interval: Option<Duration>,

    /// Also keep the secrets of every EcrPullSecret resource (the CRD, deploy/crd/), each
    /// with its own registries, credentials and namespaces. Without --registry or --region,
    /// only the resources are served.
    #[arg(long, env = "ECR_PULL_SECRETS_RESOURCES")]
    pub(crate) resources: bool,

    /// Refresh at least this long before the token expires (e.g. 1h, 30m).
    #[arg(long, env = "ECR_PULL_SECRETS_REFRESH_MARGIN", default_value = "1h", value_parser = parse_refresh_margin)]
    pub(crate) refresh_margin: Duration,

    /// ... and at least this fraction of the token's lifetime before it expires (0 < f < 1).
    #[arg(long, env = "ECR_PULL_SECRETS_REFRESH_FRACTION", default_value_t = 0.5, value_parser = parse_fraction)]
    pub(crate) refresh_fraction: f64,

    /// Namespaces reconciled in parallel.
    #[arg(long, env = "ECR_PULL_SECRETS_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(crate) concurrency: u16,

    #[command(flatten)]
    pub(crate) client: ClientArgs,

    /// Address of the admin listener (/healthz, /readyz, /metrics). Port 0 picks a free port
    /// (logged at start).
    #[arg(
        long,
        env = "ECR_PULL_SECRETS_ADMIN_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub(crate) admin_address: String,

    /// This replica's identity in the Lease. Default: POD_NAME, else the host name plus a
    /// random suffix.
    #[arg(long, env = "POD_NAME", value_parser = parse_identity)]
    pub(crate) identity: Option<String>,

    /// How long a lease is valid without renewal; another replica takes over after it.
    #[arg(long, env = "ECR_PULL_SECRETS_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    pub(crate) lease_duration: Duration,

    /// The leader stops working if it could not renew for this long (< --lease-duration).
    #[arg(long, env = "ECR_PULL_SECRETS_RENEW_DEADLINE", default_value = "10s", value_parser = parse_lease_timing)]
    pub(crate) renew_deadline: Duration,

    /// After SIGTERM, keep serving (with /readyz failing) this long before exiting, so probes
    /// and scrapers see the replica leave. Leadership is handed over before this wait.
    #[arg(long, env = "ECR_PULL_SECRETS_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_shutdown_delay)]
    pub(crate) shutdown_delay: Duration,

    /// How often the lease is renewed or tried (< --renew-deadline).
    #[arg(long, env = "ECR_PULL_SECRETS_RETRY_PERIOD", default_value = "2s", value_parser = parse_lease_timing)]
    pub(crate) retry_period: Duration,
}

impl RunArgs {
    /// Cross-flag checks clap cannot express. Errors name the flag and the fix.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(arn) = &self.role_arn {
            validate_role_arn("--role-arn", arn)?;
        }
        if self.registries.is_empty()
            && !(self.ecr_public && self.region.as_deref().unwrap_or("").is_empty())
            && !(self.resources && self.region.as_deref().unwrap_or("").is_empty())
        {
            match self.region.as_deref() {
                None | Some("") => {
                    return Err(
                        "no registry and no region: name registries with --registry \
                         (ECR_PULL_SECRETS_REGISTRIES), set --region / AWS_REGION, or serve \
                         EcrPullSecret resources only with --resources"
                            .into(),
                    );
                }
                Some(region) if !is_region(region) => {
                    return Err(format!(
                        "--region / AWS_REGION {region:?} is not an AWS region name such as us-east-1"
                    ));
                }
                Some(_) => {}
            }
        }
        self.selection.to_selection()?;
        if self.renew_deadline >= self.lease_duration || self.retry_period >= self.renew_deadline {
            return Err(format!(
                "lease timings must satisfy --retry-period ({}) < --renew-deadline ({}) < --lease-duration ({}), \
                 so a leader stops before another may take over; e.g. 2s < 10s < 15s",
                format_duration(self.retry_period),
                format_duration(self.renew_deadline),
                format_duration(self.lease_duration)
            ));
        }
        // Re-checked here because an EcrPullSecret's spec sets these without the flag parsers.
        within("--refresh-margin", self.refresh_margin, REFRESH_MARGIN)?;
        if let Some(max) = self.max_refresh_interval {
            within("--max-refresh-interval", max, MAX_REFRESH_INTERVAL)?;
        }
        for (flag, value) in [
            ("--write-qps", self.write_qps),
            ("--write-burst", self.write_burst),
        ] {
            if !(1..=MAX_WRITES_PER_SECOND).contains(&value) {
                return Err(format!(
                    "{flag} {value} is out of range; use 1 to {MAX_WRITES_PER_SECOND}"
                ));
            }
        }
        Ok(())
    }

    /// Whether the flags configure a secret of their own (an implicit resource): a registry,
    /// a region or ECR Public. With --resources alone they do not.
    pub(crate) fn configures_secret(&self) -> bool {
        !self.registries.is_empty()
            || self.region.as_deref().is_some_and(|r| !r.is_empty())
            || self.ecr_public
    }

    pub(crate) fn assume_role(&self) -> Option<AssumeRole> {
        self.role_arn.as_ref().map(|arn| AssumeRole {
            role_arn: arn.clone(),
            external_id: self.role_external_id.clone(),
            session_name: self.role_session_name.clone(),
        })
    }

    /// The flag-configured pipeline, when the flags configure a secret (see
    /// [`RunArgs::configures_secret`]).
    pub(crate) fn pipeline(&self) -> Result<Option<PipelineConfig>, String> {
        let config = self.as_pipeline()?;
        Ok(self.configures_secret().then_some(config))
    }

    /// The flags as one pipeline, validated, whether or not they configure a secret (`check`
    /// describes and tries them either way).
    pub(crate) fn as_pipeline(&self) -> Result<PipelineConfig, String> {
        self.validate()?;
        let inherited = self.inherited();
        Ok(PipelineConfig {
            secret_name: self.secret.secret_name.clone(),
            owner: None,
            registries: self.registries.clone(),
            region: self.region.clone().filter(|r| !r.is_empty()),
            ecr_public: self.ecr_public,
            selection: self.selection.to_selection()?,
            service_accounts: self.selection.service_accounts.clone(),
            adopt_existing: self.adopt_existing,
            identity: inherited.identity,
            refresh: inherited.refresh,
            write_qps: inherited.write_qps,
            write_burst: inherited.write_burst,
        })
    }

    /// What an EcrPullSecret takes from these flags when its spec leaves it out.
    pub fn inherited(&self) -> Inherited {
        Inherited {
            identity: AwsIdentity {
                credentials_secret: self.credentials_secret.clone(),
                role: self.assume_role(),
            },
            refresh: self.refresh_policy(),
            write_qps: self.write_qps,
            write_burst: self.write_burst,
        }
    }

    pub(crate) fn refresh_policy(&self) -> RefreshPolicy {
        RefreshPolicy {
            margin: self.refresh_margin,
            fraction: self.refresh_fraction,
            max_interval: self.max_refresh_interval,
            ..RefreshPolicy::default()
        }
    }
}

/// `90s`, `30m`, `1h 30m`, `500ms`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); use forms such as 30s, 10m, 1h"))
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// --api-timeout: 0 fails every call at once (and looks like a connectivity problem).
pub(crate) const API_TIMEOUT: Bounds = (secs(1), secs(600));
/// --lease-duration: written to the Lease as whole seconds (an i32).
pub(crate) const LEASE_DURATION: Bounds = (secs(1), secs(3600));
/// --renew-deadline and --retry-period: a floor keeps lease writes at no more than two a second.
pub(crate) const LEASE_TIMING: Bounds = (Duration::from_millis(500), secs(3600));
/// --shutdown-delay: longer than any termination grace period worth having.
pub(crate) const SHUTDOWN_DELAY: Bounds = (secs(0), secs(600));

fn bounded(s: &str, bounds: Bounds) -> Result<Duration, String> {
    let value = parse_duration(s)?;
    if (bounds.0..=bounds.1).contains(&value) {
        Ok(value)
    } else {
        // clap names the flag in front of this message.
        Err(format!(
            "{s:?} is out of range; use {} to {}",
            format_duration(bounds.0),
            format_duration(bounds.1)
        ))
    }
}

fn parse_api_timeout(s: &str) -> Result<Duration, String> {
    bounded(s, API_TIMEOUT)
}

fn parse_max_refresh_interval(s: &str) -> Result<Duration, String> {
    bounded(s, MAX_REFRESH_INTERVAL)
}

fn parse_refresh_margin(s: &str) -> Result<Duration, String> {
    bounded(s, REFRESH_MARGIN)
}

fn parse_lease_duration(s: &str) -> Result<Duration, String> {
    bounded(s, LEASE_DURATION)
}

fn parse_lease_timing(s: &str) -> Result<Duration, String> {
    bounded(s, LEASE_TIMING)
}

fn parse_shutdown_delay(s: &str) -> Result<Duration, String> {
    bounded(s, SHUTDOWN_DELAY)
}

/// The Lease holder identity. An empty one reads as "released" to every replica (ours and
/// client-go's), so two replicas with it would both lead; surrounding whitespace is a typo.
fn parse_identity(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err(
            "the identity is empty; leave --identity / POD_NAME unset (a unique default is chosen) \
             or set it to the pod name (fieldRef metadata.name)"
                .into(),
        );
    }
    if s.trim() != s || s.len() > 253 || s.chars().any(char::is_control) {
        return Err(format!(
            "{s:?} is not a usable identity: no surrounding whitespace or control characters, at most 253 \
             bytes; use the pod name (fieldRef metadata.name)"
        ));
    }
    Ok(s.to_string())
}

/// A namespace name (an RFC 1123 label).
fn parse_namespace(s: &str) -> Result<String, String> {
    if is_dns_label(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (lower-case letters, digits and '-', at most 63 characters)"
        ))
    }
}

/// AWS: 2 to 64 characters of `[\w+=,.@-]`.
fn parse_session_name(s: &str) -> Result<String, String> {
    aws_name(s, 64, "=,.@-").map_err(|()| {
        format!(
            "{s:?} is not an STS role session name: 2 to 64 characters of letters, digits and +=,.@_-"
        )
    })
}

/// AWS: 2 to 1224 characters of `[\w+=,.@:/-]`.
fn parse_external_id(s: &str) -> Result<String, String> {
    aws_name(s, 1224, "=,.@:/-").map_err(|()| {
        "the external ID is not valid for STS: 2 to 1224 characters of letters, digits and +=,.@:/_-"
            .to_string()
    })
}

fn aws_name(s: &str, max: usize, punctuation: &str) -> Result<String, ()> {
    let ok = (2..=max).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '+' || punctuation.contains(c));
    if ok { Ok(s.to_string()) } else { Err(()) }
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A log filter: comma-separated `LEVEL` or `TARGET=LEVEL` (tracing's EnvFilter accepts any
/// word as a target, so a typo such as `verbose` would silently log nothing of ours).
pub fn parse_log_level(s: &str) -> Result<String, String> {
    let level = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    let target = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
    };
    let ok = s.len() <= 1024
        && s.split(',').all(|d| match d.trim().split_once('=') {
            Some((t, l)) => target(t.trim()) && level(l.trim()),
            None => level(d.trim()),
        })
        && tracing_subscriber::EnvFilter::try_new(s).is_ok();
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{:?} is not a log filter; use a level ({}) or comma-separated TARGET=LEVEL pairs, e.g. \
             info,ecr_pull_secrets=debug",
            s.chars().take(64).collect::<String>(),
            LEVELS.join(", ")
        ))
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        _ => Err(format!(
            "{s:?} must be a number between 0 and 1 (exclusive), e.g. 0.5"
        )),
    }
}

fn parse_secret_name(s: &str) -> Result<String, String> {
    let valid = is_dns_subdomain(s);
    if valid {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a valid Secret name (lower-case letters, digits, '-' and '.', at most 253 characters)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunArgs, String> {
        let mut argv = vec!["ecr-pull-secrets", "run"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        run.validate()?;
        Ok(run)
    }

    #[test]
    fn defaults_and_lists() {
        // Note: AWS_REGION may be set in the environment of the test run; pass --region explicitly.
        let run = parse(&[
            "--region",
            "eu-west-1",
            "--exclude-namespaces",
            "kube-system,kube-public",
        ])
        .unwrap();
        assert_eq!(run.secret.secret_name, "ecr-pull-secret");
        assert_eq!(
            run.selection.exclude_namespaces,
            ["kube-system", "kube-public"]
        );
        assert_eq!(run.as_pipeline().unwrap().regions(), ["eu-west-1"]);
        assert_eq!(run.refresh_margin, Duration::from_secs(3600));
        assert_eq!(run.refresh_fraction, 0.5);
    }

    #[test]
    fn registries_decide_the_regions() {
        let run = parse(&[
            "--registry",
            "111111111111.dkr.ecr.us-east-1.amazonaws.com",
            "--registry",
            "222222222222.dkr.ecr.eu-west-1.amazonaws.com,333333333333.dkr.ecr.us-east-1.amazonaws.com",
        ])
        .unwrap();
        assert_eq!(run.registries.len(), 3);
        assert_eq!(
            run.as_pipeline().unwrap().regions(),
            ["eu-west-1", "us-east-1"]
        );
    }

    #[test]
    fn bad_input_names_the_problem_and_the_fix() {
        let cases: [(&[&str], &str); 9] = [
            (
                &["--registry", "example.com", "--region", "us-east-1"],
                "expected <12-digit account>",
            ),
            (
                &["--region", "us-east-1", "--secret-name", "Bad_Name"],
                "not a valid Secret name",
            ),
            (
                &["--region", "us-east-1", "--refresh-margin", "soon"],
                "use forms such as 30s",
            ),
            (
                &["--region", "us-east-1", "--refresh-fraction", "1.5"],
                "between 0 and 1",
            ),
            (&["--region", "nowhere"], "not an AWS region"),
            (
                &[
                    "--region",
                    "us-east-1",
                    "--exclude-namespaces",
                    "Kube_System",
                ],
                "invalid namespace pattern",
            ),
            (
                &["--region", "us-east-1", "--role-arn", "puller"],
                "not an IAM role ARN",
            ),
            (
                &["--region", "us-east-1", "--role-external-id", "xy-123"],
                "--role-arn",
            ),
            (
                &["--region", "us-east-1", "--renew-deadline", "20s"],
                "--retry-period (2s) < --renew-deadline (20s) < --lease-duration (15s)",
            ),
        ];
        for (args, expected) in cases {
            let err = parse(args).expect_err(&format!("{args:?}"));
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }

    #[test]
    fn ecr_public_alone_needs_no_region() {
        let run = parse(&["--ecr-public", "--region", ""]).unwrap();
        assert!(run.as_pipeline().unwrap().regions().is_empty());
        let run = parse(&["--ecr-public", "--region", "eu-west-1"]).unwrap();
        assert_eq!(run.as_pipeline().unwrap().regions(), ["eu-west-1"]);
    }

    #[test]
    fn status_parses_the_shared_groups() {
        let cli = Cli::try_parse_from([
            "ecr-pull-secrets",
            "status",
            "--target-namespaces",
            "team-*,shared",
            "--service-accounts",
            "default",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Status(status) = cli.command else {
            panic!("not status")
        };
        assert_eq!(status.selection.target_namespaces, ["team-*", "shared"]);
        assert_eq!(status.output, OutputFormat::Json);
        assert_eq!(status.secret.secret_name, "ecr-pull-secret");
        assert_eq!(status.lease.lease_name, "ecr-pull-secrets");
        assert_eq!(status.client.api_timeout, Duration::from_secs(10));
        assert!(status.selection.to_selection().is_ok());
        let bad = Cli::try_parse_from(["ecr-pull-secrets", "status", "--output", "yaml"]);
        assert!(bad.is_err());
    }

    /// Every flag of every command, with hostile values: no panic, and whatever is accepted
    /// stays inside what the runtime arithmetic can take.
    #[test]
    fn every_flag_survives_hostile_values() {
        use clap::CommandFactory;
        let huge = "9".repeat(64 << 10);
        let hostile: Vec<&str> = vec![
            "",
            " ",
            "\t",
            "0",
            "0s",
            "0ms",
            "-1",
            "-1s",
            "1ns",
            "1",
            "65536",
            "4294967296",
            "18446744073709551615",
            "18446744073709551615s",
            "9223372036854775807s",
            "584942417355y",
            "1e400",
            "NaN",
            "inf",
            "abc",
            "\u{0}",
            "a\nb",
            "🙂",
            "*",
            ",",
            "=",
            "1h 1h 1h 1h",
            "10000000h",
            "Bad_Name",
            "../etc",
            &huge,
        ];
        let cli = Cli::command();
        let mut accepted = 0;
        for sub in ["run", "status", "cleanup", "check"] {
            let command = cli.find_subcommand(sub).expect(sub);
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if !arg.get_action().takes_values() {
                    continue;
                }
                for value in &hostile {
                    let flag = format!("--{long}={value}");
                    let argv = [
                        "ecr-pull-secrets",
                        sub,
                        "--region",
                        "us-east-1",
                        flag.as_str(),
                    ];
                    let parsed = std::panic::catch_unwind(|| {
                        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
                        match cli.command {
                            Command::Run(run) => {
                                run.validate()?;
                                runtime_arithmetic(&run);
                            }
                            Command::Check(check) => {
                                check.run.validate()?;
                                runtime_arithmetic(&check.run);
                            }
                            Command::Status(status) => {
                                status.selection.to_selection()?;
                                assert!(
                                    tokio::time::Instant::now()
                                        .checked_add(status.client.api_timeout)
                                        .is_some()
                                );
                            }
                            Command::Cleanup(cleanup) => assert!(
                                tokio::time::Instant::now()
                                    .checked_add(cleanup.client.api_timeout)
                                    .is_some()
                            ),
                            _ => {}
                        }
                        Ok::<(), String>(())
                    });
                    let shown = &value[..value.len().min(20)];
                    match parsed {
                        Ok(Ok(())) => accepted += 1,
                        // Errors name the problem; clap's name the flag too.
                        Ok(Err(message)) => assert!(
                            !message.trim().is_empty(),
                            "{sub} --{long} {shown:?}: an empty error"
                        ),
                        Err(_) => panic!("{sub} --{long} {shown:?} panicked"),
                    }
                }
            }
        }
        assert!(
            accepted > 0,
            "some hostile-looking values are fine (e.g. --namespace-selector=abc)"
        );
    }

    /// What the controller computes from its flags at run time: none of it may overflow.
    fn runtime_arithmetic(run: &RunArgs) {
        let now = tokio::time::Instant::now();
        let wall = std::time::SystemTime::now();
        for d in [
            run.client.api_timeout + Duration::from_secs(1),
            run.lease_duration,
            run.renew_deadline,
            run.retry_period,
            run.shutdown_delay,
            run.refresh_margin,
            run.max_refresh_interval.unwrap_or_default(),
        ] {
            assert!(now.checked_add(d).is_some() && wall.checked_add(d).is_some());
        }
        let token =
            crate::core::token::tests::token_at("us-east-1", "p", wall, Duration::from_secs(43200));
        let at = run.refresh_policy().refresh_at(&token, 0.99);
        assert!(at <= token.expires_at);
        assert!(run.lease_duration.as_secs() < i32::MAX as u64);
        crate::controller::reconcile::WriteLimiter::new(run.write_qps, run.write_burst);
    }

    #[test]
    fn bounds_and_identities() {
        let cases: [(&[&str], &str); 14] = [
            (&["--api-timeout", "0s"], "use 1s to 10m"),
            (&["--api-timeout", "18446744073709551615s"], "out of range"),
            (&["--max-refresh-interval", "0s"], "use 1m to 1d"),
            (
                &["--max-refresh-interval", "9300000000000000000s"],
                "out of range",
            ),
            (&["--retry-period", "0s"], "use 500ms to 1h"),
            (&["--lease-duration", "2562047788015215h"], "use 1s to 1h"),
            (&["--identity", ""], "the identity is empty"),
            (&["--identity", "   "], "the identity is empty"),
            (&["--identity", " pod-a"], "surrounding whitespace"),
            (&["--lease-namespace", "No Such"], "not a namespace name"),
            (&["--log-level", "loud"], "not a log filter"),
            (
                &[
                    "--role-arn",
                    "arn:aws:iam::123456789012:role/r",
                    "--role-session-name",
                    "a b",
                ],
                "session name",
            ),
            (&["--write-qps", "100000"], "100000"),
            (&["--concurrency", "0"], "0"),
        ];
        for (args, expected) in cases {
            let mut all = vec!["--region", "us-east-1"];
            all.extend_from_slice(args);
            let err = parse(&all).expect_err(&format!("{args:?}"));
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        // Garbage through the environment is refused the same way.
        assert!(parse_log_level("info,ecr_pull_secrets=debug").is_ok());
        assert!(parse_log_level("WARN").is_ok());
        assert!(parse_log_level("kube=what").is_err());
        assert!(parse_log_level("").is_err());
        assert!(parse_identity("ecr-pull-secrets-7d9f-abcde").is_ok());
        // A spec's frequency bypasses the flag parser; validate() bounds it too.
        let mut run = parse(&["--region", "us-east-1"]).unwrap();
        run.max_refresh_interval = Some(Duration::from_secs(1));
        assert!(
            run.validate()
                .unwrap_err()
                .contains("--max-refresh-interval 1s is out of range")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("").is_err());
    }
}
