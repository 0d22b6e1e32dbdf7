//! AWS credentials: from a Kubernetes Secret in the controller's namespace, or the default AWS
//! chain (environment, profile, web identity).

use std::collections::BTreeMap;

use aws_credential_types::Credentials;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
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
}
