//! Reconciling one namespace: make its pull secret (and ServiceAccount entries) match the
//! rendered config when selected, remove ours when not, and never touch a Secret we do not own.
//! Decisions are made from metadata-only caches, so a namespace already in sync costs no API call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, Preconditions,
};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::Error;
use crate::core::api_failure::ApiFailure;
use crate::core::backoff::Gate;
use crate::core::meta::{
    CREDENTIALS_ANNOTATION, DOCKER_CONFIG_KEY, DOCKER_CONFIG_TYPE, EXPIRES_ANNOTATION,
    FIELD_MANAGER, FINGERPRINT_ANNOTATION, ISSUED_ANNOTATION, MANAGED_LABEL, MANAGED_VALUE,
    OWNER_LABEL, REGISTRIES_ANNOTATION, ours, owner_labels,
};
use crate::core::render::{Rendered, fingerprint};
use crate::core::selection::{Decision, Selection};
use crate::core::service_accounts::Targets;
use crate::core::time::rfc3339;
use crate::k8s::client::{api_message, call};
use crate::k8s::events::Events;
use crate::k8s::secret_cache::{CachedSecret, Digest, SecretCache};
use crate::k8s::service_account;
use crate::telemetry::metrics::Metrics;

/// A limit on one pipeline's writes (secret applies and deletes, ServiceAccount patches:
/// `--write-qps`, `--write-burst`), in two classes. An urgent write (a Secret missing or not
/// ours to trust, a ServiceAccount entry missing: a pull there fails until it lands) takes the
/// next free slot before any refresh of a Secret that still works, so a new namespace does not
/// wait behind a rotation of thousands.
pub struct WriteLimiter {
    bucket: DefaultDirectRateLimiter,
    /// Refreshes take turns here: at most one of them competes with urgent writes for a slot.
    refresh_turn: tokio::sync::Mutex<()>,
    /// Urgent writes waiting for a slot; refreshes wait while there are any.
    urgent: AtomicUsize,
    urgent_done: Notify,
}

/// Counts an urgent write out, also when its wait is cancelled.
struct UrgentDone<'a>(&'a WriteLimiter);

impl Drop for UrgentDone<'_> {
    fn drop(&mut self) {
        self.0.urgent.fetch_sub(1, Ordering::SeqCst);
        self.0.urgent_done.notify_waiters();
    }
}

impl WriteLimiter {
    pub fn new(qps: u32, burst: u32) -> WriteLimiter {
        let qps = std::num::NonZeroU32::new(qps.max(1)).expect("non-zero");
        let burst = std::num::NonZeroU32::new(burst.max(1)).expect("non-zero");
        WriteLimiter {
            bucket: RateLimiter::direct(Quota::per_second(qps).allow_burst(burst)),
            refresh_turn: tokio::sync::Mutex::new(()),
            urgent: AtomicUsize::new(0),
            urgent_done: Notify::new(),
        }
    }

    /// Waits for a write slot: an urgent write before every refresh waiting.
    pub async fn acquire(&self, urgent: bool) {
        if urgent {
            self.urgent.fetch_add(1, Ordering::SeqCst);
            let _done = UrgentDone(self);
            self.bucket.until_ready().await;
            return;
        }
        let _turn = self.refresh_turn.lock().await;
        loop {
            let done = self.urgent_done.notified();
            tokio::pin!(done);
            // Registered before the check: a notification in between is not lost.
            done.as_mut().enable();
            if self.urgent.load(Ordering::SeqCst) > 0 {
                done.await;
                continue;
            }
            match self.bucket.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.bucket.clock().now());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// A bound on the API requests reconciles have in flight across every pipeline of the
/// controller (`--concurrency`). Each request in flight holds an HTTP/1.1 connection with its
/// buffers (about 35 KiB): with a bound per pipeline only, 20 EcrPullSecrets with 16 workers
/// each held 320 of them during a rotation. The write limiters are per pipeline and are waited
/// for before a request takes a permit.
#[derive(Clone)]
pub struct Requests(Arc<tokio::sync::Semaphore>);

impl Requests {
    pub fn new(in_flight: u16) -> Requests {
        Requests(Arc::new(tokio::sync::Semaphore::new(usize::from(
            in_flight.max(1),
        ))))
    }

    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.0
            .acquire()
            .await
            .expect("the request semaphore is never closed")
    }
}

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub secret_name: String,
    /// The EcrPullSecret this configuration is (`None`: the flag-configured controller). Its
    /// name is on every Secret written; another owner's Secret is never touched.
    pub owner: Option<String>,
    pub selection: Selection,
    /// The config to write, `None` until every identity has its first token.
    pub desired: watch::Receiver<Option<Arc<Rendered>>>,
    pub api_timeout: Duration,
    /// Every Secret named `secret_name` (field-selected watch), reduced to what we read.
    pub secrets: SecretCache,
    /// ServiceAccounts to patch, and the cache of ServiceAccounts, when enabled.
    pub service_accounts: Option<(Targets, Store<ServiceAccount>)>,
    /// Take over a same-named Secret that lacks our label.
    pub adopt_existing: bool,
    pub limiter: WriteLimiter,
    /// API requests of reconciles in flight, shared by every pipeline (see [`Requests`]).
    pub requests: Requests,
    /// Per-namespace backoff, keyed by namespace UID.
    pub gate: Gate<String>,
    /// Closed unless the lease was renewed within the renew deadline: checked before each write.
    pub fence: crate::k8s::leader::Fence,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    /// How far the Secret (and ServiceAccount) caches are. A watch channel, because
    /// `Store::wait_until_ready` wakes only one of several waiters.
    pub caches_ready: watch::Receiver<Caches>,
    /// Namespaces being reconciled: the fast lane and the queue never work on one at once.
    pub in_flight: InFlight,
}

/// Namespaces a reconcile is working on. kube-runtime's queue never runs two reconciles of a
/// namespace at once, but the fast lane runs beside it: both could write the same namespace.
#[derive(Default)]
pub struct InFlight(std::sync::Mutex<std::collections::HashSet<Arc<str>>>);

/// Marks a namespace in flight until dropped.
struct InFlightGuard<'a>(&'a InFlight, Arc<str>);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.0.lock().expect("in-flight lock").remove(&self.1);
    }
}

impl InFlight {
    /// `None` while another reconcile of `namespace` runs.
    fn enter(&self, namespace: &str) -> Option<InFlightGuard<'_>> {
        // Not interned: the name may be of a namespace already gone.
        let name: Arc<str> = Arc::from(namespace);
        let entered = self.0.lock().expect("in-flight lock").insert(name.clone());
        entered.then_some(InFlightGuard(self, name))
    }
}

/// The caches a reconcile decides from, as a new leader brings them up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caches {
    Listing,
    /// Every cache has its first full list: a namespace without our Secret can be written.
    Listed,
    /// And our Secrets' data was checked once (`verify_all`): the others can be decided
    /// without a read each.
    Verified,
}

/// The outcome of one reconcile, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    NotSelected,
    /// Not selected any more: our Secret (and ServiceAccount entries) removed.
    Removed,
    NoTokenYet,
    /// A Secret with our name exists without our label: left alone.
    Conflict,
    UpToDate,
    Written,
    /// Written or up to date, but with a token that has expired (AWS failing for longer than
    /// the token lives): pulls fail until the next refresh.
    Expired,
}

/// Whether a write of `rendered` over `cached` goes before refreshes at the write limiter.
/// Only a refresh is not: our intact Secret holding another config whose token has not expired
/// yet. Everything else means pulls fail there until the write lands: no Secret (a new
/// namespace, or ours deleted), someone else's, one edited by another field manager, one whose
/// data differs from its fingerprint (it names `rendered` and is still written), one whose token
/// has expired or whose expiry cannot be read.
pub(crate) fn urgent(cached: Option<&CachedSecret>, rendered: &Rendered, now: SystemTime) -> bool {
    let refresh_only = cached.is_some_and(|c| {
        c.managed
            && !c.edited_elsewhere
            && !c.names_config(&rendered.fingerprint)
            && c.expires_at.is_some_and(|e| e > now)
    });
    !refresh_only
}

/// The Secret we want in `namespace`.
pub fn desired_secret(
    name: &str,
    namespace: &str,
    rendered: &Rendered,
    owner: Option<&str>,
) -> Secret {
    let mut labels = owner_labels(owner);
    labels.insert(MANAGED_LABEL.to_string(), MANAGED_VALUE.to_string());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (
                    FINGERPRINT_ANNOTATION.to_string(),
                    rendered.fingerprint.clone(),
                ),
                (EXPIRES_ANNOTATION.to_string(), rfc3339(rendered.expires_at)),
                (REGISTRIES_ANNOTATION.to_string(), rendered.hosts.join(",")),
                (ISSUED_ANNOTATION.to_string(), rendered.issued.clone()),
                (
                    CREDENTIALS_ANNOTATION.to_string(),
                    rendered.credentials.clone(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some(DOCKER_CONFIG_TYPE.to_string()),
        data: Some(BTreeMap::from([(
            DOCKER_CONFIG_KEY.to_string(),
            ByteString(rendered.config.clone()),
        )])),
        ..Secret::default()
    }
}

impl Context {
    /// Brings namespace `ns` in line with the selection and the desired config.
    pub async fn reconcile_namespace(
        &self,
        ns: &PartialObjectMeta<Namespace>,
    ) -> Result<Outcome, Error> {
        let namespace = ns.name_any();
        let decision = self.selection.decide(
            &namespace,
            ns.labels(),
            ns.annotations(),
            ns.metadata.deletion_timestamp.is_some(),
        );
        match decision {
            // Namespace deletion removes everything in it; writing or deleting would only race.
            Decision::Terminating => {
                self.secrets.distrust(&namespace);
                Ok(Outcome::NotSelected)
            }
            Decision::NotSelected(_) => self.deselect(&namespace).await,
            Decision::Selected => self.sync(&namespace).await,
        }
    }

    /// Waits for the write rate limiter (see [`WriteLimiter`] for `urgent`), recording how long.
    async fn write_slot(&self, urgent: bool) {
        let started = Instant::now();
        self.limiter.acquire(urgent).await;
        self.metrics.limiter_waited(started.elapsed());
    }

    fn cached_secret(&self, namespace: &str) -> Option<CachedSecret> {
        self.secrets.get(namespace)
    }

    async fn sync(&self, namespace: &str) -> Result<Outcome, Error> {
        let Some(rendered) = self.desired.borrow().clone() else {
            return Ok(Outcome::NoTokenYet);
        };
        let cached = self.cached_secret(namespace);
        let urgent = urgent(cached.as_ref(), &rendered, SystemTime::now());
        let outcome = match cached {
            Some(existing) if !existing.managed && !self.adopt_existing => {
                tracing::warn!(
                    namespace,
                    secret = self.secret_name,
                    "a Secret with our name exists without label {MANAGED_LABEL}={MANAGED_VALUE}; leaving it untouched"
                );
                self.events
                    .warn(
                        namespace,
                        "SecretConflict",
                        "Skip",
                        format!(
                            "Secret {} exists and is not ours (no label {MANAGED_LABEL}={MANAGED_VALUE}, or another \
                             EcrPullSecret's {} label); it was left untouched. Delete it, choose another secret name, \
                             or adopt it (--adopt-existing, spec.adoptExisting).",
                            self.secret_name,
                            OWNER_LABEL
                        ),
                    )
                    .await;
                return Ok(Outcome::Conflict);
            }
            Some(existing)
                if existing.managed
                    && existing.names_config(&rendered.fingerprint)
                    && !self.drifted(namespace, &existing, &rendered).await? =>
            {
                Outcome::UpToDate
            }
            _ => {
                self.apply(namespace, &rendered, urgent).await?;
                Outcome::Written
            }
        };
        self.service_account_entries(namespace, true).await?;
        if rendered.expires_at <= SystemTime::now() {
            // Counted as expired wherever it is; said in an Event only where we write it (a
            // new namespace, a repair): every namespace holds it once the token has expired.
            if outcome != Outcome::Written {
                return Ok(Outcome::Expired);
            }
            // AWS has been failing since before the last good token expired. The expired token
            // stays written (the Secret and ServiceAccount entries are in place, so recovery is
            // one write per namespace), but nobody may take it for a working one.
            tracing::warn!(
                namespace,
                secret = self.secret_name,
                expired_at = %rfc3339(rendered.expires_at),
                "the pull secret holds an expired token: pulls fail until AWS answers again"
            );
            self.events
                .warn(
                    namespace,
                    "TokenExpired",
                    "Sync",
                    format!(
                        "The ECR token in Secret {} expired at {}: refreshing it has been failing (see the \
                         controller's log and the EcrPullSecretsTokenRefreshFailing alert); it is replaced as \
                         soon as AWS answers again.",
                        self.secret_name,
                        rfc3339(rendered.expires_at)
                    ),
                )
                .await;
            return Ok(Outcome::Expired);
        }
        self.events.clear(namespace);
        Ok(outcome)
    }

    /// Whether the data of a Secret whose metadata says "up to date" differs from it: edited by
    /// another field manager, or a version we neither wrote nor verified (written by someone
    /// else, or deleted and recreated) whose data does not hash to the fingerprint.
    async fn drifted(
        &self,
        namespace: &str,
        cached: &CachedSecret,
        rendered: &Arc<Rendered>,
    ) -> Result<bool, Error> {
        if cached.edited_elsewhere {
            tracing::info!(
                namespace,
                "pull secret data was edited by another field manager; restoring"
            );
            return Ok(true);
        }
        match self.secrets.trusted(namespace, cached) {
            true => Ok(false),
            false => {
                // Not a version we know: compare the data itself, once.
                let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                let Some(full) = self
                    .bounded("read", namespace, api.get_opt(&self.secret_name))
                    .await?
                else {
                    return Ok(true);
                };
                let data = full.data.as_ref().and_then(|d| d.get(DOCKER_CONFIG_KEY));
                let intact = data.is_some_and(|d| fingerprint(&d.0) == rendered.fingerprint);
                if intact {
                    if let Some(rv) = full.metadata.resource_version.as_deref() {
                        self.secrets.verified(namespace, Digest::of(rv), false);
                    }
                } else {
                    tracing::info!(
                        namespace,
                        "pull secret data differs from what we wrote; restoring"
                    );
                }
                Ok(!intact)
            }
        }
    }

    /// Reads every Secret with our name (page by page, never kept) and records the versions
    /// whose data hashes to their fingerprint, so that reconciles trust them without a read;
    /// any other version of ours is read and checked by the reconcile that meets it. Run when
    /// leading starts and before each periodic resync: it catches data changed behind metadata
    /// that looks like ours. Returns (verified, mismatched).
    pub async fn verify_all(&self) -> Result<(usize, usize), Error> {
        let api: Api<Secret> = Api::all(self.client.clone());
        let mut params = ListParams::default()
            .fields(&format!("metadata.name={}", self.secret_name))
            .labels(&format!("{MANAGED_LABEL}={MANAGED_VALUE}"))
            .limit(500);
        let (mut verified, mut mismatched) = (0, 0);
        loop {
            let permit = self.requests.permit().await;
            let page = call(
                || format!("listing Secrets {} to verify their data", self.secret_name),
                self.api_timeout,
                "",
                api.list(&params),
            )
            .await?;
            drop(permit);
            for secret in &page.items {
                let Some(namespace) = secret.metadata.namespace.as_deref() else {
                    continue;
                };
                if !ours(&secret.metadata, self.owner.as_deref()) {
                    continue;
                }
                let annotated = secret.annotations().get(FINGERPRINT_ANNOTATION);
                let data = secret.data.as_ref().and_then(|d| d.get(DOCKER_CONFIG_KEY));
                let intact = data
                    .zip(annotated)
                    .is_some_and(|(d, f)| fingerprint(&d.0) == *f);
                if intact && let Some(rv) = secret.metadata.resource_version.as_deref() {
                    verified += 1;
                    self.secrets.verified(namespace, Digest::of(rv), true);
                } else if !intact {
                    mismatched += 1;
                    // Its next reconcile reads it again and restores it.
                    self.secrets.distrust(namespace);
                    tracing::info!(
                        namespace,
                        secret = self.secret_name,
                        "pull secret data does not match its fingerprint; it will be restored"
                    );
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok((verified, mismatched)),
            }
        }
    }

    async fn apply(
        &self,
        namespace: &str,
        rendered: &Arc<Rendered>,
        urgent: bool,
    ) -> Result<(), Error> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = desired_secret(
            &self.secret_name,
            namespace,
            rendered,
            self.owner.as_deref(),
        );
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.write_slot(urgent).await;
        // After the limiter's wait, immediately before sending.
        self.fence.check()?;
        let written = self
            .bounded(
                "write",
                namespace,
                secrets.patch(&self.secret_name, &params, &Patch::Apply(&secret)),
            )
            .await?;
        self.metrics.write("apply");
        self.secrets.wrote(namespace, &written.metadata, rendered);
        if rendered.expires_at > SystemTime::now() {
            tracing::info!(
                namespace,
                secret = self.secret_name,
                registries = rendered.hosts.join(","),
                expires_at = %rfc3339(rendered.expires_at),
                "wrote pull secret"
            );
        }
        Ok(())
    }

    /// Removes our Secret (only one carrying our label) and our ServiceAccount entries.
    async fn deselect(&self, namespace: &str) -> Result<Outcome, Error> {
        let mut outcome = Outcome::NotSelected;
        if self.cached_secret(namespace).is_some_and(|s| s.managed) {
            // Entries first: a ServiceAccount never points at a Secret we already removed.
            self.service_account_entries(namespace, false).await?;
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            // The cache keeps no UID (it is kept per namespace per pipeline, and a removal is
            // rare): read the Secret's metadata, check it is still ours, and delete exactly that
            // Secret (the UID precondition), not a newer one.
            let current = self
                .bounded(
                    "read",
                    namespace,
                    secrets.get_metadata_opt(&self.secret_name),
                )
                .await?;
            let Some(current) = current.filter(|c| ours(&c.metadata, self.owner.as_deref())) else {
                // Gone, or not ours any more: nothing of ours to remove.
                self.secrets.distrust(namespace);
                self.events.clear(namespace);
                return Ok(Outcome::NotSelected);
            };
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: current.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            self.write_slot(false).await;
            self.fence.check()?;
            match self
                .bounded(
                    "delete",
                    namespace,
                    secrets.delete(&self.secret_name, &params),
                )
                .await
            {
                Ok(_) => {
                    self.metrics.write("delete");
                    tracing::info!(
                        namespace,
                        secret = self.secret_name,
                        "namespace left the selection; removed pull secret"
                    )
                }
                // Gone already, or not the Secret we meant to delete any more (UID precondition).
                Err(e)
                    if matches!(
                        e.api_failure(),
                        Some(ApiFailure::NotFound | ApiFailure::Conflict)
                    ) => {}
                Err(e) => return Err(e),
            }
            outcome = Outcome::Removed;
        } else {
            self.service_account_entries(namespace, false).await?;
        }
        self.secrets.distrust(namespace);
        self.events.clear(namespace);
        Ok(outcome)
    }

    /// Adds (`present`) or removes our entry on the target ServiceAccounts of `namespace`,
    /// deciding from the cache; only ServiceAccounts that need a change are written.
    async fn service_account_entries(&self, namespace: &str, present: bool) -> Result<(), Error> {
        let Some((targets, store)) = &self.service_accounts else {
            return Ok(());
        };
        let candidates: Vec<Arc<ServiceAccount>> = match targets {
            Targets::Names(names) => names
                .iter()
                .filter_map(|n| store.get(&ObjectRef::new(n).within(namespace)))
                .collect(),
            Targets::All => store
                .state()
                .into_iter()
                .filter(|sa| sa.namespace().as_deref() == Some(namespace))
                .collect(),
        };
        for sa in candidates {
            if service_account::with_entry(
                sa.image_pull_secrets.as_deref(),
                &self.secret_name,
                present,
            )
            .is_none()
            {
                continue;
            }
            // Adding an entry lets pods pull; removing one can wait.
            self.write_slot(present).await;
            let _permit = self.requests.permit().await;
            let wrote = service_account::set_entry(
                &self.client,
                (*sa).clone(),
                &self.secret_name,
                present,
                self.api_timeout,
                &self.fence,
            )
            .await?;
            if wrote {
                self.metrics.write("service_account");
            }
        }
        Ok(())
    }

    /// Every API call that must finish gets a deadline: kube-client has none by default.
    async fn bounded<T>(
        &self,
        what: &'static str,
        namespace: &str,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        let _permit = self.requests.permit().await;
        call(
            || format!("{what} Secret {namespace}/{}", self.secret_name),
            self.api_timeout,
            "",
            request,
        )
        .await
    }

    /// Records `namespace`'s state (`None` forgets it) in its entry, and the move in the counts.
    fn record_state(&self, namespace: &str, state: Option<&'static str>) {
        let previous = self.secrets.set_state(namespace, state);
        self.metrics.namespace_moved(previous, state);
    }

    /// A namespace that is gone or going: no state, no backoff entry, no record of our write.
    pub fn forget_namespace(&self, namespace: &str, uid: Option<&str>) {
        self.record_state(namespace, None);
        self.metrics.dequeued(namespace);
        if let Some(uid) = uid {
            self.gate.succeeded(&uid.to_string());
        }
        self.secrets.distrust(namespace);
    }

    /// Whether the caches can decide `namespace`: listed, and for a namespace that has a Secret
    /// with our name, verified. So a namespace created during a takeover is written without
    /// waiting for the read of every Secret's data.
    async fn caches_ready(&self, namespace: &str) -> bool {
        let mut state = self.caches_ready.clone();
        let ready = async {
            state
                .wait_for(|s| *s != Caches::Listing)
                .await
                .map(|_| ())?;
            if self.cached_secret(namespace).is_none() {
                return Ok(());
            }
            state.wait_for(|s| *s == Caches::Verified).await.map(|_| ())
        };
        matches!(
            tokio::time::timeout(self.api_timeout, ready).await,
            Ok(Ok(()))
        )
    }
}

/// kube-runtime entry point: the backoff gate around `reconcile_namespace`.
pub async fn reconcile(
    ns: Arc<PartialObjectMeta<Namespace>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    // A worker has it: no longer waiting, whatever happens next.
    ctx.metrics.dequeued(&ns.name_any());
    let key = ns.uid().unwrap_or_else(|| ns.name_any());
    if ns.metadata.deletion_timestamp.is_some() {
        // Before the backoff gate: a namespace deleted while failing must leave the failed
        // count now, not when its backoff would have let it retry.
        ctx.forget_namespace(&ns.name_any(), Some(&key));
        return Ok(Action::await_change());
    }
    let now = Instant::now();
    if let Some(wait) = ctx.gate.check(&key, now) {
        return Ok(Action::requeue(wait));
    }
    // Another reconcile (the fast lane's, or the queue's) is at it: look again after it.
    let Some(_in_flight) = ctx.in_flight.enter(&ns.name_any()) else {
        return Ok(Action::requeue(Duration::from_millis(200)));
    };
    // Decisions come from the caches: wait until each has its first full list.
    if !ctx.caches_ready(&ns.name_any()).await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let namespace = ns.name_any();
    let started = Instant::now();
    let result = ctx.reconcile_namespace(&ns).await;
    let outcome = match &result {
        Ok(Outcome::Written) => "written",
        Ok(Outcome::UpToDate) => "up_to_date",
        Ok(Outcome::Removed) => "removed",
        Ok(Outcome::NotSelected) => "not_selected",
        Ok(Outcome::Conflict) => "conflict",
        Ok(Outcome::NoTokenYet) => "pending",
        Ok(Outcome::Expired) => "expired",
        Err(_) => "error",
    };
    ctx.metrics.reconciled(outcome, started.elapsed());
    match result {
        Ok(outcome) => {
            let state = match outcome {
                _ if ns.metadata.deletion_timestamp.is_some() => None,
                Outcome::Written | Outcome::UpToDate => Some("synced"),
                Outcome::NotSelected | Outcome::Removed => Some("excluded"),
                Outcome::Conflict => Some("conflict"),
                Outcome::NoTokenYet => Some("pending"),
                Outcome::Expired => Some("expired"),
            };
            ctx.record_state(&namespace, state);
            ctx.gate.succeeded(&key);
            // Every change re-triggers through the watches, a new token through reconcile-all,
            // and the periodic resync in `run` re-checks everything: nothing to schedule per
            // namespace (which would hold an entry per namespace in the queue).
            Ok(Action::await_change())
        }
        Err(error) => {
            let delay = ctx.gate.failed(&key, now, rand::random());
            ctx.record_state(&namespace, Some("failed"));
            if let Error::Kube {
                failure: ApiFailure::Forbidden,
                source,
                context,
            } = &error
            {
                let refusal = api_message(source);
                // The admission policy refuses with 403 too; its fix is another list.
                let fix = if refusal.contains("ValidatingAdmissionPolicy") {
                    format!(
                        "add {} to the admission policy's names as well as to the RBAC resourceNames \
                         (Helm: customResources.secretNames; kustomize: deploy/admission-policy.yaml, \
                         docs/security.md#admission-policy-what-rbac-cannot-limit)",
                        ctx.secret_name
                    )
                } else {
                    format!(
                        "grant the controller the rights in docs/security.md (Secret {} must be in the \
                         secrets resourceNames; ServiceAccounts need get, list, watch, patch)",
                        ctx.secret_name
                    )
                };
                ctx.metrics.problem(
                    "Forbidden",
                    format!("{context} in namespace {namespace} was refused ({refusal}); {fix}"),
                );
            }
            tracing::warn!(
                namespace,
                error = %error,
                failures = ctx.gate.failures(&key),
                retry_in_ms = delay.as_millis() as u64,
                "reconcile failed; backing off"
            );
            ctx.events
                .warn(
                    &namespace,
                    "SyncFailed",
                    "Sync",
                    format!("Could not sync the pull secret: {error}"),
                )
                .await;
            Ok(Action::requeue(delay))
        }
    }
}

/// Unused in practice (`reconcile` never fails); kube-runtime requires one.
pub fn error_policy(
    _ns: Arc<PartialObjectMeta<Namespace>>,
    _error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::meta::{OPT_OUT_ANNOTATION, slim_namespace};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use std::sync::Mutex;

    /// Refreshes keep the limiter busy (a slot every 50 ms); an urgent write arriving then
    /// takes the next slot: at most the refresh already taking one goes before it.
    #[tokio::test]
    async fn an_urgent_write_takes_the_next_slot_before_waiting_refreshes() {
        for round in 0..5 {
            let limiter = Arc::new(WriteLimiter::new(20, 1));
            let grants = Arc::new(Mutex::new(0usize));
            let mut refreshes = Vec::new();
            for _ in 0..8 {
                let (limiter, grants) = (limiter.clone(), grants.clone());
                refreshes.push(tokio::spawn(async move {
                    loop {
                        limiter.acquire(false).await;
                        *grants.lock().unwrap() += 1;
                    }
                }));
            }
            while *grants.lock().unwrap() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let before = *grants.lock().unwrap();
            limiter.acquire(true).await;
            let went_first = *grants.lock().unwrap() - before;
            for refresh in refreshes {
                refresh.abort();
            }
            assert!(
                went_first <= 1,
                "round {round}: {went_first} refreshes went before the urgent write"
            );
        }
    }

    #[test]
    fn only_a_refresh_of_a_working_secret_waits_for_urgent_writes() {
        use crate::k8s::secret_cache::Digest;
        let now = SystemTime::now();
        let later = now + Duration::from_secs(3600);
        let rendered = Rendered {
            config: Vec::new(),
            fingerprint: "new".into(),
            hosts: Vec::new(),
            expires_at: later + Duration::from_secs(3600),
            issued: String::new(),
            credentials: String::new(),
        };
        let ours = CachedSecret {
            version: Some(Digest::of("1")),
            managed: true,
            fingerprint: Some(Digest::of("old")),
            edited_elsewhere: false,
            expires_at: Some(later),
        };
        assert!(!urgent(Some(&ours), &rendered, now), "a refresh");
        // (cached, why urgent)
        let cases = [
            (None, "no Secret"),
            (
                Some(CachedSecret {
                    managed: false,
                    ..ours
                }),
                "not ours",
            ),
            (
                Some(CachedSecret {
                    edited_elsewhere: true,
                    ..ours
                }),
                "edited by someone else",
            ),
            (
                Some(CachedSecret {
                    fingerprint: Some(Digest::of("new")),
                    ..ours
                }),
                "its data differs from the fingerprint it names",
            ),
            (
                Some(CachedSecret {
                    expires_at: Some(now - Duration::from_secs(1)),
                    ..ours
                }),
                "its token expired",
            ),
            (
                Some(CachedSecret {
                    expires_at: None,
                    ..ours
                }),
                "no readable expiry",
            ),
        ];
        for (cached, why) in cases {
            assert!(urgent(cached.as_ref(), &rendered, now), "{why}");
        }
    }

    fn entry(manager: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn slim_namespace_keeps_labels_opt_out_and_deletion() {
        let mut ns = PartialObjectMeta::<Namespace> {
            metadata: ObjectMeta {
                name: Some("team-a".into()),
                labels: Some(BTreeMap::from([
                    ("env".to_string(), "prod".to_string()),
                    (
                        "kubernetes.io/metadata.name".to_string(),
                        "team-a".to_string(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([
                    (OPT_OUT_ANNOTATION.to_string(), "true".to_string()),
                    (
                        "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                        "x".repeat(4096),
                    ),
                ])),
                managed_fields: Some(vec![entry("kubectl", serde_json::json!({}))]),
                deletion_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                )),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        };
        let mut without_selector = ns.clone();
        slim_namespace(&mut ns, true);
        assert_eq!(ns.labels().get("env").map(String::as_str), Some("prod"));
        assert_eq!(
            ns.labels().len(),
            1,
            "the name label is put back by selection"
        );
        assert_eq!(ns.annotations().len(), 1);
        assert!(ns.metadata.managed_fields.is_none());
        assert!(ns.metadata.deletion_timestamp.is_some());
        slim_namespace(&mut without_selector, false);
        assert!(without_selector.labels().is_empty());
        assert_eq!(without_selector.annotations().len(), 1);
    }
}
