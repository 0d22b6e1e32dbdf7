//! Taking over the tokens a previous leader wrote. Every pull secret we write carries its
//! tokens (the docker config), when each was fetched and expires (`ecr-pull-secrets.io/issued`)
//! and a one-way tag of the credentials and role that fetched them
//! (`ecr-pull-secrets.io/credentials`). A new leader reads a page of its own Secrets, adopts the
//! tokens of the version most of them hold, and fetches only the identities it could not adopt
//! (or whose refresh time has come): a takeover while the tokens are valid costs no AWS call
//! and, since the same tokens render the same config, no write. No I/O here.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use sha2::{Digest, Sha256};

use crate::core::meta::{
    CREDENTIALS_ANNOTATION, DOCKER_CONFIG_KEY, EXPIRES_ANNOTATION, FINGERPRINT_ANNOTATION,
    ISSUED_ANNOTATION, edited_by_someone_else, ours,
};
use crate::core::pipeline::AwsIdentity;
use crate::core::registry::RegistryHost;
use crate::core::render::{auths, fingerprint};
use crate::core::token::{ECR_PUBLIC, ECR_PUBLIC_HOST, Token};

/// Secrets read at takeover: enough for a majority that one foreign Secret cannot sway, one
/// small request whatever the cluster's size.
pub(crate) const SAMPLE: u32 = 50;

/// ECR tokens last 12 h; a longer claimed lifetime is not one we wrote.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Clock skew between replicas tolerated in a claimed fetch time.
const MAX_SKEW: Duration = Duration::from_secs(300);

/// Why nothing (or not everything) was adopted; logged, then the tokens are fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotAdopted {
    #[error("no pull secret of ours with intact data was found")]
    NoSecret,
    #[error(
        "the pull secrets were written by a version that does not record when tokens were fetched"
    )]
    NotRecorded,
    #[error("the pull secrets were written with other credentials or another role")]
    OtherCredentials,
    #[error("the pull secret's tokens cannot be read back: {0}")]
    Unreadable(String),
}

/// The tag of the credentials source and role a pipeline fetches with. Rotated keys in the
/// same Secret keep the tag (they apply at the next refresh, as on a running leader); another
/// Secret, the default chain instead of a Secret, or another role or external ID change it,
/// so a new leader fetches fresh tokens after such a change.
pub(crate) fn credentials_tag(identity: &AwsIdentity) -> String {
    let mut hasher = Sha256::new();
    let parts = [
        identity
            .credentials_secret
            .as_deref()
            .map_or("chain".to_string(), |s| format!("secret/{s}")),
        identity
            .role
            .as_ref()
            .map_or("none".to_string(), |r| r.role_arn.clone()),
        identity
            .role
            .as_ref()
            .and_then(|r| r.external_id.clone())
            .unwrap_or_default(),
    ];
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tokens, per identity of `identities`, in the version of our Secret that most of
/// `secrets` (one page of the Secrets with our name and labels) hold intact. Tokens that
/// expired, identities not configured any more, and entries that do not parse are left out;
/// the caller fetches whatever is missing.
pub(crate) fn adopt(
    secrets: &[Secret],
    owner: Option<&str>,
    credentials: &str,
    identities: &[String],
    now: SystemTime,
) -> Result<BTreeMap<String, Token>, NotAdopted> {
    // Count the intact versions of ours by fingerprint: a Secret someone copied our labels onto
    // (the admission policy stops that where it is installed) is outvoted.
    let mut votes: BTreeMap<&str, (usize, &Secret)> = BTreeMap::new();
    for secret in secrets {
        let meta = &secret.metadata;
        if !ours(meta, owner) || edited_by_someone_else(meta) {
            continue;
        }
        let annotated = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(FINGERPRINT_ANNOTATION));
        let data = secret.data.as_ref().and_then(|d| d.get(DOCKER_CONFIG_KEY));
        if let Some((annotated, data)) = annotated.zip(data)
            && fingerprint(&data.0) == *annotated
        {
            votes.entry(annotated).or_insert((0, secret)).0 += 1;
        }
    }
    let annotation = |s: &Secret, key: &str| -> Option<String> {
        s.metadata.annotations.as_ref()?.get(key).cloned()
    };
    // The most held version; between equals, the one that expires last.
    let (_, chosen) = votes
        .into_values()
        .max_by_key(|(count, s)| (*count, annotation(s, EXPIRES_ANNOTATION)))
        .ok_or(NotAdopted::NoSecret)?;
    let Some(issued) = annotation(chosen, ISSUED_ANNOTATION).filter(|i| !i.is_empty()) else {
        return Err(NotAdopted::NotRecorded);
    };
    if annotation(chosen, CREDENTIALS_ANNOTATION).as_deref() != Some(credentials) {
        return Err(NotAdopted::OtherCredentials);
    }
    let issued = parse_issued(&issued)?;
    let config = chosen
        .data
        .as_ref()
        .and_then(|d| d.get(DOCKER_CONFIG_KEY))
        .expect("counted above only with data");
    let auths = auths(&config.0).map_err(|e| NotAdopted::Unreadable(e.to_string()))?;
    // identity -> (a host it is written under, its auth); one auth per identity.
    let mut by_identity: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (host, auth) in auths {
        let identity = if host == ECR_PUBLIC_HOST {
            ECR_PUBLIC.to_string()
        } else {
            host.parse::<RegistryHost>()
                .map_err(|e| NotAdopted::Unreadable(e.to_string()))?
                .region()
                .to_string()
        };
        match by_identity.get(&identity) {
            Some((_, known)) if *known != auth => {
                return Err(NotAdopted::Unreadable(format!(
                    "two tokens for identity {identity}"
                )));
            }
            Some(_) => {}
            None => {
                by_identity.insert(identity, (host, auth));
            }
        }
    }
    let mut tokens = BTreeMap::new();
    for identity in identities {
        let (Some((registry, auth)), Some(&(fetched_at, expires_at))) =
            (by_identity.get(identity), issued.get(identity))
        else {
            continue;
        };
        let plausible = expires_at > now
            && fetched_at <= now + MAX_SKEW
            && expires_at
                .duration_since(fetched_at)
                .is_ok_and(|l| l <= MAX_LIFETIME);
        if !plausible {
            continue;
        }
        if let Ok(token) = Token::validated(identity, registry, auth, fetched_at, expires_at) {
            tokens.insert(identity.clone(), token);
        }
    }
    Ok(tokens)
}

/// `identity=<fetched>/<expires>,...` as `Rendered::issued` writes it.
fn parse_issued(text: &str) -> Result<BTreeMap<String, (SystemTime, SystemTime)>, NotAdopted> {
    let bad = || NotAdopted::Unreadable(format!("annotation {ISSUED_ANNOTATION} is malformed"));
    let mut issued = BTreeMap::new();
    for entry in text.split(',') {
        let (identity, times) = entry.split_once('=').ok_or_else(bad)?;
        let (fetched, expires) = times.split_once('/').ok_or_else(bad)?;
        let fetched = humantime::parse_rfc3339(fetched).map_err(|_| bad())?;
        let expires = humantime::parse_rfc3339(expires).map_err(|_| bad())?;
        issued.insert(identity.to_string(), (fetched, expires));
    }
    Ok(issued)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::reconcile::desired_secret;
    use crate::core::meta::FIELD_MANAGER;
    use crate::core::pipeline::AssumeRole;
    use crate::core::render::{Rendered, render};
    use crate::core::token::tests::token_at;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn now() -> SystemTime {
        // Whole seconds: the annotation keeps seconds.
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    const TAG: &str = "0123456789abcdef";

    fn tokens(password: &str) -> BTreeMap<String, Token> {
        ["eu-west-1", "us-east-1"]
            .iter()
            .map(|r| {
                let fetched = now() - Duration::from_secs(3600);
                let token = token_at(
                    r,
                    &format!("{password}-{r}"),
                    fetched,
                    Duration::from_secs(43200),
                );
                (r.to_string(), token)
            })
            .collect()
    }

    fn rendered(password: &str) -> Rendered {
        let mut rendered = render(&tokens(password), &[]).unwrap();
        rendered.credentials = TAG.to_string();
        rendered
    }

    /// A Secret as we write it, with our field manager's entry.
    fn written(namespace: &str, rendered: &Rendered) -> Secret {
        let mut secret = desired_secret("ecr-pull-secret", namespace, rendered, None);
        secret.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(FIELD_MANAGER.to_string()),
            fields_v1: Some(FieldsV1(serde_json::json!({
                "f:metadata": {"f:labels": {"f:app.kubernetes.io/managed-by": {}}},
                "f:data": {"f:.dockerconfigjson": {}}
            }))),
            ..ManagedFieldsEntry::default()
        }]);
        secret
    }

    fn identities() -> Vec<String> {
        vec!["eu-west-1".to_string(), "us-east-1".to_string()]
    }

    #[test]
    fn adopts_what_was_written_and_renders_the_same_config() {
        let secrets = vec![
            written("a", &rendered("one")),
            written("b", &rendered("one")),
        ];
        let adopted = adopt(&secrets, None, TAG, &identities(), now()).unwrap();
        assert_eq!(adopted, tokens("one"));
        // The same config, byte for byte: the takeover writes nothing.
        assert_eq!(
            render(&adopted, &[]).unwrap().fingerprint,
            rendered("one").fingerprint
        );
    }

    #[test]
    fn the_majority_version_wins_and_a_copied_label_is_outvoted() {
        let mut forged = written("x", &rendered("forged"));
        forged.metadata.managed_fields = None;
        let secrets = vec![
            written("a", &rendered("old")),
            written("b", &rendered("new")),
            written("c", &rendered("new")),
            forged.clone(),
            forged.clone(),
            forged,
        ];
        let adopted = adopt(&secrets, None, TAG, &identities(), now()).unwrap();
        assert_eq!(adopted, tokens("new"));
    }

    #[test]
    fn edited_data_is_never_adopted() {
        let mut edited = written("a", &rendered("one"));
        edited.data.as_mut().unwrap().insert(
            DOCKER_CONFIG_KEY.to_string(),
            ByteString(rendered("other").config),
        );
        assert_eq!(
            adopt(&[edited], None, TAG, &identities(), now()),
            Err(NotAdopted::NoSecret)
        );
    }

    #[test]
    fn other_credentials_an_old_version_or_another_owner_fetch_instead() {
        let secrets = vec![written("a", &rendered("one"))];
        assert_eq!(
            adopt(&secrets, None, "another", &identities(), now()),
            Err(NotAdopted::OtherCredentials)
        );
        assert_eq!(
            adopt(&secrets, Some("team-a"), TAG, &identities(), now()),
            Err(NotAdopted::NoSecret)
        );
        let mut old = written("a", &rendered("one"));
        let annotations = old.metadata.annotations.as_mut().unwrap();
        annotations.remove(ISSUED_ANNOTATION);
        annotations.remove(CREDENTIALS_ANNOTATION);
        assert_eq!(
            adopt(&[old], None, TAG, &identities(), now()),
            Err(NotAdopted::NotRecorded)
        );
        assert_eq!(
            adopt(&[], None, TAG, &identities(), now()),
            Err(NotAdopted::NoSecret)
        );
    }

    #[test]
    fn expired_unconfigured_and_implausible_tokens_are_left_to_fetch() {
        let secrets = vec![written("a", &rendered("one"))];
        // Past expiry: nothing to adopt.
        let late = now() + Duration::from_secs(43200);
        assert!(
            adopt(&secrets, None, TAG, &identities(), late)
                .unwrap()
                .is_empty()
        );
        // A region added since: adopted for the others, fetched for it.
        let more = vec!["ap-south-1".to_string(), "eu-west-1".to_string()];
        let adopted = adopt(&secrets, None, TAG, &more, now()).unwrap();
        assert_eq!(adopted.keys().collect::<Vec<_>>(), ["eu-west-1"]);
        // A claimed lifetime longer than ECR's: not ours to trust.
        let mut long = rendered("one");
        let fetched = now() - Duration::from_secs(60);
        let forever = token_at(
            "eu-west-1",
            "x",
            fetched,
            Duration::from_secs(30 * 24 * 3600),
        );
        long = {
            let mut r = render(&BTreeMap::from([("eu-west-1".to_string(), forever)]), &[]).unwrap();
            r.credentials = long.credentials;
            r
        };
        assert!(
            adopt(&[written("a", &long)], None, TAG, &identities(), now())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn malformed_issued_annotation_is_unreadable() {
        for bad in [
            "us-east-1",
            "us-east-1=x/y",
            "us-east-1=2026-01-01T00:00:00Z",
        ] {
            let mut secret = written("a", &rendered("one"));
            secret
                .metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(ISSUED_ANNOTATION.to_string(), bad.to_string());
            assert!(
                matches!(
                    adopt(&[secret], None, TAG, &identities(), now()),
                    Err(NotAdopted::Unreadable(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_tag_changes_with_the_source_and_role_only() {
        let chain = AwsIdentity::default();
        let secret = AwsIdentity {
            credentials_secret: Some("aws".to_string()),
            role: None,
        };
        let role = |external_id: Option<&str>| AwsIdentity {
            credentials_secret: Some("aws".to_string()),
            role: Some(AssumeRole {
                role_arn: "arn:aws:iam::123456789012:role/pull".to_string(),
                external_id: external_id.map(str::to_string),
                session_name: "a".to_string(),
            }),
        };
        let tags = [
            credentials_tag(&chain),
            credentials_tag(&secret),
            credentials_tag(&role(None)),
            credentials_tag(&role(Some("x"))),
        ];
        for (i, a) in tags.iter().enumerate() {
            assert_eq!(a.len(), 16);
            for b in &tags[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let mut renamed_session = role(None);
        renamed_session.role.as_mut().unwrap().session_name = "b".to_string();
        assert_eq!(credentials_tag(&renamed_session), tags[2]);
    }
}
