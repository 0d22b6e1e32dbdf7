//! Leader election on a coordination.k8s.io/v1 Lease, with fencing.
//!
//! Writes use optimistic concurrency (replace with the resourceVersion read; a 409 means someone
//! else wrote). Expiry of another holder's lease is judged on our monotonic clock since we last
//! saw the lease change, never by comparing wall clocks across machines. A leader that cannot
//! renew within the renew deadline (shorter than the lease duration) steps down before anyone
//! else may take over. The leader's renewals also carry what it publishes on the Lease: the
//! flag-configured secret's Ready verdict (`core::readiness`), at no extra request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::core::api_failure::ApiFailure;
use crate::core::readiness::READY_ANNOTATION;
use crate::telemetry::metrics::Metrics;

/// Whether this replica may write now: it holds the lease and renewed it less than the renew
/// deadline ago, by the monotonic clock. Checked right before every write, not only in the renew
/// loop: a leader that was paused (SIGSTOP, a frozen VM, a stalled node) past its deadline must
/// not send the writes it had queued before noticing, on resume, that another replica leads.
#[derive(Debug, Clone)]
pub struct Fence(Option<Arc<FenceState>>);

#[derive(Debug)]
struct FenceState {
    /// When the last successful renew was sent; `None` while not leading.
    renewed: Mutex<Option<Instant>>,
    deadline: Duration,
}

impl Fence {
    /// A fence for a replica that contends with `renew_deadline`.
    pub fn new(renew_deadline: Duration) -> Fence {
        Fence(Some(Arc::new(FenceState {
            renewed: Mutex::new(None),
            deadline: renew_deadline,
        })))
    }

    /// For one-shot commands that do not lead (`cleanup`): always open.
    pub fn open() -> Fence {
        Fence(None)
    }

    fn renewed(&self, at: Instant) {
        if let Some(state) = &self.0 {
            *state.renewed.lock().expect("fence lock") = Some(at);
        }
    }

    fn close(&self) {
        if let Some(state) = &self.0 {
            *state.renewed.lock().expect("fence lock") = None;
        }
    }

    /// Ok while the lease is ours and fresh; call it immediately before sending a write.
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        let Some(state) = &self.0 else { return Ok(()) };
        let renewed = *state.renewed.lock().expect("fence lock");
        match renewed {
            Some(at) if at.elapsed() < state.deadline => Ok(()),
            Some(at) => Err(crate::Error::LostLeadership(format!(
                "the lease was last renewed {} ms ago (renew deadline {} ms); not writing",
                at.elapsed().as_millis(),
                state.deadline.as_millis()
            ))),
            None => Err(crate::Error::LostLeadership(
                "not holding the lease; not writing".into(),
            )),
        }
    }
}

/// Election settings.
#[derive(Debug, Clone)]
pub(crate) struct LeaseConfig {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) identity: String,
    pub(crate) lease_duration: Duration,
    pub(crate) renew_deadline: Duration,
    pub(crate) retry_period: Duration,
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// No Lease yet: create it holding it.
    Create(LeaseSpec),
    /// Replace the Lease (renew ours, or take over a released or expired one).
    Update(LeaseSpec),
    /// Someone else holds a live lease.
    Wait,
}

fn holder(spec: Option<&LeaseSpec>) -> Option<&str> {
    spec.and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// The next step for `identity`, given the Lease as read and whether it has expired by our
/// monotonic clock. Pure, so the protocol is tested with fixed timestamps.
pub(crate) fn next_step(
    current: Option<&LeaseSpec>,
    identity: &str,
    expired: bool,
    now: Timestamp,
    duration: Duration,
) -> Step {
    let held = |acquire: Option<MicroTime>, transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_string()),
        acquire_time: acquire.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(whole_seconds(duration)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(spec) = current else {
        return Step::Create(held(None, 0));
    };
    let transitions = spec.lease_transitions.unwrap_or(0);
    match holder(Some(spec)) {
        Some(h) if h == identity => Step::Update(held(spec.acquire_time.clone(), transitions)),
        Some(_) if !expired => Step::Wait,
        // Released (no holder) or expired: take it over.
        _ => Step::Update(held(None, transitions + 1)),
    }
}

/// A lease duration as the Lease stores it: whole seconds, rounded up (rounding down would let
/// others take over before our renew deadline has passed), at least 1.
fn whole_seconds(duration: Duration) -> i32 {
    let seconds = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
}

/// The spec that hands the lease over at once: no holder, a 1 s duration.
pub(crate) fn released(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(1),
        ..current.clone()
    }
}

/// What we last saw of someone else's lease, and when (monotonic).
#[derive(Debug, Clone)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    at: Instant,
    /// Its lease duration.
    duration: Duration,
}

pub(crate) struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
    /// The Ready verdict this replica publishes on the Lease while it holds it
    /// ([`READY_ANNOTATION`]); `None` removes a previous holder's.
    ready: Option<watch::Receiver<Option<String>>>,
}

/// The result of one try.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// We hold the lease (acquired or renewed).
    Held,
    /// Someone else does.
    NotHeld,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            ready: None,
        }
    }

    /// Publishes `ready`'s current value on the Lease with every acquisition and renewal: in
    /// the same write, so it costs no request.
    pub(crate) fn publishing(mut self, ready: watch::Receiver<Option<String>>) -> Elector {
        self.ready = Some(ready);
        self
    }

    /// Sets or removes our annotation on the Lease we are about to write.
    fn annotate(&self, meta: &mut ObjectMeta) {
        let Some(ready) = &self.ready else {
            return;
        };
        match ready.borrow().clone() {
            Some(value) => {
                meta.annotations
                    .get_or_insert_default()
                    .insert(READY_ANNOTATION.to_string(), value);
            }
            None => {
                if let Some(annotations) = meta.annotations.as_mut() {
                    annotations.remove(READY_ANNOTATION);
                }
            }
        }
    }

    pub(crate) fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Events of our Lease (watched by name): followers re-check at once when it changes, so a
    /// released lease is taken over in milliseconds rather than at the next retry.
    fn changes(&self) -> impl futures::Stream<Item = ()> + Send + use<> {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.config.name));
        watcher(self.api.clone(), config)
            // The watcher emits `Init` before every list attempt; let through, it would reset
            // the backoff each time and a failing list would be retried every second forever.
            .try_filter(|event| std::future::ready(!matches!(event, watcher::Event::Init)))
            .default_backoff()
            .filter_map(|event| {
                std::future::ready(
                    matches!(
                        event,
                        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))
                    )
                    .then_some(()),
                )
            })
    }

    /// Reads the Lease and acquires or renews it if we may.
    pub(crate) async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = Instant::now();
        let lease = self.api.get_opt(&self.config.name).await?;
        let spec = lease.as_ref().and_then(|l| l.spec.as_ref());
        let expired = self.expired(lease.as_ref(), now);
        match next_step(
            spec,
            &self.config.identity,
            expired,
            Timestamp::now(),
            self.config.lease_duration,
        ) {
            Step::Wait => Ok(Attempt::NotHeld),
            Step::Create(spec) => {
                let mut lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.annotate(&mut lease.metadata);
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Attempt::Held),
                    Err(e) if ApiFailure::of(&e) == ApiFailure::Conflict => Ok(Attempt::NotHeld),
                    Err(e) => Err(e),
                }
            }
            Step::Update(spec) => {
                let mut lease = lease.expect("Update implies a Lease");
                lease.spec = Some(spec);
                self.annotate(&mut lease.metadata);
                // replace carries the resourceVersion read: a concurrent writer makes this a 409.
                match self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(Attempt::Held),
                    Err(e) if ApiFailure::of(&e) == ApiFailure::Conflict => Ok(Attempt::NotHeld),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Whether someone else's lease has gone unrenewed for its duration, by our clock.
    fn expired(&mut self, lease: Option<&Lease>, now: Instant) -> bool {
        let Some(lease) = lease else {
            self.observed = None;
            return false;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        let seen = Observed {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.clone(),
            resource_version: lease.resource_version(),
            at: now,
            duration,
        };
        let changed = match &self.observed {
            Some(o) => {
                o.holder != seen.holder
                    || o.renew_time != seen.renew_time
                    || o.resource_version != seen.resource_version
            }
            None => true,
        };
        if changed {
            self.observed = Some(seen);
            return false;
        }
        self.observed
            .as_ref()
            .is_some_and(|o| now.duration_since(o.at) >= o.duration)
    }

    /// When someone else's lease, as last seen, expires by our clock if nobody renews it.
    fn expires_at(&self) -> Option<Instant> {
        self.observed.as_ref().map(|o| o.at + o.duration)
    }

    /// Hands the lease over (on graceful shutdown), if we still hold it.
    pub(crate) async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_ref() else {
            return Ok(());
        };
        if holder(Some(spec)) != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(released(spec, Timestamp::now()));
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

/// A lease request refused for good (RBAC, a namespace that does not exist or is terminating):
/// what to fix. `None` for what passes by itself (timeouts, 5xx, conflicts).
fn lease_problem(config: &LeaseConfig, error: &kube::Error) -> Option<String> {
    let lease = format!("Lease {}/{}", config.namespace, config.name);
    let said = crate::k8s::client::api_message(error);
    match ApiFailure::of(error) {
        ApiFailure::Forbidden => Some(format!(
            "{lease} refused ({said}): grant get, list, watch and update on leases with resourceNames [{}], \
             and create on leases, in namespace {} (the shipped Role does)",
            config.name, config.namespace
        )),
        ApiFailure::NotFound => Some(format!(
            "{lease} cannot be created ({said}): namespace {} does not exist; create it or set \
             --lease-namespace to an existing one",
            config.namespace
        )),
        _ => None,
    }
}

fn clear_lease_problem(health: &crate::telemetry::health::Health) {
    let mut current = health.lease_problem.lock().expect("health lock");
    if current.take().is_some() {
        tracing::info!("the lease can be contended for again; ready");
    }
}

/// Runs the election until dropped, publishing leadership on `leading`. A leader that has not
/// renewed for the renew deadline publishes `false` and stops: the caller drops the leader's
/// work and exits.
pub(crate) async fn run(
    mut elector: Elector,
    leading: watch::Sender<bool>,
    fence: Fence,
    metrics: std::sync::Arc<Metrics>,
    health: std::sync::Arc<crate::telemetry::health::Health>,
) {
    // Whatever ends this loop (stepping down, being dropped) closes the fence.
    struct CloseOnDrop(Fence);
    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _closed = CloseOnDrop(fence.clone());
    let config = elector.config().clone();
    let mut changes = Box::pin(elector.changes());
    let mut last_renew: Option<Instant> = None;
    loop {
        let started = Instant::now();
        // A leader's call may take no longer than what is left of its renew deadline.
        let budget = match last_renew {
            Some(at) => config
                .renew_deadline
                .saturating_sub(started.duration_since(at)),
            None => config.renew_deadline,
        };
        let attempt = tokio::time::timeout(budget, elector.try_acquire_or_renew()).await;
        let leader = *leading.borrow();
        match attempt {
            Ok(Ok(Attempt::Held)) => {
                clear_lease_problem(&health);
                last_renew = Some(started);
                // From when the request was sent: the lease's renewTime is no earlier.
                fence.renewed(started);
                if !leader {
                    tracing::info!(
                        identity = config.identity,
                        lease = config.name,
                        "acquired leadership"
                    );
                    metrics.leadership_acquired();
                    leading.send_replace(true);
                }
            }
            Ok(Ok(Attempt::NotHeld)) if leader => {
                fence.close();
                tracing::error!(
                    identity = config.identity,
                    "another replica took the lease; stepping down"
                );
                metrics.leadership_lost();
                leading.send_replace(false);
                return;
            }
            Ok(Ok(Attempt::NotHeld)) => clear_lease_problem(&health),
            Ok(Err(error)) => match lease_problem(&config, &error) {
                Some(problem) => {
                    let mut current = health.lease_problem.lock().expect("health lock");
                    if current.as_deref() != Some(problem.as_str()) {
                        tracing::error!(problem, "cannot contend for the lease; not ready");
                    }
                    *current = Some(problem);
                }
                None => tracing::warn!(error = %error, lease = config.name, "lease request failed"),
            },
            Err(_) => tracing::warn!(lease = config.name, "lease request timed out"),
        }
        if let Some(at) = last_renew
            && *leading.borrow()
            && Instant::now().duration_since(at) >= config.renew_deadline
        {
            fence.close();
            tracing::error!(
                identity = config.identity,
                renew_deadline = ?config.renew_deadline,
                "could not renew the lease within the renew deadline; stepping down"
            );
            metrics.leadership_lost();
            leading.send_replace(false);
            return;
        }
        if *leading.borrow() {
            tokio::time::sleep_until(started + config.retry_period).await;
        } else {
            // At the next retry, or the moment the lease we saw expires if that is sooner: a
            // follower takes over a dead leader's lease on time, not up to a retry period late.
            let next = started + config.retry_period;
            let wake = elector
                .expires_at()
                .map_or(next, |expiry| next.min(expiry + Duration::from_millis(1)));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = changes.next() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn spec(holder: Option<&str>, renewed: i64, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            acquire_time: Some(MicroTime(ts(0))),
            renew_time: Some(MicroTime(ts(renewed))),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn protocol_table() {
        let d = Duration::from_secs(15);
        let now = ts(100);
        // (lease as read, expired by our clock, expected holder after, transitions after) or Wait
        type Case = (Option<LeaseSpec>, bool, Option<(&'static str, i32)>);
        let cases: Vec<Case> = vec![
            (None, false, Some(("me", 0))),
            (Some(spec(Some("me"), 90, 3)), false, Some(("me", 3))),
            (Some(spec(Some("me"), 90, 3)), true, Some(("me", 3))),
            (Some(spec(Some("other"), 99, 3)), false, None),
            (Some(spec(Some("other"), 10, 3)), true, Some(("me", 4))),
            (Some(spec(None, 99, 3)), false, Some(("me", 4))),
            (Some(spec(Some(""), 99, 3)), false, Some(("me", 4))),
            // Any non-empty foreign holder is a holder, whitespace included.
            (Some(spec(Some(" "), 99, 3)), false, None),
        ];
        for (i, (current, expired, expected)) in cases.into_iter().enumerate() {
            let step = next_step(current.as_ref(), "me", expired, now, d);
            match (step, expected) {
                (Step::Wait, None) => {}
                (Step::Create(s) | Step::Update(s), Some((holder, transitions))) => {
                    assert_eq!(s.holder_identity.as_deref(), Some(holder), "case {i}");
                    assert_eq!(s.lease_transitions, Some(transitions), "case {i}");
                    assert_eq!(s.renew_time, Some(MicroTime(now)), "case {i}");
                    assert_eq!(s.lease_duration_seconds, Some(15), "case {i}");
                }
                (step, expected) => panic!("case {i}: {step:?} vs {expected:?}"),
            }
        }
        // Renewing keeps the acquire time; taking over sets a new one.
        let Step::Update(renewed) = next_step(Some(&spec(Some("me"), 90, 3)), "me", false, now, d)
        else {
            panic!()
        };
        assert_eq!(renewed.acquire_time, Some(MicroTime(ts(0))));
        let Step::Update(taken) = next_step(Some(&spec(Some("other"), 10, 3)), "me", true, now, d)
        else {
            panic!()
        };
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
    }

    /// A client that is never called, and a 15 s lease: for the elector's pure parts.
    fn offline() -> (Client, LeaseConfig) {
        let client =
            Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let config = LeaseConfig {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        (client, config)
    }

    /// The instant `run` sleeps until when it is before the next retry (`expires_at`) is the
    /// one at which the lease counts as expired: a follower waking then takes it over.
    #[tokio::test(start_paused = true)]
    async fn the_lease_seen_expires_a_lease_duration_after_it_was_seen() {
        let (client, config) = offline();
        let mut elector = Elector::new(client, config);
        let lease = Lease {
            spec: Some(spec(Some("other"), 90, 3)),
            ..Lease::default()
        };
        assert_eq!(elector.expires_at(), None);
        let seen = Instant::now();
        assert!(!elector.expired(Some(&lease), seen), "just seen");
        assert_eq!(elector.expires_at(), Some(seen + Duration::from_secs(15)));
        tokio::time::advance(Duration::from_millis(14_999)).await;
        assert!(!elector.expired(Some(&lease), Instant::now()));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(elector.expired(Some(&lease), Instant::now()));
    }

    /// What a replica publishes replaces any earlier holder's verdict, and nothing published
    /// removes it: a new leader never passes on its predecessor's word as its own.
    #[tokio::test]
    async fn the_published_verdict_replaces_the_previous_holders() {
        let (client, config) = offline();
        let (ready, published) = watch::channel(None);
        let elector = Elector::new(client.clone(), config.clone()).publishing(published);
        let theirs = || ObjectMeta {
            annotations: Some(
                [
                    (READY_ANNOTATION.to_string(), "theirs".to_string()),
                    ("other".to_string(), "kept".to_string()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        };
        let mut meta = theirs();
        elector.annotate(&mut meta);
        let annotations = meta.annotations.unwrap();
        assert_eq!(annotations.get(READY_ANNOTATION), None);
        assert_eq!(annotations["other"], "kept");
        ready.send_replace(Some("ours".into()));
        let mut meta = theirs();
        elector.annotate(&mut meta);
        assert_eq!(meta.annotations.unwrap()[READY_ANNOTATION], "ours");
        // An elector that publishes nothing (`hand_over`'s) leaves annotations alone.
        let mut meta = theirs();
        Elector::new(client, config).annotate(&mut meta);
        assert_eq!(meta, theirs());
    }

    #[tokio::test(start_paused = true)]
    async fn fence_opens_only_within_the_renew_deadline() {
        let fence = Fence::new(Duration::from_secs(10));
        assert!(fence.check().is_err(), "closed before the first renew");
        fence.renewed(Instant::now());
        assert!(fence.check().is_ok());
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(fence.check().is_ok());
        // A pause past the deadline (SIGSTOP): closed on resume, before the renew loop runs.
        tokio::time::advance(Duration::from_millis(1)).await;
        let err = fence.check().unwrap_err().to_string();
        assert!(err.contains("not writing"), "{err}");
        fence.renewed(Instant::now());
        fence.close();
        assert!(fence.check().is_err());
        assert!(Fence::open().check().is_ok());
    }

    #[test]
    fn lease_duration_is_written_rounded_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(15)), 15);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::MAX), i32::MAX);
    }

    #[test]
    fn release_hands_over_at_once() {
        let r = released(&spec(Some("me"), 90, 3), ts(100));
        assert_eq!(r.holder_identity, None);
        assert_eq!(r.lease_duration_seconds, Some(1));
        assert_eq!(r.lease_transitions, Some(3));
        let step = next_step(Some(&r), "other", false, ts(101), Duration::from_secs(15));
        assert!(
            matches!(&step, Step::Update(s) if s.holder_identity.as_deref() == Some("other")),
            "{step:?}"
        );
    }
}
