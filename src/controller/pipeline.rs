//! One pipeline: token refresh per identity, rendering, and the namespace controller that
//! writes the result. The flag-configured secret and every EcrPullSecret run this.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller, Error as ControllerError};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::Error;
use crate::aws::ecr::{self, EcrPublicTokenSource, EcrTokenSource};
use crate::controller::AbortOnDrop;
use crate::controller::reconcile::{self, Context, WriteLimiter, WrittenLog};
use crate::core::backoff::{Exponential, Gate};
use crate::core::pipeline::PipelineConfig;
use crate::core::registry::RegistryHost;
use crate::core::render::{self, Rendered};
use crate::core::token::{Backoff, Token};
use crate::k8s::events::Events;
use crate::k8s::leader::Fence;
use crate::k8s::namespaces::{NamespaceEvent, Namespaces};
use crate::k8s::secret_cache::SecretCache;
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
}

/// The leader's work for one configuration (the flags, or one EcrPullSecret): token refresh
/// per identity, rendering, and the namespace controller. Returns after a graceful shutdown
/// (in-flight writes finished).
pub async fn lead(
    config: &PipelineConfig,
    env: &Env,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let (client, metrics, fence) = (env.client.clone(), env.metrics.clone(), &env.fence);
    let owner = config.owner.as_deref();
    let stop_for_drain = stop.clone();
    let mut tasks = JoinSet::new();
    let sdk_config =
        crate::aws::sdk::for_pipeline(&client, &env.namespace, config, &metrics, &mut tasks)
            .await?;
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
        resource = owner.unwrap_or("none (flags)"),
        "starting"
    );

    let (tokens_tx, tokens_rx) = watch::channel(BTreeMap::new());
    for region in &regions {
        let source = EcrTokenSource::new(&sdk_config, region);
        // In the caller's span: a resource's name on its token log lines.
        tasks.spawn(
            ecr::keep_fresh(
                source,
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
        config.registries.clone(),
        desired_tx,
    ));

    // Metadata of our Secrets only, selected by name server-side: the controller never sees
    // another Secret, and never caches Secret data (`verify_all` hashes it page by page).
    let secrets: Api<PartialObjectMeta<Secret>> = Api::all(client.clone());
    let secret_watch =
        watcher::Config::default().fields(&format!("metadata.name={}", config.secret_name));
    let secret_cache = SecretCache::for_owner(owner);
    let written: WrittenLog = Arc::default();
    let forget = written.clone();
    let secret_events = watcher(secrets, secret_watch)
        .default_backoff()
        .inspect_ok({
            let cache = secret_cache.clone();
            move |event| cache.apply_watcher_event(event)
        })
        .inspect_ok(move |event| {
            // A deleted Secret must be rewritten, not taken for "written, cache lagging".
            if let watcher::Event::Delete(secret) = event
                && let Some(namespace) = secret.namespace()
            {
                forget.lock().expect("lock").remove(&namespace);
            }
        })
        .touched_objects();

    let (account_store, account_events) = match &config.service_accounts {
        Some(targets) => {
            let accounts: Api<ServiceAccount> = Api::all(client.clone());
            let (store, writer) = reflector::store();
            let targets = targets.clone();
            let events = watcher(accounts, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .touched_objects()
                .try_filter(move |sa| std::future::ready(targets.matches(&sa.name_any())))
                .boxed();
            (Some(store), events)
        }
        None => (None, futures::stream::pending().boxed()),
    };

    let (ready_tx, caches_ready) = watch::channel(false);
    let accounts_ready = account_store.clone();
    let ctx = Arc::new(Context {
        client: client.clone(),
        secret_name: config.secret_name.clone(),
        owner: owner.map(str::to_string),
        selection: config.selection.clone(),
        desired: desired_rx.clone(),
        api_timeout: env.api_timeout,
        secrets: secret_cache,
        service_accounts: config.service_accounts.clone().zip(account_store),
        adopt_existing: config.adopt_existing,
        limiter: WriteLimiter::new(config.write_qps, config.write_burst),
        gate: Gate::new(Exponential {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }),
        written,
        fence: fence.clone(),
        events: Events::new(client.clone(), env.identity.clone()),
        metrics: metrics.clone(),
        caches_ready,
    });
    // One waiter per store; reconciles wait on the channel. Not in `tasks`: it ends by design.
    let _caches_waiter = AbortOnDrop(tokio::spawn({
        let ctx = ctx.clone();
        async move {
            ctx.secrets.wait_until_ready().await;
            if let Some(accounts) = accounts_ready
                && accounts.wait_until_ready().await.is_err()
            {
                return;
            }
            // Our Secrets' data checked once, so reconciles trust what matches without a read.
            verify_secrets(&ctx).await;
            ready_tx.send_replace(true);
        }
        .in_current_span()
    }));
    // The controller's one namespace watch, shared by every pipeline: its cache, and its
    // events split into "check this namespace" and "check them all" (a new list, or events
    // this pipeline fell too far behind to see).
    let namespace_store = env.namespaces.store();
    let (one_tx, one_rx) = mpsc::unbounded_channel::<ObjectRef<PartialObjectMeta<Namespace>>>();
    let (all_tx, all_rx) = mpsc::unbounded_channel::<()>();
    let mut subscription = env.namespaces.subscribe();
    tasks.spawn({
        let ctx = ctx.clone();
        async move {
            loop {
                let sent = match subscription.recv().await {
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
    let listed = futures::stream::unfold(all_rx, |mut rx| async move {
        rx.recv().await.map(|()| ((), rx))
    });
    let new_config = futures::stream::unfold(desired_rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    // A safety net against anything a watch could miss: every namespace re-checked from the
    // caches (no writes when in sync) on one timer, instead of a timer per namespace.
    let resync = futures::stream::unfold(ctx.clone(), |ctx| async move {
        tokio::time::sleep(RESYNC_PERIOD).await;
        verify_secrets(&ctx).await;
        Some(((), ctx))
    });
    // When the config written expires without a replacement (AWS failing for longer than the
    // token lives), every namespace is re-checked so none still counts as synced.
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
    let reconcile_all = futures::stream::select(
        futures::stream::select(new_config, resync),
        futures::stream::select(expired, listed),
    )
    .inspect({
        let (metrics, namespaces) = (metrics.clone(), namespace_store.clone());
        move |_| {
            for ns in namespaces.state() {
                metrics.enqueued(&ns.name_any());
            }
        }
    });
    let count_trigger = {
        let metrics = metrics.clone();
        move |namespace: &Option<String>| {
            if let Some(namespace) = namespace {
                metrics.enqueued(namespace);
            }
        }
    };
    let in_namespace = move |namespace: Option<String>| {
        count_trigger(&namespace);
        namespace.map(|ns| ObjectRef::new(&ns))
    };
    // No stream of its own: `reconcile_on` and `reconcile_all_on` bring every trigger.
    let no_watch =
        futures::stream::pending::<Result<PartialObjectMeta<Namespace>, watcher::Error>>();
    let controller = Controller::for_stream(no_watch, namespace_store)
        .with_config(ControllerConfig::default().concurrency(env.concurrency))
        .reconcile_on(one)
        .watches_stream(secret_events, {
            let in_namespace = in_namespace.clone();
            move |secret| in_namespace(secret.namespace())
        })
        .watches_stream(account_events, move |sa| in_namespace(sa.namespace()))
        .reconcile_all_on(reconcile_all)
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| {
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
                        let text = error.to_string();
                        if text.contains("forbidden") {
                            metrics.problem(
                                "Forbidden",
                                format!("a watch was refused: {text}; grant the controller's ServiceAccount the rights in docs/security.md (each secretName must be in the secrets resourceNames)"),
                            );
                        }
                    }
                }
            }
        });
    // Drain in-flight writes on shutdown, but never for longer than one API deadline (the
    // controller's graceful shutdown can stall if it comes before its first list).
    let mut deadline = stop_for_drain;
    let drain_limit = env.api_timeout + Duration::from_secs(1);
    let result = tokio::select! {
        _ = controller => {
            tracing::info!("stopped leading: in-flight work finished");
            Ok(())
        }
        _ = async {
            let _ = deadline.wait_for(|s| *s).await;
            tokio::time::sleep(drain_limit).await;
        } => {
            tracing::warn!("stopped leading: in-flight work did not finish within {drain_limit:?}");
            Ok(())
        }
        // Token refresh, rendering and the credentials watch run until dropped: one that ends
        // (or panics) would leave the replica leading, ready and never refreshing again.
        Some(ended) = tasks.join_next() => Err(Error::Config(format!(
            "a background task of the leader ended unexpectedly ({}); stopping the leader's work so \
             the process restarts clean",
            match ended {
                Ok(()) => "it returned".to_string(),
                Err(e) => e.to_string(),
            }
        ))),
    };
    tasks.shutdown().await;
    result
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

/// Renders the docker config whenever a token changes; publishes only valid, changed configs.
async fn render_on_change(
    mut tokens: watch::Receiver<BTreeMap<String, Token>>,
    hosts: Vec<RegistryHost>,
    desired: watch::Sender<Option<Arc<Rendered>>>,
) {
    while tokens.changed().await.is_ok() {
        let result = render::render(&tokens.borrow_and_update(), &hosts);
        match result {
            Ok(rendered) => {
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
