//! Kubernetes Events (events.k8s.io) about namespaces, deduplicated: a conflict that persists
//! produces one Event per window, not one per reconcile.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::time::Instant;

use crate::core::meta::FIELD_MANAGER;

/// The same (namespace, reason) is published at most once per window.
const WINDOW: Duration = Duration::from_secs(600);

pub struct Events {
    recorder: Recorder,
    recent: Mutex<HashMap<(String, &'static str), Instant>>,
}

impl Events {
    pub fn new(client: Client, instance: Option<String>) -> Events {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance,
        };
        Events {
            recorder: Recorder::new(client, reporter),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an event for (namespace, reason) is due now; records it if so.
    fn due(&self, namespace: &str, reason: &'static str, now: Instant) -> bool {
        let mut recent = self.recent.lock().expect("events lock");
        recent.retain(|_, at| now.duration_since(*at) < WINDOW);
        let key = (namespace.to_string(), reason);
        if recent.contains_key(&key) {
            return false;
        }
        recent.insert(key, now);
        true
    }

    /// A warning on the namespace. Publishing failures are logged, never fatal.
    pub(crate) async fn warn(
        &self,
        namespace: &str,
        reason: &'static str,
        action: &str,
        note: String,
    ) {
        if !self.due(namespace, reason, Instant::now()) {
            return;
        }
        // The Event lives in the namespace it is about, so `kubectl get events -n NS` shows it.
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Namespace".into()),
            name: Some(namespace.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &regarding).await {
            tracing::warn!(namespace, reason, error = %error, "could not publish an Event");
        }
    }

    /// An Event on `regarding` (a controller-level object such as the Lease): Warning or
    /// Normal, with the reason and note of a status condition.
    pub async fn report(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: "Sync".to_string(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(reason, error = %error, "could not publish an Event");
        }
    }

    /// Forget a namespace's history (it left the selection or was fixed).
    pub(crate) fn clear(&self, namespace: &str) {
        self.recent
            .lock()
            .expect("events lock")
            .retain(|(ns, _), _| ns != namespace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedup_window() {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let events = Events::new(Client::new(service, "default"), None);
        let t0 = Instant::now();
        assert!(events.due("a", "SecretConflict", t0));
        assert!(!events.due("a", "SecretConflict", t0 + Duration::from_secs(1)));
        assert!(events.due("a", "WriteFailed", t0));
        assert!(events.due("b", "SecretConflict", t0));
        assert!(events.due("a", "SecretConflict", t0 + WINDOW));
        events.clear("a");
        assert!(events.due("a", "SecretConflict", t0 + WINDOW));
    }
}
