//! Prometheus metrics (OpenMetrics text), served on `/metrics` by every replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    /// The region, or `ecr-public`.
    pub identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsCallLabels {
    pub identity: String,
    /// `ok`, `transient` or `configuration`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `apply`, `delete` or `service_account`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `synced`, `failed`, `excluded`, `conflict` or `pending` (no token yet).
    pub state: String,
}

pub struct Metrics {
    registry: Registry,
    namespaces: Family<StateLabels, Gauge>,
    /// Each namespace's last state, so the per-state gauges stay exact (no per-namespace series).
    states: Mutex<HashMap<String, &'static str>>,
    leader: Gauge,
    leadership_transitions: Counter,
    token_expiry: Family<IdentityLabels, Gauge<f64, AtomicU64>>,
    aws_calls: Family<AwsCallLabels, Counter>,
    writes: Family<WriteLabels, Counter>,
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
        let namespaces = Family::<StateLabels, Gauge>::default();
        registry.register(
            "namespaces",
            "Namespaces by the state of their pull secret: synced, failed, excluded, conflict (a foreign Secret has our name), pending (no token yet)",
            namespaces.clone(),
        );
        let writes = Family::<WriteLabels, Counter>::default();
        registry.register("writes", "Kubernetes writes made, by kind", writes.clone());
        Metrics {
            registry,
            namespaces,
            states: Mutex::new(HashMap::new()),
            leader,
            leadership_transitions,
            token_expiry,
            aws_calls,
            writes,
        }
    }

    pub fn leadership_acquired(&self) {
        self.leader.set(1);
        self.leadership_transitions.inc();
    }

    pub fn leadership_lost(&self) {
        self.leader.set(0);
        self.leadership_transitions.inc();
    }

    pub fn token_fetched(&self, identity: &str, expires_at: std::time::SystemTime) {
        let seconds = expires_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.token_expiry
            .get_or_create(&IdentityLabels {
                identity: identity.to_string(),
            })
            .set(seconds);
    }

    pub fn aws_call(&self, identity: &str, outcome: &str) {
        self.aws_calls
            .get_or_create(&AwsCallLabels {
                identity: identity.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn write(&self, kind: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Records namespace `name`'s state; `None` forgets it (deleted or terminating).
    pub fn namespace_state(&self, name: &str, state: Option<&'static str>) {
        let mut states = self.states.lock().expect("states lock");
        let previous = match state {
            Some(state) => states.insert(name.to_string(), state),
            None => states.remove(name),
        };
        if previous == state {
            return;
        }
        let gauge = |s: &str| {
            self.namespaces
                .get_or_create(&StateLabels {
                    state: s.to_string(),
                })
                .clone()
        };
        if let Some(previous) = previous {
            gauge(previous).dec();
        }
        if let Some(state) = state {
            gauge(state).inc();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn namespace_states_move_between_gauges() {
        let m = Metrics::new();
        m.namespace_state("a", Some("synced"));
        m.namespace_state("b", Some("synced"));
        m.namespace_state("c", Some("conflict"));
        m.namespace_state("b", Some("failed"));
        m.namespace_state("b", Some("failed"));
        m.namespace_state("c", None);
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
