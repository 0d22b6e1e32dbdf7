//! AWS credentials: from a Kubernetes Secret in the controller's namespace (watched, so rotated
//! keys are used at the next fetch), or the default AWS chain (environment, profile, web
//! identity); optionally a role assumed on top of either.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider, future};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;
use kube::{Api, Client};

/// Accepted spellings of each key, lower case first (the original Go controller's) then the
/// environment-variable form.
const ACCESS_KEY_ID: [&str; 2] = ["aws_access_key_id", "AWS_ACCESS_KEY_ID"];
const SECRET_ACCESS_KEY: [&str; 2] = ["aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"];
const SESSION_TOKEN: [&str; 2] = ["aws_session_token", "AWS_SESSION_TOKEN"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error(
        "credentials Secret {namespace}/{name} not found; create it: kubectl -n {namespace} create secret generic {name} \
         --from-literal=aws_access_key_id=... --from-literal=aws_secret_access_key=..."
    )]
    NotFound { namespace: String, name: String },
    #[error(
        "not allowed to read credentials Secret {namespace}/{name}; grant `get` on secrets with resourceNames [{name}] \
         in namespace {namespace} to the controller's ServiceAccount"
    )]
    Forbidden { namespace: String, name: String },
    #[error(
        "credentials Secret {namespace}/{name} has no {key} (or {alt}); expected keys aws_access_key_id, \
         aws_secret_access_key and optionally aws_session_token"
    )]
    MissingKey {
        namespace: String,
        name: String,
        key: &'static str,
        alt: &'static str,
    },
    #[error("credentials Secret {namespace}/{name}: {key} is not valid UTF-8 text")]
    NotText {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("reading credentials Secret {namespace}/{name} failed: {message}")]
    Api {
        namespace: String,
        name: String,
        message: String,
    },
}

/// Reads static keys from a Secret's data. Values are trimmed: `echo` adds newlines.
pub fn from_secret_data(
    namespace: &str,
    name: &str,
    data: &BTreeMap<String, ByteString>,
) -> Result<Credentials, CredentialsError> {
    let get = |keys: [&'static str; 2]| -> Result<Option<String>, CredentialsError> {
        let Some((key, value)) = keys.iter().find_map(|k| data.get(*k).map(|v| (*k, v))) else {
            return Ok(None);
        };
        let text = std::str::from_utf8(&value.0).map_err(|_| CredentialsError::NotText {
            namespace: namespace.to_string(),
            name: name.to_string(),
            key,
        })?;
        let text = text.trim();
        Ok((!text.is_empty()).then(|| text.to_string()))
    };
    let missing = |keys: [&'static str; 2]| CredentialsError::MissingKey {
        namespace: namespace.to_string(),
        name: name.to_string(),
        key: keys[0],
        alt: keys[1],
    };
    let access_key_id = get(ACCESS_KEY_ID)?.ok_or_else(|| missing(ACCESS_KEY_ID))?;
    let secret_access_key = get(SECRET_ACCESS_KEY)?.ok_or_else(|| missing(SECRET_ACCESS_KEY))?;
    let session_token = get(SESSION_TOKEN)?;
    Ok(Credentials::new(
        access_key_id,
        secret_access_key,
        session_token,
        None,
        "kubernetes-secret",
    ))
}

/// Fetches the credentials Secret and parses it.
pub async fn load_from_secret(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<Credentials, CredentialsError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secret = match api.get(name).await {
        Ok(secret) => secret,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(CredentialsError::NotFound {
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        }
        Err(kube::Error::Api(status)) if status.code == 403 => {
            return Err(CredentialsError::Forbidden {
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        }
        Err(e) => {
            return Err(CredentialsError::Api {
                namespace: namespace.to_string(),
                name: name.to_string(),
                message: e.to_string(),
            });
        }
    };
    from_secret_data(namespace, name, &secret.data.unwrap_or_default())
}

/// Static keys from a Secret, replaced in place when the Secret changes. Never cached by the
/// SDK (see `run`), so every fetch uses the newest keys.
#[derive(Debug, Clone)]
pub struct SecretCredentials {
    current: Arc<RwLock<Credentials>>,
}

impl SecretCredentials {
    pub fn new(initial: Credentials) -> SecretCredentials {
        SecretCredentials {
            current: Arc::new(RwLock::new(initial)),
        }
    }

    fn replace(&self, credentials: Credentials) -> bool {
        let mut current = self.current.write().expect("credentials lock");
        let changed = current.access_key_id() != credentials.access_key_id()
            || current.secret_access_key() != credentials.secret_access_key()
            || current.session_token() != credentials.session_token();
        *current = credentials;
        changed
    }

    /// Follows the Secret by name until dropped. An invalid or deleted Secret keeps the last
    /// good keys in use (loudly): never make it worse.
    pub async fn follow(self, client: Client, namespace: String, name: String) {
        let api: Api<Secret> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                    match from_secret_data(&namespace, &name, &secret.data.unwrap_or_default()) {
                        Ok(credentials) => {
                            if self.replace(credentials) {
                                tracing::info!(
                                    namespace,
                                    secret = name,
                                    "credentials Secret changed; the new keys are used from the next token fetch"
                                );
                            }
                        }
                        Err(error) => tracing::error!(
                            error = %error,
                            "credentials Secret is invalid; keeping the previous keys"
                        ),
                    }
                }
                Ok(watcher::Event::Delete(_)) => tracing::error!(
                    namespace,
                    secret = name,
                    "credentials Secret was deleted; keeping the previous keys until it is recreated"
                ),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Err(error) => tracing::warn!(
                    namespace,
                    secret = name,
                    error = %error,
                    "watching the credentials Secret failed; retrying"
                ),
            }
        }
    }
}

impl ProvideCredentials for SecretCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let credentials: provider::Result =
            Ok(self.current.read().expect("credentials lock").clone());
        future::ProvideCredentials::ready(credentials)
    }
}

/// A role to assume on top of the base credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    pub role_arn: String,
    pub external_id: Option<String>,
    pub session_name: String,
}

/// Wraps `base` in an STS AssumeRole provider. The SDK config supplies the STS endpoint and
/// region; the assumed credentials are fetched anew for every token fetch (one STS call per
/// refresh), so rotated base keys apply at once.
pub async fn assume_role(
    sdk_config: &aws_config::SdkConfig,
    base: SharedCredentialsProvider,
    role: &AssumeRole,
) -> SharedCredentialsProvider {
    let mut builder = aws_config::sts::AssumeRoleProvider::builder(role.role_arn.clone())
        .configure(sdk_config)
        .session_name(role.session_name.clone());
    if let Some(id) = &role.external_id {
        builder = builder.external_id(id.clone());
    }
    SharedCredentialsProvider::new(builder.build_from_provider(base).await)
}

/// Checks the shape of a role ARN: `arn:<partition>:iam::<12-digit account>:role/<name>`.
pub fn validate_role_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && matches!(parts[1], "aws" | "aws-cn" | "aws-us-gov")
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
            "--role-arn {arn:?} is not an IAM role ARN; expected arn:aws:iam::<12-digit account>:role/<name>"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn accepts_both_spellings_and_trims() {
        for pairs in [
            vec![
                ("aws_access_key_id", "AKID\n"),
                ("aws_secret_access_key", " SECRET "),
            ],
            vec![
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ],
        ] {
            let creds = from_secret_data("ns", "aws", &data(&pairs)).unwrap();
            assert_eq!(creds.access_key_id(), "AKID");
            assert_eq!(creds.secret_access_key(), "SECRET");
            assert_eq!(creds.session_token(), None);
        }
        let creds = from_secret_data(
            "ns",
            "aws",
            &data(&[
                ("aws_access_key_id", "AKID"),
                ("aws_secret_access_key", "SECRET"),
                ("AWS_SESSION_TOKEN", "SESSION"),
            ]),
        )
        .unwrap();
        assert_eq!(creds.session_token(), Some("SESSION"));
    }

    #[test]
    fn missing_or_empty_keys_name_the_key_and_the_fix() {
        let err =
            from_secret_data("ns", "aws", &data(&[("aws_secret_access_key", "S")])).unwrap_err();
        assert!(
            err.to_string()
                .contains("has no aws_access_key_id (or AWS_ACCESS_KEY_ID)"),
            "{err}"
        );
        let err = from_secret_data(
            "ns",
            "aws",
            &data(&[("aws_access_key_id", "A"), ("aws_secret_access_key", "  ")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("aws_secret_access_key"), "{err}");
        let mut bad = data(&[("aws_secret_access_key", "S")]);
        bad.insert("aws_access_key_id".into(), ByteString(vec![0xff, 0xfe]));
        let err = from_secret_data("ns", "aws", &bad).unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn errors_never_contain_values() {
        let err = from_secret_data(
            "ns",
            "aws",
            &data(&[
                ("aws_access_key_id", "AKIDVALUE"),
                ("aws_secret_access_key", ""),
            ]),
        )
        .unwrap_err();
        assert!(!err.to_string().contains("AKIDVALUE"));
    }

    #[tokio::test]
    async fn provider_hands_out_the_newest_keys() {
        let creds = |id: &str| Credentials::new(id, "secret", None, None, "test");
        let provider = SecretCredentials::new(creds("AKIA1"));
        assert_eq!(
            provider
                .provide_credentials()
                .await
                .unwrap()
                .access_key_id(),
            "AKIA1"
        );
        assert!(!provider.replace(creds("AKIA1")));
        assert!(provider.replace(creds("AKIA2")));
        assert_eq!(
            provider
                .provide_credentials()
                .await
                .unwrap()
                .access_key_id(),
            "AKIA2"
        );
    }

    #[test]
    fn role_arns() {
        for ok in [
            "arn:aws:iam::123456789012:role/puller",
            "arn:aws:iam::123456789012:role/path/to/puller",
            "arn:aws-cn:iam::123456789012:role/puller",
            "arn:aws-us-gov:iam::123456789012:role/puller",
        ] {
            assert!(validate_role_arn(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "puller",
            "arn:aws:iam::12345:role/puller",
            "arn:aws:iam::123456789012:user/bob",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:sts::123456789012:role/puller",
        ] {
            let err = validate_role_arn(bad).unwrap_err();
            assert!(err.contains("expected arn:aws:iam::"), "{bad}: {err}");
        }
    }
}
