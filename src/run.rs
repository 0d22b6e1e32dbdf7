//! `ecr-pull-secrets run`: wires credentials, token refresh, rendering and the namespace
//! controller together, and shuts down cleanly on SIGTERM or Ctrl-C.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::controller::{Config as ControllerConfig, Controller, Error as ControllerError};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config as KubeConfig};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use std::sync::atomic::Ordering;

use crate::Error;
use crate::admin::{self, AdminState, Health};
use crate::backoff::{Exponential, Gate};
use crate::config::RunArgs;
use crate::credentials::{self, SecretCredentials};
use crate::events::Events;
use crate::leader::{self, Elector, Fence, LeaseConfig};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context, WriteLimiter, WrittenLog};
use crate::registry::RegistryHost;
use crate::render::{self, Rendered};
use crate::secret_cache::SecretCache;
use crate::token::{self, Backoff, EcrPublicTokenSource, EcrTokenSource, Token};
use aws_config::identity::IdentityCache;

/// How often every namespace is re-checked regardless of events.
const RESYNC_PERIOD: Duration = Duration::from_secs(15 * 60);

pub async fn run(args: RunArgs) -> Result<(), Error> {
    args.validate().map_err(Error::Config)?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    // Every replica serves probes and metrics, leader or not.
    let state = AdminState {
        health: health.clone(),
        metrics: metrics.clone(),
    };
    let (address, admin) = admin::bind(&args.admin_address, state).await.map_err(|e| {
        Error::Config(format!(
            "cannot listen on --admin-address {}: {e}; choose a free address (e.g. 0.0.0.0:8080)",
            args.admin_address
        ))
    })?;
    tracing::info!(address = %address, "admin server listening");
    let admin = AbortOnDrop(tokio::spawn(admin));

    let (stop_tx, stop) = watch::channel(false);
    let signals = AbortOnDrop(tokio::spawn({
        let health = health.clone();
        async move {
            shutdown_signal().await;
            // Out of rotation first, then drain.
            health.shutting_down.store(true, Ordering::SeqCst);
            stop_tx.send_replace(true);
        }
    }));

    let client = connect().await?;
    preflight(&client, &args).await?;
    if let Some(name) = &args.credentials_secret {
        // Fail at start, on every replica, rather than when this one first leads.
        credentials::load_from_secret(client.clone(), &own_namespace(&client, &args), name).await?;
    }
    health.started.store(true, Ordering::SeqCst);

    let lease = LeaseConfig {
        namespace: lease_namespace(&client, &args),
        name: args.lease_name.clone(),
        identity: args.identity.clone().unwrap_or_else(default_identity),
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    };
    tracing::info!(
        identity = lease.identity,
        lease = format!("{}/{}", lease.namespace, lease.name),
        "contending for leadership"
    );
    let (leading_tx, mut leading) = watch::channel(false);
    let fence = Fence::new(args.renew_deadline);
    let election = AbortOnDrop(tokio::spawn(leader::run(
        Elector::new(client.clone(), lease.clone()),
        leading_tx,
        fence.clone(),
        metrics.clone(),
        health.clone(),
    )));

    // Followers idle (and stay ready) until they lead or are told to stop.
    let mut stopping = stop.clone();
    tokio::select! {
        led = leading.wait_for(|l| *l) => {
            if led.is_err() {
                return Err(Error::LostLeadership("the election ended unexpectedly".into()));
            }
        }
        _ = stopping.wait_for(|s| *s) => {
            tracing::info!("stopped while following");
            tokio::time::sleep(args.shutdown_delay).await;
            return Ok(());
        }
    }

    // The leader's work is one future: dropped, with everything it spawned, the moment the
    // lease is lost. The flag-configured secret and the EcrPullSecrets run side by side.
    let implicit = async {
        if args.configures_secret() {
            lead(
                &args,
                None,
                client.clone(),
                metrics.clone(),
                &fence,
                stop.clone(),
            )
            .await
        } else {
            Ok(())
        }
    };
    let resources = async {
        if args.resources {
            let implicit_secret = args.configures_secret().then(|| args.secret_name.clone());
            crate::resources::serve(
                args.clone(),
                implicit_secret,
                client.clone(),
                metrics.clone(),
                fence.clone(),
                stop.clone(),
            )
            .await
        } else {
            Ok(())
        }
    };
    let work = async { futures::try_join!(implicit, resources).map(|_| ()) };
    let result = tokio::select! {
        result = work => result,
        _ = leading.wait_for(|l| !*l) => Err(Error::LostLeadership(
            "the lease was not renewed within the renew deadline, or another replica took it; \
             the leader's work was stopped, exiting so a fresh start can contend again".into(),
        )),
    };
    drop(election);
    if result.is_ok() {
        // Hand over at once instead of letting the lease expire.
        let elector = Elector::new(client, lease);
        match tokio::time::timeout(args.api_timeout, elector.release()).await {
            Ok(Ok(())) => tracing::info!("released the lease"),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "could not release the lease; it expires by itself")
            }
            Err(_) => tracing::warn!("releasing the lease timed out; it expires by itself"),
        }
        tokio::time::sleep(args.shutdown_delay).await;
    }
    drop((admin, signals));
    result
}

/// Aborts a spawned task when dropped, so nothing outlives the scope that started it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn own_namespace(client: &Client, args: &RunArgs) -> String {
    args.namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string())
}

/// The host name plus a random suffix: unique even for two processes on one host.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "ecr-pull-secrets".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// The leader's work for one configuration (the flags, or one EcrPullSecret named `owner`):
/// token refresh per identity, rendering, and the namespace controller. Returns after a
/// graceful shutdown (in-flight writes finished).
pub(crate) async fn lead(
    args: &RunArgs,
    owner: Option<&str>,
    client: Client,
    metrics: Arc<Metrics>,
    fence: &Fence,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let selection = args.selection().map_err(Error::Config)?;
    let stop_for_drain = stop.clone();
    let mut tasks = JoinSet::new();
    let sdk_config = aws_config(&client, args, &metrics, &mut tasks).await?;
    let regions = args.regions();
    tracing::info!(
        regions = regions.join(","),
        ecr_public = args.ecr_public,
        role = args.role_arn.as_deref().unwrap_or("none"),
        registries = args
            .registries
            .iter()
            .map(|r| r.host())
            .collect::<Vec<_>>()
            .join(","),
        secret = args.secret_name,
        resource = owner.unwrap_or("none (flags)"),
        "starting"
    );

    let (tokens_tx, tokens_rx) = watch::channel(BTreeMap::new());
    for region in &regions {
        let source = EcrTokenSource::new(&sdk_config, region);
        // In the caller's span: a resource's name on its token log lines.
        tasks.spawn(
            token::keep_fresh(
                source,
                args.refresh_policy(),
                Backoff::default(),
                tokens_tx.clone(),
                metrics.clone(),
            )
            .in_current_span(),
        );
    }
    if args.ecr_public {
        tasks.spawn(
            token::keep_fresh(
                EcrPublicTokenSource::new(&sdk_config),
                args.refresh_policy(),
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
        args.registries.clone(),
        desired_tx,
    ));

    // Metadata of our Secrets only, selected by name server-side: the controller never sees
    // another Secret, and never caches Secret data (`verify_all` hashes it page by page).
    let secrets: Api<PartialObjectMeta<Secret>> = Api::all(client.clone());
    let secret_watch =
        watcher::Config::default().fields(&format!("metadata.name={}", args.secret_name));
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

    let (account_store, account_events) = match &args.service_accounts {
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
        secret_name: args.secret_name.clone(),
        owner: owner.map(str::to_string),
        selection,
        desired: desired_rx.clone(),
        api_timeout: args.api_timeout,
        secrets: secret_cache,
        service_accounts: args.service_accounts.clone().zip(account_store),
        adopt_existing: args.adopt_existing,
        limiter: WriteLimiter::new(args.write_qps, args.write_burst),
        gate: Gate::new(Exponential {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }),
        written,
        fence: fence.clone(),
        events: Events::new(client.clone(), args.identity.clone()),
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
    // Metadata only: labels, annotations and deletion state are all selection needs.
    let namespaces: Api<PartialObjectMeta<Namespace>> = Api::all(client);
    let (namespace_store, namespace_writer) = reflector::store();
    // Labels matter only to a label selector.
    let keep_labels = ctx.selection.label_selector_string().is_some();
    // Our own namespace watch (rather than Controller::new's) so the queue-depth gauge sees
    // every trigger, and forgets namespaces deleted before a worker took them.
    let namespace_events = watcher(namespaces, watcher::Config::default())
        .default_backoff()
        .modify(move |ns| reconcile::slim_namespace(ns, keep_labels))
        .reflect(namespace_writer)
        .inspect_ok({
            let ctx = ctx.clone();
            move |event| match event {
                watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) => {
                    ctx.metrics.enqueued(&ns.name_any())
                }
                // Gone: its state (say `failed`) must not outlive it in the metrics.
                watcher::Event::Delete(ns) => {
                    ctx.forget_namespace(&ns.name_any(), ns.uid().as_deref())
                }
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
        })
        .applied_objects();
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
    let reconcile_all =
        futures::stream::select(futures::stream::select(new_config, resync), expired).inspect({
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
    let controller = Controller::for_stream(namespace_events, namespace_store)
        .with_config(ControllerConfig::default().concurrency(args.concurrency))
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
    let drain_limit = args.api_timeout + Duration::from_secs(1);
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

pub(crate) async fn connect() -> Result<Client, Error> {
    client_from(kube_config().await?)
}

/// The Kubernetes configuration: in-cluster, else KUBECONFIG or ~/.kube/config.
pub(crate) async fn kube_config() -> Result<KubeConfig, Error> {
    KubeConfig::infer().await.map_err(|e| {
        Error::Config(format!(
            "no Kubernetes configuration found ({e}); run inside a cluster or set KUBECONFIG"
        ))
    })
}

pub(crate) fn client_from(config: KubeConfig) -> Result<Client, Error> {
    Client::try_from(config).map_err(|source| Error::Kube {
        context: "building the Kubernetes client".into(),
        source,
    })
}

/// One cheap list, so a missing RBAC rule or an unreachable API server stops us at start with
/// a message instead of an endless retry loop.
async fn preflight(client: &Client, args: &RunArgs) -> Result<(), Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let params = ListParams::default().limit(1);
    match tokio::time::timeout(args.api_timeout, namespaces.list_metadata(&params)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(status))) if status.code == 403 => Err(Error::Config(format!(
            "not allowed to list namespaces ({}); bind the controller's ServiceAccount to the shipped ClusterRole",
            status.message
        ))),
        Ok(Err(source)) => Err(Error::Kube {
            context: "cannot reach the Kubernetes API server (check KUBECONFIG or the in-cluster configuration)".into(),
            source,
        }),
        Err(_) => Err(Error::Timeout(format!(
            "the Kubernetes API server did not answer a namespace list within {:?}; check KUBECONFIG and connectivity",
            args.api_timeout
        ))),
    }?;
    lease_namespace_exists(client, args).await?;
    if !args.resources {
        return Ok(());
    }
    let resources: Api<crate::crd::EcrPullSecret> = Api::all(client.clone());
    match tokio::time::timeout(args.api_timeout, resources.list_metadata(&params)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Err(Error::Config(
            "--resources: the EcrPullSecret CRD is not installed; install it with `make install` or \
             `kubectl apply -f deploy/crd/ecrpullsecrets.yaml`"
                .into(),
        )),
        Ok(Err(kube::Error::Api(status))) if status.code == 403 => Err(Error::Config(format!(
            "--resources: not allowed to list ecrpullsecrets ({}); bind the controller's ServiceAccount to the shipped ClusterRole",
            status.message
        ))),
        Ok(Err(source)) => Err(Error::Kube {
            context: "listing EcrPullSecrets".into(),
            source,
        }),
        Err(_) => Err(Error::Timeout(format!(
            "the Kubernetes API server did not answer an EcrPullSecret list within {:?}",
            args.api_timeout
        ))),
    }
}

/// A Lease in a namespace that does not exist can never be created: the replica would follow
/// forever while reporting ready.
async fn lease_namespace_exists(client: &Client, args: &RunArgs) -> Result<(), Error> {
    let namespace = lease_namespace(client, args);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match tokio::time::timeout(args.api_timeout, namespaces.get_metadata_opt(&namespace)).await {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err(Error::Config(format!(
            "the Lease's namespace {namespace:?} does not exist; create it, or set --lease-namespace \
             (ECR_PULL_SECRETS_LEASE_NAMESPACE) or --namespace (POD_NAMESPACE) to the controller's own namespace"
        ))),
        Ok(Err(source)) => Err(Error::Kube {
            context: format!("reading namespace {namespace} (the Lease's)"),
            source,
        }),
        Err(_) => Err(Error::Timeout(format!(
            "the Kubernetes API server did not answer within {:?} (reading namespace {namespace})",
            args.api_timeout
        ))),
    }
}

pub(crate) fn lease_namespace(client: &Client, args: &RunArgs) -> String {
    args.lease_namespace
        .clone()
        .unwrap_or_else(|| own_namespace(client, args))
}

/// The AWS configuration: base credentials from the credentials Secret (followed by a task in
/// `tasks`) or the default chain, optionally with a role assumed on top.
async fn aws_config(
    client: &Client,
    args: &RunArgs,
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
) -> Result<aws_config::SdkConfig, Error> {
    let mut base = None;
    if let Some(name) = &args.credentials_secret {
        let namespace = own_namespace(client, args);
        let initial = credentials::load_from_secret(client.clone(), &namespace, name).await?;
        let provider = SecretCredentials::new(initial);
        tasks.spawn(
            provider
                .clone()
                .follow(
                    client.clone(),
                    namespace.clone(),
                    name.clone(),
                    metrics.clone(),
                )
                .in_current_span(),
        );
        tracing::info!(
            namespace,
            secret = name,
            "using AWS credentials from Secret (watched for rotation)"
        );
        base = Some(provider);
    }
    let sdk_config = sdk_config(args, base).await?;
    if let Some(role) = args.assume_role() {
        tracing::info!(
            role = role.role_arn,
            session = role.session_name,
            "assuming role for every token fetch"
        );
    }
    Ok(sdk_config)
}

/// The AWS SDK configuration with `base` credentials (else the default chain) and, with
/// --role-arn, the role assumed on top. Spawns nothing: `check` uses it as is.
pub(crate) async fn sdk_config(
    args: &RunArgs,
    base: Option<SecretCredentials>,
) -> Result<aws_config::SdkConfig, Error> {
    // No identity cache: every token fetch resolves credentials anew, so rotated keys (and
    // a fresh AssumeRole) apply at the next refresh. Fetches are hours apart; caching buys nothing.
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .identity_cache(IdentityCache::no_cache());
    // The region of STS (assume role): --region, else the first registry's, else us-east-1
    // (ECR Public only). Each ECR client sets its own region.
    let sts_region = args
        .region
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| args.regions().into_iter().next())
        .unwrap_or_else(|| "us-east-1".to_string());
    loader = loader.region(aws_config::Region::new(sts_region));
    if let Some(provider) = base {
        loader = loader.credentials_provider(provider);
    }
    let sdk_config = loader.load().await;
    let Some(role) = args.assume_role() else {
        return Ok(sdk_config);
    };
    let base = sdk_config.credentials_provider().ok_or_else(|| {
        Error::Config("no AWS credentials to assume the role with: set a credentials Secret or the default chain".into())
    })?;
    let assumed = credentials::assume_role(&sdk_config, base, &role).await;
    Ok(sdk_config
        .into_builder()
        .credentials_provider(assumed)
        .build())
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

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
