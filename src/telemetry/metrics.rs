//! Prometheus metrics (OpenMetrics text), served on `/metrics` by every replica.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::telemetry::observed::Observed;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IdentityLabels {
    /// The region, or `ecr-public`.
    pub(crate) identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AwsCallLabels {
    pub(crate) identity: String,
    /// `ok`, `transient` or `configuration`.
    pub(crate) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WriteLabels {
    /// `apply`, `delete` or `service_account`.
    pub(crate) kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FailureLabels {
    pub(crate) identity: String,
    /// `transient` (retried with backoff) or `configuration` (a human must act).
    pub(crate) class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    /// `written`, `up_to_date`, `removed`, `not_selected`, `conflict`, `pending`, `expired` or `error`.
    pub(crate) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResourceLabels {
    /// The EcrPullSecret's name.
    pub(crate) resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    /// `forbidden`, `unavailable` or `invalid`.
    pub(crate) reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BuildLabels {
    pub(crate) version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabels {
    /// `synced`, `failed`, `excluded`, `conflict`, `pending` (no token yet) or `expired` (the token written has expired).
    pub(crate) state: String,
}

/// The metrics of one configuration: the flag-configured one, or one EcrPullSecret
/// ([`Metrics::for_resource`]). All share one registry; per-namespace bookkeeping and token
/// health are per configuration, and a resource's token series carry its name in `identity`.
pub struct Metrics {
    families: std::sync::Arc<Families>,
    /// `None` for the flag-configured controller, else the EcrPullSecret's name.
    resource: Option<String>,
    /// Namespaces triggered but not yet picked up by a worker (what `queue_depth` counts).
    queued: Mutex<HashSet<std::sync::Arc<str>>>,
    /// Their number, for those who wait for room in the queue.
    queued_len: tokio::sync::watch::Sender<usize>,
    /// What this configuration observed of itself, which its status is computed from. The
    /// recording methods below update it and the gauges together; only status reads it back.
    observed: Observed,
}

struct Families {
    registry: Registry,
    namespaces: Family<StateLabels, Gauge>,
    leader: Gauge,
    leadership_transitions: Counter,
    token_expiry: Family<IdentityLabels, Gauge<f64, AtomicU64>>,
    aws_calls: Family<AwsCallLabels, Counter>,
    tokens_adopted: Family<IdentityLabels, Counter>,
    writes: Family<WriteLabels, Counter>,
    last_refresh: Family<IdentityLabels, Gauge<f64, AtomicU64>>,
    refresh_failures: Family<FailureLabels, Counter>,
    consecutive_failures: Family<IdentityLabels, Gauge>,
    reconcile_duration: Family<OutcomeLabels, Histogram, fn() -> Histogram>,
    limiter_wait: Histogram,
    queue_depth: Gauge,
    resource_ready: Family<ResourceLabels, Gauge>,
    credentials_failures: Family<ReasonLabels, Counter>,
}

/// 1 ms to about 16 s: a reconcile is one cache read, or a write or two.
fn reconcile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ecr_pull_secrets");
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the lease and does the work",
            leader.clone(),
        );
        let leadership_transitions = Counter::default();
        registry.register(
            "leadership_transitions",
            "Times this replica gained or lost leadership",
            leadership_transitions.clone(),
        );
        let token_expiry = Family::<IdentityLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "token_expiry_timestamp_seconds",
            "Expiry (Unix time) of the token currently written, per identity",
            token_expiry.clone(),
        );
        let aws_calls = Family::<AwsCallLabels, Counter>::default();
        registry.register(
            "aws_get_authorization_token_calls",
            "GetAuthorizationToken calls by identity and outcome",
            aws_calls.clone(),
        );
        let tokens_adopted = Family::<IdentityLabels, Counter>::default();
        registry.register(
            "tokens_adopted",
            "Tokens taken over from the pull secrets a previous leader wrote (still valid, same credentials) instead of fetched, per identity",
            tokens_adopted.clone(),
        );
        let namespaces = Family::<StateLabels, Gauge>::default();
        registry.register(
            "namespaces",
            "Namespaces by the state of their pull secret: synced, failed, excluded, conflict (a foreign Secret has our name), pending (no token yet), expired (the last good token written has expired: AWS failing)",
            namespaces.clone(),
        );
        let writes = Family::<WriteLabels, Counter>::default();
        registry.register("writes", "Kubernetes writes made, by kind", writes.clone());
        let last_refresh = Family::<IdentityLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "token_last_refresh_timestamp_seconds",
            "When (Unix time) the last token was fetched successfully, per identity",
            last_refresh.clone(),
        );
        let refresh_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "token_refresh_failures",
            "Failed token fetches by identity and class (transient or configuration)",
            refresh_failures.clone(),
        );
        let consecutive_failures = Family::<IdentityLabels, Gauge>::default();
        registry.register(
            "token_refresh_consecutive_failures",
            "Token fetches failed in a row since the last success, per identity (0 when healthy)",
            consecutive_failures.clone(),
        );
        let reconcile_duration =
            Family::<OutcomeLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                reconcile_histogram,
            );
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile one namespace, including rate-limiter waits, by outcome",
            reconcile_duration.clone(),
        );
        let limiter_wait = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "write_limiter_wait_seconds",
            "Time a write waited for the write rate limiter (--write-qps, --write-burst)",
            limiter_wait.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Namespaces waiting for a reconcile worker",
            queue_depth.clone(),
        );
        let resource_ready = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resource_ready",
            "1 while an EcrPullSecret's Ready condition is True, 0 otherwise (also when it cannot run); exported by the leader",
            resource_ready.clone(),
        );
        let credentials_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "credentials_watch_failures",
            "Failures following the credentials Secret, by reason: forbidden (list or watch refused), unavailable (API server unreachable or failing; retried with backoff), invalid (content unusable or Secret deleted; the previous keys stay in use)",
            credentials_failures.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the version label says which build runs",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        let families = Families {
            registry,
            namespaces,
            leader,
            leadership_transitions,
            token_expiry,
            aws_calls,
            tokens_adopted,
            writes,
            last_refresh,
            refresh_failures,
            consecutive_failures,
            reconcile_duration,
            limiter_wait,
            queue_depth,
            resource_ready,
            credentials_failures,
        };
        Metrics::scoped(std::sync::Arc::new(families), None)
    }

    fn scoped(families: std::sync::Arc<Families>, resource: Option<String>) -> Metrics {
        Metrics {
            families,
            resource,
            queued: Mutex::new(HashSet::new()),
            queued_len: tokio::sync::watch::channel(0).0,
            observed: Observed::default(),
        }
    }

    /// EcrPullSecret `name`'s Ready condition (`None`: deleted, the series goes).
    pub fn resource_ready(&self, name: &str, ready: Option<bool>) {
        let labels = ResourceLabels {
            resource: name.to_string(),
        };
        match ready {
            Some(ready) => {
                self.families
                    .resource_ready
                    .get_or_create(&labels)
                    .set(i64::from(ready));
            }
            None => {
                self.families.resource_ready.remove(&labels);
            }
        }
    }

    /// Records a problem (reason is a condition reason such as `Forbidden`).
    pub fn problem(&self, reason: &'static str, message: String) {
        self.observed.problem(reason, message);
    }

    /// One failure following the credentials Secret (`reason`: `forbidden`, `unavailable`,
    /// `invalid`).
    pub fn credentials_failure(&self, reason: &str) {
        self.families
            .credentials_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Sets (reason, message) or clears the credentials Secret's problem.
    pub(crate) fn credentials_problem(&self, problem: Option<(&'static str, String)>) {
        self.observed.credentials_problem(problem);
    }

    /// What this configuration observed of itself (for its status).
    pub fn observed(&self) -> &Observed {
        &self.observed
    }

    /// The metrics of EcrPullSecret `name`: the same registry, its own bookkeeping.
    pub(crate) fn for_resource(&self, name: &str) -> Metrics {
        Metrics::scoped(self.families.clone(), Some(name.to_string()))
    }

    /// The `identity` label: the region (or ecr-public), prefixed with the resource's name.
    fn identity(&self, identity: &str) -> String {
        match &self.resource {
            Some(resource) => format!("{resource}/{identity}"),
            None => identity.to_string(),
        }
    }

    /// Takes this configuration's namespaces out of the state and queue gauges: a pipeline
    /// starts (or starts again, after a failure) with no namespace state of its own, since
    /// each namespace's state is kept in the pipeline's table.
    pub(crate) fn forget_namespaces(&self) {
        for (state, count) in self.observed.forget_states() {
            self.state_gauge(state).dec_by(i64::from(count));
        }
        let queued: Vec<String> = self
            .queued
            .lock()
            .expect("queued lock")
            .iter()
            .map(|name| name.to_string())
            .collect();
        for name in queued {
            self.dequeued(&name);
        }
    }

    /// Takes this configuration's namespaces out of the gauges and drops its token series:
    /// called when a resource is deleted or restarted with a new spec.
    pub(crate) fn forget(&self) {
        self.forget_namespaces();
        let identities = self.observed.forget_tokens();
        let f = &self.families;
        for identity in identities {
            let identity = self.identity(&identity);
            let labels = IdentityLabels {
                identity: identity.clone(),
            };
            f.token_expiry.remove(&labels);
            f.last_refresh.remove(&labels);
            f.consecutive_failures.remove(&labels);
            f.tokens_adopted.remove(&labels);
            for class in ["transient", "configuration"] {
                f.refresh_failures.remove(&FailureLabels {
                    identity: identity.clone(),
                    class: class.to_string(),
                });
            }
            for outcome in ["ok", "transient", "configuration"] {
                f.aws_calls.remove(&AwsCallLabels {
                    identity: identity.clone(),
                    outcome: outcome.to_string(),
                });
            }
        }
    }

    pub fn leadership_acquired(&self) {
        self.families.leader.set(1);
        self.families.leadership_transitions.inc();
    }

    pub(crate) fn leadership_lost(&self) {
        self.families.leader.set(0);
        self.families.leadership_transitions.inc();
    }

    /// A successful fetch: expiry, refresh time, and the failure streak reset.
    pub fn token_fetched(&self, identity: &str, expires_at: std::time::SystemTime) {
        self.token_held(identity, std::time::SystemTime::now(), expires_at);
    }

    /// `identity` holds a token fetched at `fetched_at`: by this replica, or adopted.
    fn token_held(
        &self,
        identity: &str,
        fetched_at: std::time::SystemTime,
        expires_at: std::time::SystemTime,
    ) -> IdentityLabels {
        let labels = IdentityLabels {
            identity: self.identity(identity),
        };
        let f = &self.families;
        f.token_expiry
            .get_or_create(&labels)
            .set(unix_seconds(expires_at));
        f.last_refresh
            .get_or_create(&labels)
            .set(unix_seconds(fetched_at));
        f.consecutive_failures.get_or_create(&labels).set(0);
        self.observed
            .token_fetched(identity, expires_at, fetched_at);
        labels
    }

    /// A token taken over from the Secrets a previous leader wrote: the expiry and the time
    /// it was really fetched, as if this replica had fetched it then.
    pub fn token_adopted(
        &self,
        identity: &str,
        fetched_at: std::time::SystemTime,
        expires_at: std::time::SystemTime,
    ) {
        let labels = self.token_held(identity, fetched_at, expires_at);
        self.families.tokens_adopted.get_or_create(&labels).inc();
    }

    /// A failed fetch of class `class` (`transient` or `configuration`); `message` says why
    /// (shown in a resource's status).
    pub fn token_fetch_failed(&self, identity: &str, class: &str, message: &str) {
        let f = &self.families;
        f.refresh_failures
            .get_or_create(&FailureLabels {
                identity: self.identity(identity),
                class: class.to_string(),
            })
            .inc();
        f.consecutive_failures
            .get_or_create(&IdentityLabels {
                identity: self.identity(identity),
            })
            .inc();
        self.observed.token_fetch_failed(identity, message);
    }

    pub fn reconciled(&self, outcome: &str, took: std::time::Duration) {
        self.families
            .reconcile_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn limiter_waited(&self, took: std::time::Duration) {
        self.families.limiter_wait.observe(took.as_secs_f64());
    }

    /// Namespace `name` was triggered (watch event, config change); counted until a worker
    /// takes it. Repeated triggers of a waiting namespace count once, as the queue merges them.
    pub fn enqueued(&self, name: &str) {
        let mut queued = self.queued.lock().expect("queued lock");
        if !queued.contains(name) && queued.insert(crate::core::names::intern(name)) {
            self.families.queue_depth.inc();
            self.queued_len.send_replace(queued.len());
        }
    }

    /// Waits until fewer than `limit` namespaces wait for a worker.
    pub(crate) async fn queue_below(&self, limit: usize) {
        let _ = self.queued_len.subscribe().wait_for(|n| *n < limit).await;
    }

    /// A worker took namespace `name`.
    pub(crate) fn dequeued(&self, name: &str) {
        let mut queued = self.queued.lock().expect("queued lock");
        if queued.remove(name) {
            self.families.queue_depth.dec();
            self.queued_len.send_replace(queued.len());
        }
    }

    pub fn aws_call(&self, identity: &str, outcome: &str) {
        self.families
            .aws_calls
            .get_or_create(&AwsCallLabels {
                identity: self.identity(identity),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn write(&self, kind: &str) {
        self.families
            .writes
            .get_or_create(&WriteLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// A namespace moved from state `from` to `to` (`None`: it had none, or is forgotten:
    /// deleted or terminating). The caller keeps each namespace's state (with the rest of its
    /// entry, in the pipeline's Secret cache); this keeps the counts.
    pub fn namespace_moved(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if from == to {
            return;
        }
        self.observed.namespace_moved(from, to);
        if let Some(from) = from {
            self.state_gauge(from).dec();
        }
        if let Some(to) = to {
            self.state_gauge(to).inc();
        }
    }

    fn state_gauge(&self, state: &str) -> Gauge {
        self.families
            .namespaces
            .get_or_create(&StateLabels {
                state: state.to_string(),
            })
            .clone()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.families.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn exposition_names_and_values() {
        let m = Metrics::new();
        m.leadership_acquired();
        m.aws_call("us-east-1", "ok");
        m.write("apply");
        m.token_fetched(
            "us-east-1",
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        );
        let text = m.encode();
        for line in [
            "ecr_pull_secrets_leader 1",
            "ecr_pull_secrets_leadership_transitions_total 1",
            "ecr_pull_secrets_aws_get_authorization_token_calls_total{identity=\"us-east-1\",outcome=\"ok\"} 1",
            "ecr_pull_secrets_writes_total{kind=\"apply\"} 1",
            "ecr_pull_secrets_token_expiry_timestamp_seconds{identity=\"us-east-1\"} 1800000000.0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn refresh_failures_count_in_a_row_until_a_success() {
        let m = Metrics::new();
        m.token_fetch_failed("eu-west-1", "transient", "throttled");
        m.token_fetch_failed("eu-west-1", "configuration", "denied");
        let text = m.encode();
        for line in [
            "ecr_pull_secrets_token_refresh_consecutive_failures{identity=\"eu-west-1\"} 2",
            "ecr_pull_secrets_token_refresh_failures_total{identity=\"eu-west-1\",class=\"transient\"} 1",
            "ecr_pull_secrets_token_refresh_failures_total{identity=\"eu-west-1\",class=\"configuration\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        m.token_fetched("eu-west-1", std::time::SystemTime::now());
        let text = m.encode();
        assert!(text.contains(
            "ecr_pull_secrets_token_refresh_consecutive_failures{identity=\"eu-west-1\"} 0"
        ));
        let refreshed = sample_value(
            &text,
            "ecr_pull_secrets_token_last_refresh_timestamp_seconds",
        );
        assert!(refreshed > 1.7e9, "{refreshed}");
    }

    fn sample_value(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    #[test]
    fn queue_depth_counts_each_waiting_namespace_once() {
        let m = Metrics::new();
        m.enqueued("a");
        m.enqueued("a");
        m.enqueued("b");
        assert_eq!(
            sample_value(&m.encode(), "ecr_pull_secrets_queue_depth"),
            2.0
        );
        m.dequeued("a");
        m.dequeued("a");
        m.dequeued("never-queued");
        assert_eq!(
            sample_value(&m.encode(), "ecr_pull_secrets_queue_depth"),
            1.0
        );
    }

    #[test]
    fn reconcile_histogram_and_build_info() {
        let m = Metrics::new();
        m.reconciled("written", std::time::Duration::from_millis(3));
        m.reconciled("up_to_date", std::time::Duration::from_micros(200));
        let text = m.encode();
        assert!(
            text.contains(
                "ecr_pull_secrets_reconcile_duration_seconds_count{outcome=\"written\"} 1"
            )
        );
        assert!(text.contains(&format!(
            "ecr_pull_secrets_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn resources_share_the_gauges_and_keep_their_own_books() {
        let m = Metrics::new();
        let a = m.for_resource("team-a");
        m.namespace_moved(None, Some("synced"));
        a.namespace_moved(None, Some("failed"));
        a.namespace_moved(None, Some("synced"));
        a.enqueued("x");
        m.enqueued("x");
        a.token_fetch_failed("us-east-1", "transient", "throttled");
        let text = m.encode();
        for line in [
            "ecr_pull_secrets_namespaces{state=\"synced\"} 2",
            "ecr_pull_secrets_namespaces{state=\"failed\"} 1",
            "ecr_pull_secrets_queue_depth 2",
            "ecr_pull_secrets_token_refresh_consecutive_failures{identity=\"team-a/us-east-1\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(
            a.observed().state_counts(),
            BTreeMap::from([("failed", 1), ("synced", 1)])
        );
        let health = &a.observed().token_health()["us-east-1"];
        assert_eq!(health.consecutive_failures, 1);
        assert_eq!(health.last_error.as_deref(), Some("throttled"));
        a.forget();
        let text = m.encode();
        for line in [
            "ecr_pull_secrets_namespaces{state=\"synced\"} 1",
            "ecr_pull_secrets_namespaces{state=\"failed\"} 0",
            "ecr_pull_secrets_queue_depth 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("team-a/"), "{text}");
    }

    #[test]
    fn resource_ready_series_come_and_go() {
        let m = Metrics::new();
        m.resource_ready("team-a", Some(false));
        m.resource_ready("team-b", Some(true));
        let text = m.encode();
        assert!(text.contains("ecr_pull_secrets_resource_ready{resource=\"team-a\"} 0"));
        assert!(text.contains("ecr_pull_secrets_resource_ready{resource=\"team-b\"} 1"));
        m.resource_ready("team-a", None);
        assert!(!m.encode().contains("team-a"));
    }

    #[test]
    fn a_credentials_problem_lasts_until_cleared_whatever_progress() {
        let m = Metrics::new();
        m.problem("Forbidden", "a write was refused".into());
        m.credentials_problem(Some(("Forbidden", "may not list the Secret".into())));
        m.credentials_failure("forbidden");
        m.credentials_failure("forbidden");
        // Tokens still come with the keys read before: that hides other problems, not this one.
        m.token_fetched("us-east-1", std::time::SystemTime::now());
        let problem = m.observed().current_problem().unwrap();
        assert_eq!(problem.message, "may not list the Secret");
        let at = problem.at;
        m.credentials_problem(Some(("Forbidden", "may not list the Secret".into())));
        assert_eq!(
            m.observed().current_problem().unwrap().at,
            at,
            "unchanged, not renewed"
        );
        m.credentials_problem(None);
        assert_eq!(m.observed().current_problem(), None);
        assert!(
            m.encode().contains(
                "ecr_pull_secrets_credentials_watch_failures_total{reason=\"forbidden\"} 2"
            )
        );
    }

    #[test]
    fn namespace_states_move_between_gauges() {
        let m = Metrics::new();
        m.namespace_moved(None, Some("synced"));
        m.namespace_moved(None, Some("synced"));
        m.namespace_moved(None, Some("conflict"));
        m.namespace_moved(Some("synced"), Some("failed"));
        m.namespace_moved(Some("failed"), Some("failed"));
        m.namespace_moved(Some("conflict"), None);
        let text = m.encode();
        for line in [
            "ecr_pull_secrets_namespaces{state=\"synced\"} 1",
            "ecr_pull_secrets_namespaces{state=\"failed\"} 1",
            "ecr_pull_secrets_namespaces{state=\"conflict\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
