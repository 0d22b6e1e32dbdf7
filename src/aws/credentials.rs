//! AWS credentials: from a Kubernetes Secret in the controller's namespace (watched, so rotated
//! keys are used at the next fetch), or the default AWS chain (environment, profile, web
//! identity); optionally a role assumed on top of either.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider, future};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::time::Instant;

use crate::core::api_failure::ApiFailure;
use crate::core::pipeline::AssumeRole;
use crate::telemetry::metrics::Metrics;

/// Accepted spellings of each key, lower case first (the original Go controller's) then the
/// environment-variable form.
const ACCESS_KEY_ID: [&str; 2] = ["aws_access_key_id", "AWS_ACCESS_KEY_ID"];
const SECRET_ACCESS_KEY: [&str; 2] = ["aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"];
const SESSION_TOKEN: [&str; 2] = ["aws_session_token", "AWS_SESSION_TOKEN"];

/// IAM documents access key IDs as 16 to 128 word characters (`AccessKey`: pattern `[\w]+`).
const ACCESS_KEY_ID_LENGTH: RangeInclusive<usize> = 16..=128;
/// Secret keys are 40 characters; AWS documents no maximum, so this leaves room to spare.
const SECRET_ACCESS_KEY_MAX: usize = 256;
/// STS documents no maximum for session tokens ("typically less than 4096 bytes, but that can
/// vary"): four times that, still small enough for the request header it travels in.
const SESSION_TOKEN_MAX: usize = 16 * 1024;

/// How often a failure that persists unchanged is logged again (every failure is counted).
const REPEAT_LOG_AFTER: Duration = Duration::from_secs(300);

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
    #[error(
        "credentials Secret {namespace}/{name}: {key} is not valid UTF-8 text; put the key exactly as AWS issued it \
         (kubectl -n {namespace} edit secret {name}, or recreate it with kubectl create secret generic)"
    )]
    NotText {
        namespace: String,
        name: String,
        key: &'static str,
    },
    /// A value that cannot be an AWS key: `problem` says why, never what the value is.
    #[error(
        "credentials Secret {namespace}/{name}: {key} {problem}; put the key exactly as AWS issued it \
         (kubectl -n {namespace} edit secret {name}, or recreate it with kubectl create secret generic)"
    )]
    Invalid {
        namespace: String,
        name: String,
        key: &'static str,
        problem: String,
    },
    /// The initial list (`verb` = list) or the watch (`verb` = watch) of the Secret was refused:
    /// `get` alone reads it once, but rotated keys are only seen through list and watch.
    #[error(
        "not allowed to {verb} credentials Secret {namespace}/{name}, so rotated keys are not picked up \
         (the keys read at start stay in use); grant get, list and watch on secrets with resourceNames [{name}] \
         in namespace {namespace} to the controller's ServiceAccount (the Role in deploy/common.yaml): the watch \
         selects the Secret with fieldSelector metadata.name={name}, so resourceNames applies to list and watch too"
    )]
    WatchForbidden {
        namespace: String,
        name: String,
        verb: &'static str,
    },
    #[error("reading credentials Secret {namespace}/{name} failed: {message}")]
    Api {
        namespace: String,
        name: String,
        message: String,
    },
}

/// Why `value` (trimmed, non-empty) cannot be the value of `keys[0]`, if it cannot. Bounded and
/// checked here, before the SDK puts a key into a request header: a 1 MiB key made the API
/// server's peer close the connection ("Broken pipe") instead of an error naming the key.
fn invalid(key: &'static str, value: &str) -> Option<String> {
    let length = value.len();
    if key == ACCESS_KEY_ID[0] {
        if !ACCESS_KEY_ID_LENGTH.contains(&length) {
            return Some(format!(
                "has {length} bytes; AWS access key IDs are {} to {} characters",
                ACCESS_KEY_ID_LENGTH.start(),
                ACCESS_KEY_ID_LENGTH.end()
            ));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Some(
                "contains characters other than letters, digits and _ (AWS access key IDs look like AKIA...)".into(),
            );
        }
        return None;
    }
    let max = if key == SECRET_ACCESS_KEY[0] {
        SECRET_ACCESS_KEY_MAX
    } else {
        SESSION_TOKEN_MAX
    };
    if length > max {
        return Some(format!("has {length} bytes; at most {max} are accepted"));
    }
    // Keys are base64-like: printable ASCII without spaces.
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(
            "contains whitespace, control or non-ASCII characters (inside the value; surrounding whitespace is trimmed)".into(),
        );
    }
    None
}

/// Reads static keys from a Secret's data, checked against AWS's formats (see [`invalid`]).
/// Values are trimmed: `echo` adds newlines.
pub(crate) fn from_secret_data(
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
        if text.is_empty() {
            return Ok(None);
        }
        if let Some(problem) = invalid(keys[0], text) {
            return Err(CredentialsError::Invalid {
                namespace: namespace.to_string(),
                name: name.to_string(),
                key,
                problem,
            });
        }
        Ok(Some(text.to_string()))
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
pub(crate) async fn load_from_secret(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<Credentials, CredentialsError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let (namespace, name) = (namespace.to_string(), name.to_string());
    let secret = match api.get(&name).await {
        Ok(secret) => secret,
        Err(e) => {
            return Err(match ApiFailure::of(&e) {
                ApiFailure::NotFound => CredentialsError::NotFound { namespace, name },
                ApiFailure::Forbidden => CredentialsError::Forbidden { namespace, name },
                _ => CredentialsError::Api {
                    namespace,
                    name,
                    message: e.to_string(),
                },
            });
        }
    };
    from_secret_data(&namespace, &name, &secret.data.unwrap_or_default())
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
    /// good keys in use (loudly): never make it worse. Failures back off (kube's default: 0.8 s
    /// doubling to 30 s, jittered), each is counted, and a failure that persists unchanged is
    /// logged once and then every 5 minutes; a refused list or watch is the pipeline's problem
    /// (a resource's status) until the watch works again: an event arrives, or a retry is not
    /// refused within [`ATTEMPT_GRACE`].
    pub async fn follow(
        self,
        client: Client,
        namespace: String,
        name: String,
        metrics: Arc<Metrics>,
    ) {
        let api: Api<Secret> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let retries = Retries::default();
        let next_attempt = retries.next_attempt.clone();
        let mut events = watcher(api, config)
            // The watcher emits `Init` before every list attempt. Let through, it would reset
            // the backoff each time: a refused list would be retried every second forever.
            .try_filter(|event| std::future::ready(!matches!(event, watcher::Event::Init)))
            .backoff(retries)
            .boxed();
        let mut following = Following::default();
        let target = Target {
            namespace: &namespace,
            name: &name,
            metrics: &metrics,
        };
        loop {
            // A watch that starts emits nothing: a retry not refused within the grace worked.
            let retried = following
                .failing
                .and(*next_attempt.lock().expect("retries lock"))
                .map(|at| at + ATTEMPT_GRACE);
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.on_event(&mut following, &target, event),
                    Some(Err(error)) => on_watch_error(&mut following, &target, &error),
                    None => break,
                },
                _ = sleep_until(retried) => target.recovered(&mut following),
            }
            metrics.credentials_problem(following.problem(&namespace, &name));
        }
    }

    /// One watch event: new keys are used from the next fetch; an invalid or deleted Secret
    /// keeps the previous ones.
    fn on_event(
        &self,
        following: &mut Following,
        target: &Target<'_>,
        event: watcher::Event<Secret>,
    ) {
        let Target {
            namespace,
            name,
            metrics,
        } = *target;
        let initial = matches!(event, watcher::Event::InitApply(_));
        target.recovered(following);
        match event {
            watcher::Event::Apply(secret) | watcher::Event::InitApply(secret) => {
                following.listed |= initial;
                match from_secret_data(namespace, name, &secret.data.unwrap_or_default()) {
                    Ok(credentials) => {
                        following.unusable = None;
                        if self.replace(credentials) {
                            tracing::info!(
                                namespace,
                                secret = name,
                                "credentials Secret changed; the new keys are used from the next token fetch"
                            );
                        }
                    }
                    Err(error) => {
                        metrics.credentials_failure("invalid");
                        if following.unusable(error.to_string()) {
                            tracing::error!(
                                error = %error,
                                "credentials Secret is invalid; keeping the previous keys"
                            );
                        }
                    }
                }
            }
            watcher::Event::Delete(_) => {
                metrics.credentials_failure("invalid");
                following.deleted(namespace, name);
            }
            watcher::Event::Init => {}
            // Listed (again, after a failure) and not there: deleted meanwhile.
            watcher::Event::InitDone => {
                if !std::mem::take(&mut following.listed) {
                    metrics.credentials_failure("invalid");
                    following.deleted(namespace, name);
                }
            }
        }
    }
}

/// The credentials Secret followed, and where its failures are counted.
#[derive(Clone, Copy)]
struct Target<'a> {
    namespace: &'a str,
    name: &'a str,
    metrics: &'a Metrics,
}

impl Target<'_> {
    /// Logs the end of a run of failures, if one ended.
    fn recovered(&self, following: &mut Following) {
        if let Some(failures) = following.recovered() {
            tracing::info!(
                namespace = self.namespace,
                secret = self.name,
                failures,
                "watching the credentials Secret works again"
            );
        }
    }
}

/// A failed list or watch: counted each time, logged when it starts or changes (and every 5
/// minutes while it lasts).
fn on_watch_error(following: &mut Following, target: &Target<'_>, error: &watcher::Error) {
    let Target {
        namespace,
        name,
        metrics,
    } = *target;
    let Some(failure) = WatchFailure::of(error) else {
        // An expired resourceVersion: the watcher lists again by itself.
        tracing::debug!(error = %error, "credentials Secret watch expired; listing again");
        return;
    };
    metrics.credentials_failure(failure.reason());
    if !following.failed(failure, Instant::now()) {
        return;
    }
    let failures = following.failures();
    match failure {
        WatchFailure::Forbidden(verb) => tracing::error!(
            error = %CredentialsError::WatchForbidden {
                namespace: namespace.to_string(),
                name: name.to_string(),
                verb,
            },
            failures,
            "watching the credentials Secret is forbidden; retrying with backoff"
        ),
        WatchFailure::Unavailable => tracing::warn!(
            namespace,
            secret = name,
            error = %error,
            failures,
            "watching the credentials Secret failed; keeping the current keys, retrying with backoff"
        ),
    }
}

/// How long a retry may take to be refused before it counts as working.
const ATTEMPT_GRACE: Duration = Duration::from_secs(10);

/// Sleeps until `at`; never without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// kube's default watch backoff (0.8 s doubling to 30 s, jittered) that records when the next
/// attempt starts.
#[derive(Default)]
struct Retries {
    backoff: watcher::DefaultBackoff,
    next_attempt: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Iterator for Retries {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.backoff.next()?;
        *self.next_attempt.lock().expect("retries lock") = Some(Instant::now() + delay);
        Some(delay)
    }
}

impl Backoff for Retries {
    fn reset(&mut self) {
        self.backoff.reset();
    }
}

/// Why following the credentials Secret failed, as far as an operator can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchFailure {
    /// RBAC refused this verb (`list` or `watch`).
    Forbidden(&'static str),
    /// Anything else: API server unreachable, timeouts, 5xx. Retried; nothing to fix here.
    Unavailable,
}

impl WatchFailure {
    /// `None` for what the watcher handles by itself: an expired resourceVersion (410).
    fn of(error: &watcher::Error) -> Option<WatchFailure> {
        let (code, verb) = match error {
            watcher::Error::InitialListFailed(kube::Error::Api(s)) => (s.code, "list"),
            watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s)) => (s.code, "watch"),
            watcher::Error::WatchError(s) => (s.code, "watch"),
            _ => return Some(WatchFailure::Unavailable),
        };
        match code {
            403 => Some(WatchFailure::Forbidden(verb)),
            410 => None,
            _ => Some(WatchFailure::Unavailable),
        }
    }

    /// The `reason` label of `credentials_watch_failures_total`.
    fn reason(self) -> &'static str {
        match self {
            WatchFailure::Forbidden(_) => "forbidden",
            WatchFailure::Unavailable => "unavailable",
        }
    }
}

/// What following the Secret has seen: what to log, and the pipeline's problem.
#[derive(Debug, Default)]
struct Following {
    /// The failure in progress: which, how many in a row, when last logged.
    failing: Option<(WatchFailure, u32, Instant)>,
    /// Why the Secret's content is not in use (invalid, deleted), until good keys arrive.
    unusable: Option<String>,
    /// The Secret was seen since the last complete list (`InitDone`).
    listed: bool,
}

impl Following {
    /// Records a failure; true when it is to be logged: the first of its kind in a row, then
    /// every [`REPEAT_LOG_AFTER`].
    fn failed(&mut self, failure: WatchFailure, now: Instant) -> bool {
        match &mut self.failing {
            Some((current, count, logged)) if *current == failure => {
                *count = count.saturating_add(1);
                if now.duration_since(*logged) >= REPEAT_LOG_AFTER {
                    *logged = now;
                    return true;
                }
                false
            }
            _ => {
                self.failing = Some((failure, 1, now));
                true
            }
        }
    }

    /// Failures in a row so far.
    fn failures(&self) -> u32 {
        self.failing.map_or(0, |(_, count, _)| count)
    }

    /// An event arrived, so the watch works: the failures in a row that ended, if any.
    fn recovered(&mut self) -> Option<u32> {
        self.failing.take().map(|(_, count, _)| count)
    }

    /// Records why the content is unusable; true when that changed (to be logged).
    fn unusable(&mut self, why: String) -> bool {
        let changed = self.unusable.as_ref() != Some(&why);
        self.unusable = Some(why);
        changed
    }

    fn deleted(&mut self, namespace: &str, name: &str) {
        let error = CredentialsError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        if self.unusable(error.to_string()) {
            tracing::error!(
                namespace,
                secret = name,
                error = %error,
                "credentials Secret was deleted; keeping the previous keys until it is recreated"
            );
        }
    }

    /// The pipeline's problem (a condition reason and message): a refused list or watch, else
    /// unusable content. A transient failure is none: it is retried, and affects every watch.
    fn problem(&self, namespace: &str, name: &str) -> Option<(&'static str, String)> {
        if let Some((WatchFailure::Forbidden(verb), _, _)) = self.failing {
            let error = CredentialsError::WatchForbidden {
                namespace: namespace.to_string(),
                name: name.to_string(),
                verb,
            };
            return Some(("Forbidden", error.to_string()));
        }
        self.unusable.clone().map(|why| {
            (
                "CredentialsUnavailable",
                format!("{why}; the previous keys stay in use"),
            )
        })
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

/// Wraps `base` in an STS AssumeRole provider. The SDK config supplies the STS endpoint and
/// region; the assumed credentials are fetched anew for every token fetch (one STS call per
/// refresh), so rotated base keys apply at once.
pub(crate) async fn assume_role(
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
                ("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE\n"),
                ("aws_secret_access_key", " SECRET "),
            ],
            vec![
                ("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "SECRET"),
            ],
        ] {
            let creds = from_secret_data("ns", "aws", &data(&pairs)).unwrap();
            assert_eq!(creds.access_key_id(), "AKIAIOSFODNN7EXAMPLE");
            assert_eq!(creds.secret_access_key(), "SECRET");
            assert_eq!(creds.session_token(), None);
        }
        let creds = from_secret_data(
            "ns",
            "aws",
            &data(&[
                ("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"),
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
            &data(&[
                ("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"),
                ("aws_secret_access_key", "  "),
            ]),
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

    /// Hostile values: each refused with an error naming the key, the Secret and the fix, and
    /// never the value.
    #[test]
    fn hostile_values_are_refused_without_echoing_them() {
        const KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
        const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let huge = "A".repeat(1024 * 1024);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "aws_access_key_id",
                huge.clone().into_bytes(),
                "has 1048576 bytes",
            ),
            (
                "aws_access_key_id",
                b"AKIA".to_vec(),
                "16 to 128 characters",
            ),
            (
                "aws_access_key_id",
                b"AKIAIOSFODNN7EXAMPLE\r\nX-Evil: 1".to_vec(),
                "other than letters",
            ),
            (
                "aws_access_key_id",
                b"AKIAIOSF ODNN7EXAMPLE".to_vec(),
                "other than letters",
            ),
            (
                "aws_access_key_id",
                b"AKIAIOSF\x00ODNN7EXAMPLE".to_vec(),
                "other than letters",
            ),
            (
                "aws_access_key_id",
                "AKIAIOSFODNN7EXAMPLÉ".as_bytes().to_vec(),
                "other than letters",
            ),
            ("aws_access_key_id", vec![0xff; 20], "not valid UTF-8"),
            (
                "aws_access_key_id",
                b" \t\n ".to_vec(),
                "has no aws_access_key_id",
            ),
            ("aws_access_key_id", Vec::new(), "has no aws_access_key_id"),
            (
                "aws_secret_access_key",
                huge.clone().into_bytes(),
                "has 1048576 bytes; at most 256",
            ),
            (
                "aws_secret_access_key",
                b"wJalrXUtnFEMI\nK7MDENG".to_vec(),
                "whitespace, control",
            ),
            (
                "aws_secret_access_key",
                b"wJalrXUtnFEMI\x1bK7MDENG".to_vec(),
                "whitespace, control",
            ),
            (
                "aws_secret_access_key",
                b"\n\n".to_vec(),
                "has no aws_secret_access_key",
            ),
            ("aws_secret_access_key", vec![0xc3, 0x28], "not valid UTF-8"),
            (
                "aws_session_token",
                huge.into_bytes(),
                "has 1048576 bytes; at most 16384",
            ),
            (
                "aws_session_token",
                b"FwoGZXIvYXdz EXAMPLE".to_vec(),
                "whitespace, control",
            ),
            (
                "aws_session_token",
                b"FwoGZXIvYXdz\x7fEXAMPLE".to_vec(),
                "whitespace, control",
            ),
        ];
        for (key, value, expected) in cases {
            let mut pairs = BTreeMap::from([
                ("aws_access_key_id".to_string(), ByteString(KEY_ID.into())),
                (
                    "aws_secret_access_key".to_string(),
                    ByteString(SECRET.into()),
                ),
            ]);
            pairs.insert(key.to_string(), ByteString(value.clone()));
            let err = from_secret_data("ns", "aws", &pairs)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{key}: {err}");
            assert!(err.contains(key) && err.contains("ns/aws"), "{key}: {err}");
            // The fix: a command, or what the Secret must hold.
            assert!(
                err.contains("kubectl") || err.contains("expected keys"),
                "{key}: {err}"
            );
            assert!(err.len() < 600, "{key}: {} bytes of error", err.len());
            let text = String::from_utf8_lossy(&value);
            for fragment in ["EXAMPLE", "AAAAAAAA", "wJalr", "FwoG"] {
                assert!(
                    !(text.contains(fragment) && err.contains(fragment)),
                    "{key} echoed: {err}"
                );
            }
        }
    }

    #[test]
    fn largest_accepted_values_and_real_shapes_pass() {
        let data = |id: String, secret: String, token: String| {
            BTreeMap::from([
                ("aws_access_key_id".to_string(), ByteString(id.into_bytes())),
                (
                    "aws_secret_access_key".to_string(),
                    ByteString(secret.into_bytes()),
                ),
                (
                    "aws_session_token".to_string(),
                    ByteString(token.into_bytes()),
                ),
            ])
        };
        let creds = from_secret_data(
            "ns",
            "aws",
            &data("A".repeat(128), "s".repeat(256), "t".repeat(16 * 1024)),
        )
        .unwrap();
        assert_eq!(creds.access_key_id().len(), 128);
        for (id, secret) in [
            (
                "AKIAIOSFODNN7EXAMPLE",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ),
            ("ASIA_16_CHARS_OK", "a+b/c=d"),
        ] {
            from_secret_data(
                "ns",
                "aws",
                &data(id.into(), secret.into(), "FwoGZXIvYXdzE=".into()),
            )
            .unwrap();
        }
        let err = from_secret_data("ns", "aws", &data("A".repeat(129), "s".into(), "t".into()))
            .unwrap_err();
        assert!(err.to_string().contains("has 129 bytes"), "{err}");
    }

    #[test]
    fn watch_failures_name_the_verb_and_are_logged_once_per_change() {
        let api = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("refused", "Forbidden")
                    .with_code(code)
                    .boxed(),
            )
        };
        let forbidden_list = watcher::Error::InitialListFailed(api(403));
        let forbidden_watch = watcher::Error::WatchStartFailed(api(403));
        assert_eq!(
            WatchFailure::of(&forbidden_list),
            Some(WatchFailure::Forbidden("list"))
        );
        assert_eq!(
            WatchFailure::of(&forbidden_watch),
            Some(WatchFailure::Forbidden("watch"))
        );
        assert_eq!(
            WatchFailure::of(&watcher::Error::InitialListFailed(api(503))),
            Some(WatchFailure::Unavailable)
        );
        assert_eq!(
            WatchFailure::of(&watcher::Error::WatchError(
                kube::core::Status::failure("gone", "Expired")
                    .with_code(410)
                    .boxed()
            )),
            None
        );

        let start = Instant::now();
        let mut following = Following::default();
        let list = WatchFailure::Forbidden("list");
        assert!(following.failed(list, start));
        for s in 1..300 {
            assert!(
                !following.failed(list, start + Duration::from_secs(s)),
                "{s}"
            );
        }
        assert_eq!(following.failures(), 300);
        assert!(following.failed(list, start + REPEAT_LOG_AFTER));
        // Another failure is news.
        assert!(following.failed(WatchFailure::Unavailable, start + REPEAT_LOG_AFTER));
        assert!(
            following.problem("ns", "aws").is_none(),
            "transient failures are no problem"
        );
        assert!(following.failed(WatchFailure::Forbidden("watch"), start + REPEAT_LOG_AFTER));
        let (reason, message) = following.problem("ns", "aws").unwrap();
        assert_eq!(reason, "Forbidden");
        for part in [
            "not allowed to watch credentials Secret ns/aws",
            "grant get, list and watch on secrets with resourceNames [aws] in namespace ns",
            "fieldSelector metadata.name=aws",
        ] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
        assert_eq!(following.recovered(), Some(1));
        assert!(following.problem("ns", "aws").is_none());
        assert_eq!(following.recovered(), None);
        // Unusable content stays the problem until good keys arrive.
        assert!(following.unusable("bad key".into()));
        assert!(!following.unusable("bad key".into()));
        assert_eq!(
            following.problem("ns", "aws").unwrap().0,
            "CredentialsUnavailable"
        );
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
}
