//! ECR registry hosts: parsing and validation of `<account>.dkr.ecr.<region>.<suffix>`.
//!
//! A host names the account and region whose token it needs. Tokens are regional, so the
//! region decides which token a host is written with.

use std::fmt;
use std::str::FromStr;

/// A private ECR registry host, e.g. `123456789012.dkr.ecr.eu-west-1.amazonaws.com`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegistryHost {
    host: String,
    account: String,
    region: String,
}

/// Why a registry host was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid ECR registry host {input:?}: {reason}; expected <12-digit account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn] \
     (for example 123456789012.dkr.ecr.eu-west-1.amazonaws.com)"
)]
pub struct RegistryHostError {
    pub(crate) input: String,
    pub(crate) reason: &'static str,
}

impl RegistryHost {
    /// The registry's host name, without scheme or path: the key under `auths`.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The region whose token authenticates against this registry.
    pub(crate) fn region(&self) -> &str {
        &self.region
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)
    }
}

impl FromStr for RegistryHost {
    type Err = RegistryHostError;

    /// Accepts a bare host or a URL such as ECR's `proxyEndpoint` (`https://<host>`).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| RegistryHostError {
            input: input.to_string(),
            reason,
        };
        let trimmed = input.trim();
        let without_scheme = trimmed
            .strip_prefix("https://")
            .or_else(|| trimmed.strip_prefix("http://"))
            .unwrap_or(trimmed);
        let host = without_scheme.trim_end_matches('/').to_ascii_lowercase();
        if host.is_empty() {
            return Err(err("it is empty"));
        }
        if host.contains('/') || host.contains(':') {
            return Err(err("a registry host has no path or port"));
        }
        let labels: Vec<&str> = host.split('.').collect();
        // account . dkr . ecr[-fips] . region . <suffix labels...>
        if labels.len() < 6 {
            return Err(err("too few DNS labels"));
        }
        let account = labels[0];
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("the first label must be a 12-digit AWS account ID"));
        }
        if labels[1] != "dkr" || !matches!(labels[2], "ecr" | "ecr-fips") {
            return Err(err(
                "the second and third labels must be `dkr.ecr` or `dkr.ecr-fips`",
            ));
        }
        let region = labels[3];
        if !is_region(region) {
            return Err(err(
                "the fourth label must be an AWS region such as us-east-1",
            ));
        }
        let suffix = labels[4..].join(".");
        let expected = dns_suffix(region);
        if suffix != expected {
            return Err(err(
                "the DNS suffix does not match the region's partition (amazonaws.com, or amazonaws.com.cn for cn-* regions)",
            ));
        }
        Ok(RegistryHost {
            account: account.to_string(),
            region: region.to_string(),
            host,
        })
    }
}

/// The DNS suffix of the partition a region belongs to.
pub(crate) fn dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// Loose shape check for a region name (`us-east-1`, `us-gov-west-1`, `cn-north-1`,
/// `eu-central-2`); the authoritative check is AWS answering.
pub(crate) fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_partition_and_form() {
        let cases = [
            ("123456789012.dkr.ecr.us-east-1.amazonaws.com", "us-east-1"),
            ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "eu-west-1"),
            (
                "123456789012.dkr.ecr-fips.us-east-1.amazonaws.com",
                "us-east-1",
            ),
            (
                "123456789012.dkr.ecr.us-gov-west-1.amazonaws.com",
                "us-gov-west-1",
            ),
            (
                "123456789012.dkr.ecr-fips.us-gov-east-1.amazonaws.com",
                "us-gov-east-1",
            ),
            (
                "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn",
                "cn-north-1",
            ),
            (
                "123456789012.dkr.ecr.cn-northwest-1.amazonaws.com.cn",
                "cn-northwest-1",
            ),
            (
                "https://123456789012.dkr.ecr.ap-southeast-2.amazonaws.com",
                "ap-southeast-2",
            ),
            (
                "https://123456789012.dkr.ecr.ap-southeast-2.amazonaws.com/",
                "ap-southeast-2",
            ),
            (
                " 123456789012.DKR.ECR.EU-CENTRAL-1.AMAZONAWS.COM ",
                "eu-central-1",
            ),
        ];
        for (input, region) in cases {
            let host: RegistryHost = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(host.region(), region, "{input}");
            assert!(host.host().starts_with("123456789012."), "{input}");
            assert!(!host.host().contains("://"), "{input}");
            assert_eq!(host.host(), host.host().to_ascii_lowercase());
        }
    }

    #[test]
    fn rejects_malformed_hosts_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("public.ecr.aws", "too few"),
            ("12345.dkr.ecr.us-east-1.amazonaws.com", "12-digit"),
            ("123456789012.dkr.ecs.us-east-1.amazonaws.com", "dkr.ecr"),
            ("123456789012.dkr.ecr.useast1.amazonaws.com", "region"),
            ("123456789012.dkr.ecr.cn-north-1.amazonaws.com", "partition"),
            (
                "123456789012.dkr.ecr.us-east-1.amazonaws.com.cn",
                "partition",
            ),
            ("123456789012.dkr.ecr.us-east-1.amazonaws.com/repo", "path"),
            ("123456789012.dkr.ecr.us-east-1.amazonaws.com:443", "port"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<RegistryHost>().expect_err(input);
            assert!(err.to_string().contains(reason), "{input}: {err}");
            assert!(err.to_string().contains("expected"), "{input}: {err}");
        }
    }

    #[test]
    fn region_shapes() {
        for ok in [
            "us-east-1",
            "us-gov-west-1",
            "cn-north-1",
            "eu-central-2",
            "il-central-1",
        ] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in [
            "",
            "us-east",
            "US-EAST-1",
            "us--1",
            "us-east-1a",
            "1-east-1",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
    }
}
