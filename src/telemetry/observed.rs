//! What a configuration (the flag-configured secret, or one EcrPullSecret) observed of itself:
//! each namespace's state, token health per identity, the latest problem. Its status is
//! computed from this; the Prometheus gauges are fed from the same recordings (`Metrics`) but
//! never read back.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::core::meta::{NAMESPACE_STATES, state_index};

/// Something a human must fix, for a resource's status: a condition reason and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
    pub(crate) at: std::time::SystemTime,
}

/// The latest token fetch outcome of one identity.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TokenHealth {
    pub(crate) expires_at: Option<std::time::SystemTime>,
    pub(crate) last_refresh: Option<std::time::SystemTime>,
    pub(crate) consecutive_failures: u32,
    /// The last error, while the latest fetch failed (AWS's message; never a credential).
    pub(crate) last_error: Option<String>,
}

#[derive(Default)]
pub struct Observed {
    /// Namespaces per state (in the order of [`NAMESPACE_STATES`]). Each namespace's own state
    /// is kept with the rest of its entry, in the pipeline's Secret cache.
    states: Mutex<[u32; NAMESPACE_STATES.len()]>,
    /// Per identity (region or ecr-public).
    tokens: Mutex<BTreeMap<String, TokenHealth>>,
    /// The latest problem not shown by the counts (a refused watch or write, credentials that
    /// cannot be loaded), and when the configuration last made progress.
    problem: Mutex<(Option<Problem>, Option<SystemTime>)>,
    /// Why the credentials Secret cannot be followed, while that lasts: unlike `problem`,
    /// progress does not hide it (tokens still come with the keys read before).
    credentials: Mutex<Option<Problem>>,
}

impl Observed {
    /// Records a problem (reason is a condition reason such as `Forbidden`).
    pub(crate) fn problem(&self, reason: &'static str, message: String) {
        self.problem.lock().expect("problem lock").0 = Some(Problem {
            reason,
            message,
            at: SystemTime::now(),
        });
    }

    /// Sets (reason, message) or clears the credentials Secret's problem.
    pub(crate) fn credentials_problem(&self, problem: Option<(&'static str, String)>) {
        let mut current = self.credentials.lock().expect("credentials lock");
        let same = match (&*current, &problem) {
            (Some(c), Some((reason, message))) => c.reason == *reason && &c.message == message,
            _ => false,
        };
        if !same {
            *current = problem.map(|(reason, message)| Problem {
                reason,
                message,
                at: SystemTime::now(),
            });
        }
    }

    /// The credentials Secret's problem while it lasts, else the latest problem unless the
    /// configuration made progress (a token fetched, a namespace synced) after it.
    pub fn current_problem(&self) -> Option<Problem> {
        if let Some(problem) = self.credentials.lock().expect("credentials lock").clone() {
            return Some(problem);
        }
        let guard = self.problem.lock().expect("problem lock");
        match &guard.0 {
            Some(problem) if guard.1.is_none_or(|progress| progress <= problem.at) => {
                Some(problem.clone())
            }
            _ => None,
        }
    }

    fn progressed(&self) {
        self.problem.lock().expect("problem lock").1 = Some(SystemTime::now());
    }

    /// Token health per identity.
    pub(crate) fn token_health(&self) -> BTreeMap<String, TokenHealth> {
        self.tokens.lock().expect("tokens lock").clone()
    }

    /// Namespaces per state (`synced`, `failed`, `excluded`, `conflict`, `pending`, `expired`),
    /// those with none left out.
    pub(crate) fn state_counts(&self) -> BTreeMap<&'static str, u32> {
        let counts = self.states.lock().expect("states lock");
        NAMESPACE_STATES
            .iter()
            .zip(counts.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(state, n)| (*state, *n))
            .collect()
    }

    /// Forgets every namespace's state; returns how many were in each.
    pub(crate) fn forget_states(&self) -> BTreeMap<&'static str, u32> {
        let counts = self.state_counts();
        *self.states.lock().expect("states lock") = [0; NAMESPACE_STATES.len()];
        counts
    }

    /// Drops every identity's health; returns the identities.
    pub(crate) fn forget_tokens(&self) -> Vec<String> {
        std::mem::take(&mut *self.tokens.lock().expect("tokens lock"))
            .into_keys()
            .collect()
    }

    pub(crate) fn token_fetched(&self, identity: &str, expires_at: SystemTime, now: SystemTime) {
        self.progressed();
        self.tokens.lock().expect("tokens lock").insert(
            identity.to_string(),
            TokenHealth {
                expires_at: Some(expires_at),
                last_refresh: Some(now),
                consecutive_failures: 0,
                last_error: None,
            },
        );
    }

    pub(crate) fn token_fetch_failed(&self, identity: &str, message: &str) {
        let mut tokens = self.tokens.lock().expect("tokens lock");
        let health = tokens.entry(identity.to_string()).or_default();
        health.consecutive_failures += 1;
        health.last_error = Some(message.to_string());
    }

    /// A namespace moved from state `from` to `to` (`None`: none, new or forgotten).
    pub(crate) fn namespace_moved(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if matches!(to, Some("synced" | "excluded")) {
            self.progressed();
        }
        let mut counts = self.states.lock().expect("states lock");
        if let Some(i) = from.and_then(state_index) {
            let count = &mut counts[usize::from(i)];
            *count = count.saturating_sub(1);
        }
        if let Some(i) = to.and_then(state_index) {
            counts[usize::from(i)] += 1;
        }
    }
}
