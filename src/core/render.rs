//! Rendering tokens into the `.dockerconfigjson` that pods pull with, computed once per token
//! set (not per namespace), validated before anything is written.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::core::registry::RegistryHost;
use crate::core::time::rfc3339;
use crate::core::token::{ECR_PUBLIC, Token};

/// The docker config of one Secret, ready to write. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The bytes of `.dockerconfigjson`.
    pub config: Vec<u8>,
    /// sha256 of `config`: lets reconcile skip unchanged writes from metadata alone.
    pub fingerprint: String,
    /// Registry hosts in `config`, sorted.
    pub(crate) hosts: Vec<String>,
    /// The earliest expiry among the tokens used.
    pub(crate) expires_at: SystemTime,
    /// When each token was fetched and expires (`identity=<fetched>/<expires>,...`, RFC 3339):
    /// a new leader adopts the tokens from a Secret that carries this (`core::adopt`).
    pub(crate) issued: String,
    /// Tag of the AWS identity that fetched the tokens (`core::adopt::credentials_tag`); set by
    /// the pipeline, not part of the fingerprint.
    pub(crate) credentials: String,
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("fingerprint", &self.fingerprint)
            .field("hosts", &self.hosts)
            .field("expires_at", &rfc3339(self.expires_at))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("no token yet for region {0}")]
    NoToken(String),
    #[error("no registry host to write")]
    NoHosts,
    #[error("rendered docker config failed validation: {0}")]
    Invalid(&'static str),
}

#[derive(Serialize, Deserialize)]
struct DockerConfig {
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Serialize, Deserialize)]
struct DockerAuth {
    username: String,
    password: String,
    auth: String,
}

/// Renders `hosts` with the token of each host's region. Without configured hosts, each token's
/// own registry (`proxyEndpoint`) is written, as the original tools did.
pub fn render(
    tokens: &BTreeMap<String, Token>,
    hosts: &[RegistryHost],
) -> Result<Rendered, RenderError> {
    let mut auths = BTreeMap::new();
    let mut expires_at: Option<SystemTime> = None;
    let mut add = |host: &str, token: &Token| {
        auths.insert(
            host.to_string(),
            DockerAuth {
                username: "AWS".to_string(),
                password: token.password(),
                auth: token.auth().to_string(),
            },
        );
        expires_at = Some(expires_at.map_or(token.expires_at, |e| e.min(token.expires_at)));
    };
    for token in tokens.values() {
        // ECR Public has one host; private tokens go under their own registry only when no
        // hosts are configured.
        if token.identity == ECR_PUBLIC || hosts.is_empty() {
            add(&token.registry, token);
        }
    }
    for host in hosts {
        let token = tokens
            .get(host.region())
            .ok_or_else(|| RenderError::NoToken(host.region().to_string()))?;
        add(host.host(), token);
    }
    let expires_at = expires_at.ok_or(RenderError::NoHosts)?;
    let hosts = auths.keys().cloned().collect();
    let config = serde_json::to_vec(&DockerConfig { auths }).expect("plain strings serialize");
    validate(&config)?;
    let issued = tokens
        .values()
        .map(|t| {
            format!(
                "{}={}/{}",
                t.identity,
                rfc3339(t.fetched_at),
                rfc3339(t.expires_at)
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    Ok(Rendered {
        fingerprint: fingerprint(&config),
        config,
        hosts,
        expires_at,
        issued,
        credentials: String::new(),
    })
}

/// The `auth` of each registry host in a docker config we wrote, after [`validate`].
pub(crate) fn auths(config: &[u8]) -> Result<BTreeMap<String, String>, RenderError> {
    validate(config)?;
    let parsed: DockerConfig = serde_json::from_slice(config)
        .map_err(|_| RenderError::Invalid("not a docker config JSON object"))?;
    Ok(parsed
        .auths
        .into_iter()
        .map(|(host, entry)| (host, entry.auth))
        .collect())
}

/// Checks what kubelet will read: at least one registry; every entry with user `AWS`, a
/// non-empty password and `auth` = base64(`AWS:<password>`). Nothing else is ever written.
pub(crate) fn validate(config: &[u8]) -> Result<(), RenderError> {
    let parsed: DockerConfig = serde_json::from_slice(config)
        .map_err(|_| RenderError::Invalid("not a docker config JSON object"))?;
    if parsed.auths.is_empty() {
        return Err(RenderError::Invalid("no registries"));
    }
    for (host, entry) in &parsed.auths {
        if host.is_empty() || host.contains("://") {
            return Err(RenderError::Invalid("registry key must be a bare host"));
        }
        if entry.username != "AWS" || entry.password.is_empty() {
            return Err(RenderError::Invalid(
                "username must be AWS and the password non-empty",
            ));
        }
        let decoded = STANDARD
            .decode(&entry.auth)
            .map_err(|_| RenderError::Invalid("auth is not base64"))?;
        if decoded != format!("AWS:{}", entry.password).as_bytes() {
            return Err(RenderError::Invalid(
                "auth does not match username and password",
            ));
        }
    }
    Ok(())
}

/// Hex sha256 of the rendered config. One-way: the annotation reveals nothing usable.
pub(crate) fn fingerprint(config: &[u8]) -> String {
    let digest = Sha256::digest(config);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::token::tests::token_at;
    use std::time::Duration;

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn tokens() -> BTreeMap<String, Token> {
        let mut tokens = BTreeMap::new();
        for (region, pw, ttl) in [
            ("us-east-1", "pw-east", 43200),
            ("eu-west-1", "pw-west", 3600),
        ] {
            tokens.insert(
                region.to_string(),
                token_at(region, pw, t0(), Duration::from_secs(ttl)),
            );
        }
        tokens
    }

    #[test]
    fn golden_default_hosts() {
        let rendered = render(&tokens(), &[]).unwrap();
        let golden = include_str!("../../tests/golden/default-hosts.json").trim_end();
        assert_eq!(String::from_utf8(rendered.config.clone()).unwrap(), golden);
        assert_eq!(rendered.expires_at, t0() + Duration::from_secs(3600));
        assert_eq!(
            rendered.hosts,
            [
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
                "123456789012.dkr.ecr.us-east-1.amazonaws.com"
            ]
        );
    }

    #[test]
    fn golden_configured_hosts_across_accounts() {
        let hosts: Vec<RegistryHost> = [
            "111111111111.dkr.ecr.us-east-1.amazonaws.com",
            "222222222222.dkr.ecr-fips.us-east-1.amazonaws.com",
            "333333333333.dkr.ecr.eu-west-1.amazonaws.com",
        ]
        .iter()
        .map(|h| h.parse().unwrap())
        .collect();
        let rendered = render(&tokens(), &hosts).unwrap();
        let golden = include_str!("../../tests/golden/configured-hosts.json").trim_end();
        assert_eq!(String::from_utf8(rendered.config.clone()).unwrap(), golden);
        assert_eq!(rendered.fingerprint, fingerprint(golden.as_bytes()));
        assert_eq!(rendered.fingerprint.len(), 64);
    }

    #[test]
    fn ecr_public_is_written_under_its_one_host() {
        let mut tokens = tokens();
        let public = Token::public(
            &STANDARD.encode("AWS:pw-public"),
            t0(),
            t0() + Duration::from_secs(600),
        )
        .unwrap();
        tokens.insert(crate::core::token::ECR_PUBLIC.to_string(), public);
        let hosts = vec![
            "111111111111.dkr.ecr.us-east-1.amazonaws.com"
                .parse()
                .unwrap(),
        ];
        let rendered = render(&tokens, &hosts).unwrap();
        assert_eq!(
            rendered.hosts,
            [
                "111111111111.dkr.ecr.us-east-1.amazonaws.com",
                "public.ecr.aws"
            ]
        );
        assert_eq!(rendered.expires_at, t0() + Duration::from_secs(600));
        let config: serde_json::Value = serde_json::from_slice(&rendered.config).unwrap();
        assert_eq!(config["auths"]["public.ecr.aws"]["password"], "pw-public");
    }

    #[test]
    fn missing_region_token_is_an_error() {
        let hosts = vec![
            "111111111111.dkr.ecr.ap-south-1.amazonaws.com"
                .parse()
                .unwrap(),
        ];
        assert_eq!(
            render(&tokens(), &hosts).unwrap_err(),
            RenderError::NoToken("ap-south-1".into())
        );
        assert_eq!(
            render(&BTreeMap::new(), &[]).unwrap_err(),
            RenderError::NoHosts
        );
    }

    #[test]
    fn validation_table() {
        let auth = STANDARD.encode("AWS:pw");
        let bad_auth = STANDARD.encode("AWS:other");
        let cases = [
            (r#"{}"#.to_string(), false),
            (r#"{"auths":{}}"#.to_string(), false),
            ("not json".to_string(), false),
            (
                format!(
                    r#"{{"auths":{{"h":{{"username":"AWS","password":"pw","auth":"{auth}"}}}}}}"#
                ),
                true,
            ),
            (
                format!(
                    r#"{{"auths":{{"https://h":{{"username":"AWS","password":"pw","auth":"{auth}"}}}}}}"#
                ),
                false,
            ),
            (
                format!(
                    r#"{{"auths":{{"h":{{"username":"AWS","password":"","auth":"{auth}"}}}}}}"#
                ),
                false,
            ),
            (
                format!(
                    r#"{{"auths":{{"h":{{"username":"AWS","password":"pw","auth":"{bad_auth}"}}}}}}"#
                ),
                false,
            ),
            (
                r#"{"auths":{"h":{"username":"AWS","password":"pw","auth":"%%%"}}}"#.to_string(),
                false,
            ),
        ];
        for (config, ok) in cases {
            assert_eq!(validate(config.as_bytes()).is_ok(), ok, "{config}");
        }
    }

    #[test]
    fn debug_hides_the_config() {
        let rendered = render(&tokens(), &[]).unwrap();
        let shown = format!("{rendered:?}");
        assert!(!shown.contains("pw-east"));
        assert!(shown.contains(&rendered.fingerprint));
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(t0()), "2027-01-15T08:00:00Z");
    }
}
