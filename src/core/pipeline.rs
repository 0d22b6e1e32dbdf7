//! One pipeline's configuration: what to fetch, where to write it and how fast. The same type
//! whether it comes from the flags (`cli::args`) or from an EcrPullSecret's spec (`core::crd`);
//! each source validates its own input and names its own flags or fields in errors.

use std::time::Duration;

use crate::core::registry::RegistryHost;
use crate::core::selection::Selection;
use crate::core::service_accounts::Targets;
use crate::core::time::format_duration;
use crate::core::token::RefreshPolicy;

/// Inclusive bounds of a duration setting. Every one has both: zero spins a loop or reads as
/// "no time at all", and a huge value overflows clock arithmetic (a panic, or a task that dies
/// while the process still looks ready).
pub(crate) type Bounds = (Duration, Duration);

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The longest refresh interval bound: the CRD's `frequency` has the same floor (one call a
/// minute per identity is far below ECR's 20/s); tokens last 12 h, so a longer bound never
/// applies.
pub(crate) const MAX_REFRESH_INTERVAL: Bounds = (secs(60), secs(24 * 3600));
/// The refresh margin: beyond a token's 12 h lifetime it is ignored anyway.
pub(crate) const REFRESH_MARGIN: Bounds = (secs(0), secs(12 * 3600));
/// Writes per second and burst, flags and `spec.writes` alike.
pub(crate) const MAX_WRITES_PER_SECOND: u32 = 10_000;

/// `value` when within `bounds`, else an error naming `name` (a flag or a spec field) and the
/// range.
pub(crate) fn within(name: &str, value: Duration, (min, max): Bounds) -> Result<Duration, String> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{name} {} is out of range; use {} to {}",
            format_duration(value),
            format_duration(min),
            format_duration(max)
        ))
    }
}

/// A writes-per-second setting within 1 to [`MAX_WRITES_PER_SECOND`].
pub(crate) fn writes_within(name: &str, value: i64) -> Result<u32, String> {
    u32::try_from(value)
        .ok()
        .filter(|v| (1..=MAX_WRITES_PER_SECOND).contains(v))
        .ok_or_else(|| format!("{name} {value} is out of range; use 1 to {MAX_WRITES_PER_SECOND}"))
}

/// A refresh fraction strictly between 0 and 1.
pub(crate) fn fraction_within(name: &str, value: f64) -> Result<f64, String> {
    if value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(format!(
            "{name} {value} must be between 0 and 1 (exclusive), e.g. 0.5"
        ))
    }
}

/// A role to assume on top of the base credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AssumeRole {
    pub(crate) role_arn: String,
    pub(crate) external_id: Option<String>,
    pub(crate) session_name: String,
}

/// The IAM partitions a role ARN may name: those whose ECR endpoints the registry parser
/// knows (`core::registry::dns_suffix`). The CRD's CEL rule is built from the same list.
pub(crate) const ROLE_ARN_PARTITIONS: [&str; 3] = ["aws", "aws-cn", "aws-us-gov"];

/// Checks the shape of a role ARN: `arn:<partition>:iam::<12-digit account>:role/<name>`.
/// `name` is the flag or field the error names.
pub(crate) fn validate_role_arn(name: &str, arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && ROLE_ARN_PARTITIONS.contains(&parts[1])
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|n| !n.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name} {arn:?} is not an IAM role ARN; expected arn:aws:iam::<12-digit account>:role/<name> \
             (partition one of {})",
            ROLE_ARN_PARTITIONS.join(", ")
        ))
    }
}

/// How a pipeline gets its AWS credentials.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct AwsIdentity {
    /// A Secret in the controller's namespace with the keys; None: the default chain.
    pub(crate) credentials_secret: Option<String>,
    /// A role assumed on top of the base credentials.
    pub(crate) role: Option<AssumeRole>,
}

/// What a resource inherits from the controller's flags when its spec leaves it out.
#[derive(Debug, Clone)]
pub struct Inherited {
    pub(crate) identity: AwsIdentity,
    pub(crate) refresh: RefreshPolicy,
    pub(crate) write_qps: u32,
    pub(crate) write_burst: u32,
}

/// Everything one pipeline does: the flag-configured secret and every EcrPullSecret are one of
/// these, run by the same code.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The Secret written into each namespace.
    pub(crate) secret_name: String,
    /// The EcrPullSecret served; None for the flag-configured secret.
    pub(crate) owner: Option<String>,
    pub(crate) registries: Vec<RegistryHost>,
    /// The region when no registry is named (`--region`).
    pub(crate) region: Option<String>,
    pub(crate) ecr_public: bool,
    pub(crate) selection: Selection,
    pub(crate) service_accounts: Option<Targets>,
    pub(crate) adopt_existing: bool,
    pub(crate) identity: AwsIdentity,
    pub(crate) refresh: RefreshPolicy,
    pub(crate) write_qps: u32,
    pub(crate) write_burst: u32,
}

impl PipelineConfig {
    /// Regions to fetch a token for: those of the configured registries, else the region.
    pub(crate) fn regions(&self) -> Vec<String> {
        let mut regions: Vec<String> = if self.registries.is_empty() {
            self.region
                .iter()
                .filter(|r| !r.is_empty())
                .cloned()
                .collect()
        } else {
            self.registries
                .iter()
                .map(|r| r.region().to_string())
                .collect()
        };
        regions.sort();
        regions.dedup();
        regions
    }

    /// Every identity with a token of its own: the regions, and ECR Public when enabled.
    pub(crate) fn identities(&self) -> Vec<String> {
        let mut identities = self.regions();
        if self.ecr_public {
            identities.push(crate::core::token::ECR_PUBLIC.to_string());
        }
        identities
    }

    /// The region of STS (assume role): the region, else the first registry's, else us-east-1
    /// (ECR Public only). Each ECR client sets its own region.
    pub(crate) fn sts_region(&self) -> String {
        self.region
            .clone()
            .filter(|r| !r.is_empty())
            .or_else(|| self.regions().into_iter().next())
            .unwrap_or_else(|| "us-east-1".to_string())
    }

    /// The registry hosts, comma-separated, for logs.
    pub(crate) fn hosts(&self) -> String {
        self.registries
            .iter()
            .map(|r| r.host())
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_setting() {
        let err = within("spec.refresh.margin", secs(13 * 3600), REFRESH_MARGIN).unwrap_err();
        assert_eq!(
            err,
            "spec.refresh.margin 13h is out of range; use 0s to 12h"
        );
        assert_eq!(writes_within("--write-qps", 10_000), Ok(10_000));
        assert!(
            writes_within("spec.writes.qps", 0)
                .unwrap_err()
                .contains("spec.writes.qps 0")
        );
        assert!(writes_within("spec.writes.qps", i64::MAX).is_err());
        assert!(fraction_within("spec.refresh.fraction", 1.0).is_err());
        assert!(fraction_within("x", f64::NAN).is_err());
        assert_eq!(fraction_within("x", 0.5), Ok(0.5));
    }

    #[test]
    fn role_arns() {
        for ok in [
            "arn:aws:iam::123456789012:role/puller",
            "arn:aws-cn:iam::123456789012:role/a/b",
            "arn:aws-us-gov:iam::123456789012:role/x",
        ] {
            assert!(validate_role_arn("--role-arn", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "arn:aws:iam::12345678901:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws-iso:iam::123456789012:role/x",
            "arn:aws:sts::123456789012:role/x",
        ] {
            let err = validate_role_arn("spec.credentials.roleArn", bad).unwrap_err();
            assert!(err.starts_with("spec.credentials.roleArn"), "{err}");
        }
    }
}
