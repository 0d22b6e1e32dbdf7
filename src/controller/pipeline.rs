//! One pipeline: token refresh per identity, rendering, and the namespace controller that
//! writes the result. The flag-configured secret and every EcrPullSecret run this.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::controller::{
    Action, Config as ControllerConfig, Controller, Error as ControllerError,
};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::Error;
use crate::aws::ecr::{self, EcrPublicTokenSource, EcrTokenSource};
use crate::controller::AbortOnDrop;
use crate::controller::reconcile::{self, Caches, Context, Requests, WriteLimiter};
use crate::core::adopt;
use crate::core::api_failure::ApiFailure;
use crate::core::backoff::{Exponential, Gate};
use crate::core::meta::{MANAGED_LABEL, MANAGED_VALUE, OWNER_LABEL};
use crate::core::names;
use crate::core::pipeline::PipelineConfig;
use crate::core::registry::RegistryHost;
use crate::core::render::{self, Rendered};
use crate::core::selection::Decision;
use crate::core::token::{Backoff, ECR_PUBLIC, Token};
use crate::k8s::client::call;
use crate::k8s::events::Events;
use crate::k8s::leader::Fence;
use crate::k8s::namespaces::{NamespaceEvent, Namespaces};
use crate::k8s::secret_cache::{SecretCache, Table};
use crate::telemetry::metrics::Metrics;

/// How often every namespace is re-checked regardless of events.
const RESYNC_PERIOD: Duration = Duration::from_secs(15 * 60);

/// What every pipeline of this controller shares: the client, the metrics, the lease fence and
/// the controller-wide settings from the flags.
#[derive(Clone)]
pub struct Env {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Closed when the lease is not fresh: every write checks it first.
    pub fence: Fence,
    /// Deadline of each Kubernetes call.
    pub api_timeout: Duration,
    /// Namespaces reconciled in parallel, per pipeline.
    pub concurrency: u16,
    /// The controller's own namespace: credentials Secrets live here.
    pub namespace: String,
    /// This replica's identity, on the Events it records.
    pub identity: Option<String>,
    /// The one namespace watch and cache every pipeline reads.
    pub namespaces: Namespaces,
    /// Reconciles' API requests in flight, across every pipeline.
    pub requests: Requests,
    /// What every pipeline keeps per namespace, one row per namespace.
    pub table: Table,
}

/// Namespace triggers as kube-runtime's Controller takes them.
type Triggers<T> = futures::stream::BoxStream<'static, T>;
type NamespaceRef = ObjectRef<PartialObjectMeta<Namespace>>;

/// The leader's work for one configuration (the flags, or one EcrPullSecret): token refresh
/// per identity, rendering, and the namespace controller. Returns after a graceful shutdown
/// (in-flight writes finished), or with an error when a background task ends.
pub async fn lead(
    config: &PipelineConfig,
    env: &Env,
    stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    // Namespace states live in this run's table (the Secret cache): counts left by a run
    // before this one (it failed and is retried) would count every namespace twice.
    env.metrics.forget_namespaces();
    let mut tasks = JoinSet::new();
    let desired = start_tokens(config, env, &mut tasks).await?;
    let (secret_cache, secret_events, (lost_tx, secrets_lost)) = watch_secrets(config, env)?;
    let (account_store, account_events) = watch_service_accounts(config, env);
    let (ready_tx, caches_ready) = watch::channel(Caches::Listing);
    let ctx = Arc::new(Context {
        client: env.client.clone(),
        secret_name: config.secret_name.clone(),
        owner: config.owner.clone(),
        selection: config.selection.clone(),
        desired,
        api_timeout: env.api_timeout,
        secrets: secret_cache,
        service_accounts: config.service_accounts.clone().zip(account_store.clone()),
        adopt_existing: config.adopt_existing,
        limiter: WriteLimiter::new(config.write_qps, config.write_burst),
        requests: env.requests.clone(),
        gate: Gate::new(Exponential {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }),
        fence: env.fence.clone(),
        events: Events::new(env.client.clone(), env.identity.clone()),
        metrics: env.metrics.clone(),
        caches_ready,
        in_flight: Default::default(),
    });
    // Not in `tasks`: it ends by design.
    let _caches_waiter = AbortOnDrop(tokio::spawn(
        wait_for_caches(
            ctx.clone(),
            account_store,
            ready_tx,
            env.namespaces.store(),
            lost_tx,
        )
        .in_current_span(),
    ));
    let (one_tx, one, listed) = follow_namespaces(env, &ctx, secrets_lost, &mut tasks);
    let all = reconcile_all_triggers(&ctx, listed);
    tasks.spawn(
        feed_all(
            all,
            env.namespaces.store(),
            env.metrics.clone(),
            one_tx,
            usize::from(env.concurrency) * 2,
        )
        .in_current_span(),
    );
    let controller = run_controller(env, &ctx, one, secret_events, account_events, stop.clone());
    let result = until_stopped_or_failed(controller, &mut tasks, stop, env.api_timeout).await;
    tasks.shutdown().await;
    result
}

/// The AWS configuration, one refresh task per identity and the renderer: the config to write,
/// `None` until every identity has its first token.
async fn start_tokens(
    config: &PipelineConfig,
    env: &Env,
    tasks: &mut JoinSet<()>,
) -> Result<watch::Receiver<Option<Arc<Rendered>>>, Error> {
    let metrics = &env.metrics;
    let sdk_config =
        crate::aws::sdk::for_pipeline(&env.client, &env.namespace, config, metrics, tasks).await?;
    let regions = config.regions();
    tracing::info!(
        regions = regions.join(","),
        ecr_public = config.ecr_public,
        role = config
            .identity
            .role
            .as_ref()
            .map_or("none", |r| r.role_arn.as_str()),
        registries = config.hosts(),
        secret = config.secret_name,
        resource = config.owner.as_deref().unwrap_or("none (flags)"),
        "starting"
    );
    let credentials = adopt::credentials_tag(&config.identity);
    let mut adopted = adopt_tokens(config, env, &credentials).await;
    let (tokens_tx, tokens_rx) = watch::channel(BTreeMap::new());
    let round = ecr::Round::new(config.identities());
    for region in &regions {
        let source = EcrTokenSource::new(&sdk_config, region);
        // In the caller's span: a resource's name on its token log lines.
        tasks.spawn(
            ecr::keep_fresh(
                source,
                round.clone(),
                adopted.remove(region),
                config.refresh,
                Backoff::default(),
                tokens_tx.clone(),
                metrics.clone(),
            )
            .in_current_span(),
        );
    }
    if config.ecr_public {
        tasks.spawn(
            ecr::keep_fresh(
                EcrPublicTokenSource::new(&sdk_config),
                round.clone(),
                adopted.remove(ECR_PUBLIC),
                config.refresh,
                Backoff::default(),
                tokens_tx.clone(),
                metrics.clone(),
            )
            .in_current_span(),
        );
    }
    let (desired_tx, desired_rx) = watch::channel(None);
    tasks.spawn(render_on_change(
        tokens_rx,
        round,
        config.registries.clone(),
        credentials,
        desired_tx,
    ));
    Ok(desired_rx)
}

/// The still-valid tokens a previous leader wrote into our Secrets, per identity (see
/// `core::adopt`): one list request of at most [`adopt::SAMPLE`] Secrets. Anything not adopted
/// is fetched; a failed list only costs the takeover its AWS calls and rewrites.
async fn adopt_tokens(
    config: &PipelineConfig,
    env: &Env,
    credentials: &str,
) -> BTreeMap<String, Token> {
    let api: Api<Secret> = Api::all(env.client.clone());
    let owner = match &config.owner {
        Some(owner) => format!("{OWNER_LABEL}={owner}"),
        None => format!("!{OWNER_LABEL}"),
    };
    let params = ListParams::default()
        .fields(&format!("metadata.name={}", config.secret_name))
        .labels(&format!("{MANAGED_LABEL}={MANAGED_VALUE},{owner}"))
        .limit(adopt::SAMPLE);
    let listed = call(
        || {
            format!(
                "listing Secrets {} to adopt their tokens",
                config.secret_name
            )
        },
        env.api_timeout,
        "",
        api.list(&params),
    )
    .await;
    let identities = config.identities();
    let result = listed.map_err(|e| e.to_string()).and_then(|list| {
        adopt::adopt(
            &list.items,
            config.owner.as_deref(),
            credentials,
            &identities,
            SystemTime::now(),
        )
        .map_err(|e| e.to_string())
    });
    match result {
        Ok(tokens) => {
            let missing: Vec<&str> = identities
                .iter()
                .filter(|i| !tokens.contains_key(*i))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                tracing::info!(
                    fetching = missing.join(","),
                    "no valid written token to adopt for these identities; fetching them"
                );
            }
            tokens
        }
        Err(reason) => {
            tracing::info!(
                reason,
                "fetching new tokens instead of adopting written ones"
            );
            BTreeMap::new()
        }
    }
}

/// Metadata of our Secrets only, selected by name server-side: the controller never sees
/// another Secret, and never caches Secret data (`verify_all` hashes it page by page). Returns
/// the cache, the namespaces whose Secret changed, and apart from those the namespaces whose
/// Secret of ours was lost: deleted, edited by another field manager, or replaced by one that
/// is not ours (they take the fast lane: pulls there fail until it is restored).
fn watch_secrets(
    config: &PipelineConfig,
    env: &Env,
) -> Result<(SecretCache, SecretEvents, FastLane), Error> {
    let secrets: Api<PartialObjectMeta<Secret>> = Api::all(env.client.clone());
    let secret_watch =
        watcher::Config::default().fields(&format!("metadata.name={}", config.secret_name));
    let secret_cache = SecretCache::join(&env.table, config.owner.as_deref())?;
    let (lost_tx, lost_rx) = mpsc::unbounded_channel();
    let lost_sender = lost_tx.clone();
    let events = watcher(secrets, secret_watch)
        .default_backoff()
        .inspect_ok({
            let cache = secret_cache.clone();
            move |event| cache.apply_watcher_event(event)
        })
        .try_filter({
            let cache = secret_cache.clone();
            move |event| {
                let keep = match event {
                    watcher::Event::Delete(secret) => match secret.metadata.namespace.as_deref() {
                        // Sent to the fast lane, or (none left: shutting down) kept.
                        Some(ns) => lost_tx.send(names::intern(ns)).is_err(),
                        None => true,
                    },
                    watcher::Event::Apply(secret) => match secret.metadata.namespace.as_deref() {
                        Some(ns) => match cache.get(ns) {
                            Some(c) if !c.managed || c.edited_elsewhere => {
                                lost_tx.send(names::intern(ns)).is_err()
                            }
                            // The echo of our own write (or of a version we verified): the
                            // cache knows it already, and a reconcile would find it up to date.
                            // Dropped, so a rotation's writes do not queue a reconcile each.
                            Some(c) if cache.trusted(ns, &c) => false,
                            _ => true,
                        },
                        None => true,
                    },
                    _ => true,
                };
                std::future::ready(keep)
            }
        })
        .touched_objects()
        .boxed();
    Ok((secret_cache, events, (lost_sender, lost_rx)))
}

/// With `serviceAccounts`, a watch and cache of ServiceAccounts: the namespaces of the target
/// ones that changed.
fn watch_service_accounts(
    config: &PipelineConfig,
    env: &Env,
) -> (
    Option<Store<ServiceAccount>>,
    Triggers<Result<ServiceAccount, watcher::Error>>,
) {
    let Some(targets) = config.service_accounts.clone() else {
        return (None, futures::stream::pending().boxed());
    };
    let accounts: Api<ServiceAccount> = Api::all(env.client.clone());
    let (store, writer) = reflector::store();
    let events = watcher(accounts, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .try_filter(move |sa| std::future::ready(targets.matches(&sa.name_any())))
        .boxed();
    (Some(store), events)
}

/// A trigger for `namespace`, counted in the queue-depth gauge.
fn in_namespace(metrics: &Metrics, namespace: Option<String>) -> Option<NamespaceRef> {
    let namespace = namespace?;
    metrics.enqueued(&namespace);
    Some(ObjectRef::new(&namespace))
}

/// Selected namespaces without our Secret that a new leader sends to the fast lane as soon as
/// its caches are listed; with more than that (a first start) they are all in the same state,
/// and the re-check of every namespace serves them.
const MISSING_AT_START: usize = 64;

/// Opens the reconciles of namespaces without our Secret once every cache has its first full
/// list, and the others once our Secrets' data was checked (so they trust what matches without
/// a read). Namespaces that lack our Secret then (one created during a takeover) go to the fast
/// lane at once instead of waiting for their turn in the re-check of every namespace.
async fn wait_for_caches(
    ctx: Arc<Context>,
    accounts: Option<Store<ServiceAccount>>,
    ready: watch::Sender<Caches>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    fast_lane: mpsc::UnboundedSender<Arc<str>>,
) {
    ctx.secrets.wait_until_ready().await;
    if let Some(accounts) = accounts
        && accounts.wait_until_ready().await.is_err()
    {
        return;
    }
    ready.send_replace(Caches::Listed);
    let missing: Vec<Arc<str>> = namespaces
        .state()
        .iter()
        .filter(|ns| {
            ctx.secrets.get(&ns.name_any()).is_none()
                && ctx.selection.decide(
                    &ns.name_any(),
                    ns.labels(),
                    ns.annotations(),
                    ns.metadata.deletion_timestamp.is_some(),
                ) == Decision::Selected
        })
        .take(MISSING_AT_START + 1)
        .map(|ns| names::intern(&ns.name_any()))
        .collect();
    if missing.len() <= MISSING_AT_START {
        for name in missing {
            let _ = fast_lane.send(name);
        }
    }
    verify_secrets(&ctx).await;
    ready.send_replace(Caches::Verified);
}

/// The controller's one namespace watch, shared by every pipeline, split into "check this
/// namespace" and "check them all" (a new list, or events this pipeline fell too far behind
/// to see). A deleted namespace's state is forgotten here.
fn follow_namespaces(
    env: &Env,
    ctx: &Arc<Context>,
    mut secrets_lost: mpsc::UnboundedReceiver<Arc<str>>,
    tasks: &mut JoinSet<()>,
) -> (
    mpsc::UnboundedSender<NamespaceRef>,
    Triggers<NamespaceRef>,
    Triggers<()>,
) {
    let (one_tx, one_rx) = mpsc::unbounded_channel::<NamespaceRef>();
    let feed = one_tx.clone();
    let (all_tx, all_rx) = mpsc::unbounded_channel::<()>();
    let mut subscription = env.namespaces.subscribe();
    let store = env.namespaces.store();
    tasks.spawn({
        let ctx = ctx.clone();
        async move {
            // The fast lane: dropped with this task, so it never outlives the pipeline.
            let mut fast = JoinSet::new();
            // A namespace that lacks a working Secret of ours goes to the fast lane while it
            // has room, else to the queue.
            let missing = |name: &str, fast: &mut JoinSet<()>| {
                ctx.metrics.enqueued(name);
                match store.get(&ObjectRef::new(name)) {
                    Some(ns) if fast.len() < FAST_LANE => {
                        fast.spawn(fast_lane(ns, ctx.clone(), one_tx.clone()).in_current_span());
                        true
                    }
                    _ => one_tx.send(ObjectRef::new(name)).is_ok(),
                }
            };
            loop {
                let event = tokio::select! {
                    event = subscription.recv() => event,
                    Some(name) = secrets_lost.recv() => {
                        if !missing(&name, &mut fast) {
                            // The controller stopped (shutdown): nothing left to feed.
                            std::future::pending::<()>().await;
                        }
                        continue;
                    }
                    Some(_) = fast.join_next() => continue,
                };
                let sent = match event {
                    Ok(NamespaceEvent::Applied(name)) if ctx.secrets.get(&name).is_none() => {
                        missing(&name, &mut fast)
                    }
                    Ok(NamespaceEvent::Applied(name)) => {
                        ctx.metrics.enqueued(&name);
                        one_tx.send(ObjectRef::new(&name)).is_ok()
                    }
                    // Gone: its state (say `failed`) must not outlive it in the metrics.
                    Ok(NamespaceEvent::Deleted { name, uid }) => {
                        ctx.forget_namespace(&name, uid.as_deref());
                        true
                    }
                    Ok(NamespaceEvent::Listed) | Err(RecvError::Lagged(_)) => {
                        all_tx.send(()).is_ok()
                    }
                    // The watch ended: the leader's work ends with it.
                    Err(RecvError::Closed) => return,
                };
                if !sent {
                    // The controller stopped (shutdown): nothing left to feed.
                    std::future::pending::<()>().await;
                }
            }
        }
        .in_current_span()
    });
    let one = futures::stream::unfold(
        one_rx,
        |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
    );
    let all = futures::stream::unfold(all_rx, |mut rx| async move {
        rx.recv().await.map(|()| ((), rx))
    });
    (feed, one.boxed(), all.boxed())
}

/// Changes to Secrets with our name, as kube-runtime's Controller takes them.
type SecretEvents = Triggers<Result<PartialObjectMeta<Secret>, watcher::Error>>;

/// Namespaces for the fast lane (see [`fast_lane`]): the sender and its receiver.
type FastLane = (
    mpsc::UnboundedSender<Arc<str>>,
    mpsc::UnboundedReceiver<Arc<str>>,
);

/// Namespaces reconciled at once outside the controller's queue (see [`fast_lane`]).
const FAST_LANE: usize = 4;

/// A namespace without a working Secret of ours (new, its Secret deleted, edited by another
/// field manager or replaced by someone else's) is reconciled at once, not behind the
/// controller's queue, which may hold a rotation's worth of refreshes; its write is urgent at
/// the limiter too. Whatever does not end in sync goes to the controller, whose
/// backoff retries it.
async fn fast_lane(
    ns: Arc<PartialObjectMeta<Namespace>>,
    ctx: Arc<Context>,
    one: mpsc::UnboundedSender<NamespaceRef>,
) {
    let name = ns.name_any();
    match reconcile::reconcile(ns, ctx.clone()).await {
        Ok(action) if action == Action::await_change() => {}
        _ => {
            ctx.metrics.enqueued(&name);
            let _ = one.send(ObjectRef::new(&name));
        }
    }
}

/// When every namespace is checked again (from the caches: no writes when in sync): a new
/// config, the 15-minute resync (after the data sweep), the written config expiring without a
/// replacement (so none still counts as synced), and `listed`.
fn reconcile_all_triggers(ctx: &Arc<Context>, listed: Triggers<()>) -> Triggers<()> {
    let new_config = futures::stream::unfold(ctx.desired.clone(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    // A safety net against anything a watch could miss, on one timer instead of one per
    // namespace.
    let resync = futures::stream::unfold(ctx.clone(), |ctx| async move {
        tokio::time::sleep(RESYNC_PERIOD).await;
        verify_secrets(&ctx).await;
        Some(((), ctx))
    });
    let expired = futures::stream::unfold(ctx.desired.clone(), |mut desired| async move {
        loop {
            let expires = desired.borrow_and_update().as_ref().map(|r| r.expires_at);
            let wait = expires.and_then(|e| e.duration_since(std::time::SystemTime::now()).ok());
            match wait {
                Some(wait) => tokio::select! {
                    _ = tokio::time::sleep(wait + Duration::from_millis(100)) => {
                        return Some(((), desired));
                    }
                    changed = desired.changed() => changed.ok()?,
                },
                // None yet, or already expired (the reconcile that wrote it said so).
                None => desired.changed().await.ok()?,
            }
        }
    });
    futures::stream::select(
        futures::stream::select(new_config, resync),
        futures::stream::select(expired, listed),
    )
    .boxed()
}

/// Checks every namespace once per `all` trigger, without handing the whole list to the queue
/// at once: at most `window` namespaces wait, so the queue costs the same at 100 or 100,000
/// namespaces (kube-runtime's would otherwise hold an entry per namespace, twice over, in every
/// pipeline). Triggers that come during a pass are merged into one more pass.
async fn feed_all(
    mut all: Triggers<()>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    metrics: Arc<Metrics>,
    one: mpsc::UnboundedSender<NamespaceRef>,
    window: usize,
) {
    while all.next().await.is_some() {
        loop {
            for ns in namespaces.state() {
                metrics.queue_below(window).await;
                let name = ns.name_any();
                metrics.enqueued(&name);
                if one.send(ObjectRef::new(&name)).is_err() {
                    // The controller stopped (shutdown): nothing left to feed.
                    return std::future::pending().await;
                }
            }
            // Whatever asked for another pass meanwhile is served by one more.
            let mut again = false;
            while let Some(Some(())) = all.next().now_or_never() {
                again = true;
            }
            if !again {
                break;
            }
        }
    }
}

/// The namespace controller over the shared namespace cache: `concurrency` workers, fed by
/// the triggers, until `stop` (graceful: in-flight reconciles finish).
fn run_controller(
    env: &Env,
    ctx: &Arc<Context>,
    one: Triggers<NamespaceRef>,
    secret_events: Triggers<Result<PartialObjectMeta<Secret>, watcher::Error>>,
    account_events: Triggers<Result<ServiceAccount, watcher::Error>>,
    mut stop: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + use<> {
    // No stream of its own: `reconcile_on` brings every namespace trigger.
    let no_watch =
        futures::stream::pending::<Result<PartialObjectMeta<Namespace>, watcher::Error>>();
    let metrics = env.metrics.clone();
    let ctx = ctx.clone();
    Controller::for_stream(no_watch, env.namespaces.store())
        .with_config(ControllerConfig::default().concurrency(env.concurrency))
        .reconcile_on(one)
        .watches_stream(secret_events, {
            let metrics = metrics.clone();
            move |secret| in_namespace(&metrics, secret.namespace())
        })
        .watches_stream(account_events, {
            let metrics = metrics.clone();
            move |sa| in_namespace(&metrics, sa.namespace())
        })
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(move |result| {
            let (metrics, ctx) = (metrics.clone(), ctx.clone());
            async move {
                match result {
                    // A namespace deleted before its turn: nothing to do but forget it.
                    Err(ControllerError::ObjectNotFound(object)) => {
                        ctx.forget_namespace(&object.name, None)
                    }
                    Ok(_) => {}
                    // Watch failures (RBAC, connectivity) would otherwise go unseen; they are retried.
                    Err(error) => {
                        tracing::warn!(error = %error, "controller watch or queue error; retrying");
                        if let ControllerError::QueueError(watch) = &error
                            && ApiFailure::of_watch(watch) == ApiFailure::Forbidden
                        {
                            metrics.problem(
                                "Forbidden",
                                format!("a watch was refused: {error}; grant the controller's ServiceAccount the rights in docs/security.md (each secretName must be in the secrets resourceNames)"),
                            );
                        }
                    }
                }
            }
        })
}

/// Runs the controller until it stops (graceful shutdown), but never drains for longer than
/// one API deadline after `stop` (the controller's graceful shutdown can stall if it comes
/// before its first list); a background task that ends (or panics) is an error: it would
/// leave the pipeline leading, ready and never refreshing again.
async fn until_stopped_or_failed(
    controller: impl std::future::Future<Output = ()>,
    tasks: &mut JoinSet<()>,
    mut stop: watch::Receiver<bool>,
    api_timeout: Duration,
) -> Result<(), Error> {
    let drain_limit = api_timeout + Duration::from_secs(1);
    tokio::select! {
        _ = controller => {
            tracing::info!("stopped leading: in-flight work finished");
            Ok(())
        }
        _ = async {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(drain_limit).await;
        } => {
            tracing::warn!("stopped leading: in-flight work did not finish within {drain_limit:?}");
            Ok(())
        }
        Some(ended) = tasks.join_next() => Err(Error::Config(format!(
            "a background task of the leader ended unexpectedly ({}); stopping the leader's work so \
             the process restarts clean",
            match ended {
                Ok(()) => "it returned".to_string(),
                Err(e) => e.to_string(),
            }
        ))),
    }
}

/// Runs [`Context::verify_all`]; on failure reconciles read each Secret they cannot trust.
async fn verify_secrets(ctx: &Context) {
    match ctx.verify_all().await {
        Ok((verified, mismatched)) => {
            tracing::debug!(verified, mismatched, "verified pull secret data")
        }
        Err(error) => tracing::warn!(
            error = %error,
            "could not list our Secrets to verify their data; each is read when reconciled instead"
        ),
    }
}

/// Renders the docker config when the tokens change, once per refresh round (after every
/// identity of the round answered); publishes only valid, changed configs.
async fn render_on_change(
    mut tokens: watch::Receiver<BTreeMap<String, Token>>,
    round: ecr::Round,
    hosts: Vec<RegistryHost>,
    credentials: String,
    desired: watch::Sender<Option<Arc<Rendered>>>,
) {
    while tokens.changed().await.is_ok() {
        round.settled().await;
        let result = render::render(&tokens.borrow_and_update(), &hosts);
        match result {
            Ok(mut rendered) => {
                rendered.credentials = credentials.clone();
                desired.send_if_modified(|current| {
                    let changed =
                        current.as_ref().map(|c| &c.fingerprint) != Some(&rendered.fingerprint);
                    if changed {
                        *current = Some(Arc::new(rendered));
                    }
                    changed
                });
            }
            // A region without its first token yet: keep what is published.
            Err(error) => tracing::info!(error = %error, "not writing yet"),
        }
    }
}
