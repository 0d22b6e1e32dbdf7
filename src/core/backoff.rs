//! Exponential backoff with jitter, and the per-namespace gate that applies it to reconciles.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Delays that double from `initial` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exponential {
    pub initial: Duration,
    pub max: Duration,
}

impl Exponential {
    /// Delay before retry number `attempt` (0-based), `random` in `[0, 1)`: a random point in the
    /// upper half of the exponential ceiling, so delays spread out yet still grow visibly.
    pub(crate) fn delay(&self, attempt: u32, random: f64) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(30)))
            .min(self.max);
        ceiling.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0))
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    retry_at: Instant,
}

/// Per-key backoff for reconciles (kube-runtime has none per key). A failure pushes the key's
/// next attempt out exponentially; a trigger that arrives before then (a watch event, a bulk
/// re-enqueue) is answered with "wait" and neither resets nor inflates the backoff.
#[derive(Debug)]
pub struct Gate<K> {
    policy: Exponential,
    entries: Mutex<HashMap<K, Entry>>,
}

impl<K: Eq + Hash + Clone> Gate<K> {
    pub fn new(policy: Exponential) -> Gate<K> {
        Gate {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` while `key` is backing off.
    pub(crate) fn check(&self, key: &K, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().expect("gate lock");
        let entry = entries.get(key)?;
        (entry.retry_at > now).then(|| entry.retry_at - now)
    }

    /// Records a failure; returns how long to wait before the next attempt.
    pub(crate) fn failed(&self, key: &K, now: Instant, random: f64) -> Duration {
        let mut entries = self.entries.lock().expect("gate lock");
        let failures = entries.get(key).map_or(0, |e| e.failures);
        let delay = self.policy.delay(failures, random);
        entries.insert(
            key.clone(),
            Entry {
                failures: failures.saturating_add(1),
                retry_at: now + delay,
            },
        );
        delay
    }

    /// A success ends the backoff.
    pub(crate) fn succeeded(&self, key: &K) {
        self.entries.lock().expect("gate lock").remove(key);
    }

    /// Consecutive failures recorded for `key`.
    pub(crate) fn failures(&self, key: &K) -> u32 {
        self.entries
            .lock()
            .expect("gate lock")
            .get(key)
            .map_or(0, |e| e.failures)
    }

    /// Keys currently backing off or failed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().expect("gate lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn exponential_table() {
        let e = Exponential {
            initial: S(1),
            max: S(300),
        };
        // (attempt, random, expected)
        let cases = [
            (0, 1.0, S(1)),
            (0, 0.0, Duration::from_millis(500)),
            (1, 1.0, S(2)),
            (3, 1.0, S(8)),
            (8, 1.0, S(256)),
            (9, 1.0, S(300)),
            (9, 0.0, S(150)),
            (u32::MAX, 1.0, S(300)),
        ];
        for (attempt, random, expected) in cases {
            assert_eq!(
                e.delay(attempt, random),
                expected,
                "attempt {attempt} random {random}"
            );
        }
    }

    /// Each step: (seconds since start, event, expected result).
    #[derive(Debug)]
    enum Step {
        /// A trigger: expected wait, None = may run.
        Check(Option<u64>),
        /// A failed attempt: expected delay (random = 1.0, so the full ceiling).
        Fail(u64),
        Succeed,
    }

    #[test]
    fn gate_table() {
        use Step::*;
        let start = Instant::now();
        let gate: Gate<&str> = Gate::new(Exponential {
            initial: S(1),
            max: S(8),
        });
        let steps = [
            (0, Check(None)),
            (0, Fail(1)),
            (0, Check(Some(1))),
            // Spurious triggers during the wait neither reset nor inflate.
            (0, Check(Some(1))),
            (0, Check(Some(1))),
            (1, Check(None)),
            (1, Fail(2)),
            (2, Check(Some(1))),
            (3, Check(None)),
            (3, Fail(4)),
            (7, Fail(8)),
            (15, Fail(8)), // capped
            (23, Check(None)),
            (23, Succeed),
            (23, Check(None)),
            (23, Fail(1)), // a success starts over
        ];
        for (i, (at, step)) in steps.into_iter().enumerate() {
            let now = start + S(at);
            match step {
                Check(expected) => assert_eq!(gate.check(&"ns", now), expected.map(S), "step {i}"),
                Fail(expected) => assert_eq!(gate.failed(&"ns", now, 1.0), S(expected), "step {i}"),
                Succeed => gate.succeeded(&"ns"),
            }
        }
        // Keys are independent.
        assert_eq!(gate.check(&"other", start + S(23)), None);
        assert_eq!(gate.failures(&"ns"), 1);
        assert_eq!(gate.len(), 1);
    }
}
