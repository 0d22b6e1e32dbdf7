//! `ecr-pull-secrets run`: wires credentials, token refresh, rendering and the namespace
//! controller together, and shuts down cleanly on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::Client;
use kube::api::{Api, ListParams};
use tokio::sync::watch;

use crate::Error;
use crate::aws::credentials;
use crate::cli::args::RunArgs;
use crate::controller::AbortOnDrop;
use crate::controller::admin::{self, AdminState};
use crate::controller::pipeline::Env;
use crate::controller::supervisor::FlagsReport;
use crate::core::api_failure::ApiFailure;
use crate::core::pipeline::PipelineConfig;
use crate::k8s::client::{api_message, call, connect};
use crate::k8s::leader::{self, Elector, Fence, LeaseConfig};
use crate::k8s::namespaces::Namespaces;
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

pub async fn run(args: RunArgs) -> Result<(), Error> {
    // Validated before anything starts: a bad flag is an exit, not a retry loop.
    let flags = args.pipeline().map_err(Error::Config)?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    // Every replica serves probes and metrics, leader or not.
    let admin = serve_admin(&args, &health, &metrics).await?;
    let (stop, signals) = on_signals(&health);
    let client = start(&args, &health).await?;
    let lease = lease_config(&client, &args);
    let (ready, published) = watch::channel(None);
    let (fence, mut leading, election) =
        contend(&client, &lease, &args, &metrics, &health, published);
    if !follow_until_leading(&mut leading, stop.clone(), args.shutdown_delay).await? {
        return Ok(());
    }
    let report = FlagsReport {
        lease: ObjectReference {
            api_version: Some("coordination.k8s.io/v1".into()),
            kind: Some("Lease".into()),
            name: Some(lease.name.clone()),
            namespace: Some(lease.namespace.clone()),
            ..ObjectReference::default()
        },
        ready,
    };
    let result = tokio::select! {
        result = lead(&args, flags, &client, report, fence, metrics, stop) => result,
        _ = leading.wait_for(|l| !*l) => Err(Error::LostLeadership(
            "the lease was not renewed within the renew deadline, or another replica took it; \
             the leader's work was stopped, exiting so a fresh start can contend again".into(),
        )),
    };
    drop(election);
    if result.is_ok() {
        hand_over(client, lease, args.client.api_timeout).await;
        tokio::time::sleep(args.shutdown_delay).await;
    }
    drop((admin, signals));
    result
}

/// The admin listener (probes, metrics), served until dropped.
async fn serve_admin(
    args: &RunArgs,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> Result<AbortOnDrop<std::io::Result<()>>, Error> {
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
    Ok(AbortOnDrop(tokio::spawn(admin)))
}

/// SIGTERM or Ctrl-C: out of rotation first (readiness fails), then `stop` is sent.
fn on_signals(health: &Arc<Health>) -> (watch::Receiver<bool>, AbortOnDrop<()>) {
    let (stop_tx, stop) = watch::channel(false);
    let health = health.clone();
    let signals = AbortOnDrop(tokio::spawn(async move {
        shutdown_signal().await;
        health.shutting_down.store(true, Ordering::SeqCst);
        stop_tx.send_replace(true);
    }));
    (stop, signals)
}

/// The client, and the checks that stop a misconfigured replica at start with a message
/// (RBAC, CRD, the Lease's namespace, the credentials Secret) instead of a retry loop.
async fn start(args: &RunArgs, health: &Health) -> Result<Client, Error> {
    let client = connect().await?;
    preflight(&client, args).await?;
    if let Some(name) = &args.credentials_secret {
        // Fail at start, on every replica, rather than when this one first leads.
        credentials::load_from_secret(client.clone(), &own_namespace(&client, args), name).await?;
    }
    health.started.store(true, Ordering::SeqCst);
    Ok(client)
}

fn lease_config(client: &Client, args: &RunArgs) -> LeaseConfig {
    LeaseConfig {
        namespace: lease_namespace(client, args),
        name: args.lease.lease_name.clone(),
        identity: args.identity.clone().unwrap_or_else(default_identity),
        lease_duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
    }
}

/// Starts the election: the write fence, whether this replica leads, and the renew loop
/// (stopped when dropped), which publishes `ready` on the Lease while it leads.
fn contend(
    client: &Client,
    lease: &LeaseConfig,
    args: &RunArgs,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    ready: watch::Receiver<Option<String>>,
) -> (Fence, watch::Receiver<bool>, AbortOnDrop<()>) {
    tracing::info!(
        identity = lease.identity,
        lease = format!("{}/{}", lease.namespace, lease.name),
        "contending for leadership"
    );
    let (leading_tx, leading) = watch::channel(false);
    let fence = Fence::new(args.renew_deadline);
    let election = AbortOnDrop(tokio::spawn(leader::run(
        Elector::new(client.clone(), lease.clone()).publishing(ready),
        leading_tx,
        fence.clone(),
        metrics.clone(),
        health.clone(),
    )));
    (fence, leading, election)
}

/// Followers idle (and stay ready) until they lead (true) or are told to stop (false, after
/// `--shutdown-delay`).
async fn follow_until_leading(
    leading: &mut watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    shutdown_delay: std::time::Duration,
) -> Result<bool, Error> {
    tokio::select! {
        led = leading.wait_for(|l| *l) => match led {
            Ok(_) => Ok(true),
            Err(_) => Err(Error::LostLeadership("the election ended unexpectedly".into())),
        },
        _ = stop.wait_for(|s| *s) => {
            tracing::info!("stopped while following");
            tokio::time::sleep(shutdown_delay).await;
            Ok(false)
        }
    }
}

/// The leader's work, one future: dropped, with everything it spawned, the moment the lease
/// is lost. One namespace watch for every pipeline, and the supervisor of the pipelines (the
/// flag-configured secret, and the EcrPullSecrets with --resources).
async fn lead(
    args: &RunArgs,
    flags: Option<PipelineConfig>,
    client: &Client,
    report: FlagsReport,
    fence: Fence,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    // Labels are kept when any selection may read them (a resource may set a selector at any
    // time).
    let keep_labels = args.resources
        || flags
            .as_ref()
            .is_some_and(|c| c.selection.label_selector_string().is_some());
    let (namespaces, namespace_watch) = Namespaces::watch(client.clone(), keep_labels, {
        let metrics = metrics.clone();
        move |error| {
            tracing::warn!(error = %error, "namespace watch failed; retrying with backoff");
            if ApiFailure::of_watch(error) == ApiFailure::Forbidden {
                metrics.problem(
                    "Forbidden",
                    format!("the namespace watch was refused: {error}; bind the controller's ServiceAccount to the shipped ClusterRole (docs/security.md)"),
                );
            }
        }
    });
    let env = Env {
        namespaces,
        client: client.clone(),
        metrics,
        fence,
        api_timeout: args.client.api_timeout,
        concurrency: args.concurrency,
        requests: crate::controller::reconcile::Requests::new(args.concurrency),
        table: crate::k8s::secret_cache::Table::default(),
        namespace: own_namespace(client, args),
        identity: args.identity.clone(),
    };
    let pipelines = crate::controller::supervisor::serve(
        env,
        args.inherited(),
        flags,
        args.resources,
        report,
        stop,
    );
    tokio::select! {
        result = pipelines => result,
        () = namespace_watch => Err(Error::Config(
            "the namespace watch ended unexpectedly; stopping the leader's work so the process restarts clean".into(),
        )),
    }
}

/// Hands the lease over at once instead of letting it expire.
async fn hand_over(client: Client, lease: LeaseConfig, api_timeout: std::time::Duration) {
    let elector = Elector::new(client, lease);
    match tokio::time::timeout(api_timeout, elector.release()).await {
        Ok(Ok(())) => tracing::info!("released the lease"),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "could not release the lease; it expires by itself")
        }
        Err(_) => tracing::warn!("releasing the lease timed out; it expires by itself"),
    }
}

pub(crate) fn own_namespace(client: &Client, args: &RunArgs) -> String {
    args.lease
        .namespace
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

/// One cheap list, so a missing RBAC rule or an unreachable API server stops us at start with
/// a message instead of an endless retry loop.
async fn preflight(client: &Client, args: &RunArgs) -> Result<(), Error> {
    const UNREACHABLE: &str =
        "; check KUBECONFIG or the in-cluster configuration, and connectivity";
    let timeout = args.client.api_timeout;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let params = ListParams::default().limit(1);
    let listed = call(
        || "listing namespaces".into(),
        timeout,
        UNREACHABLE,
        namespaces.list_metadata(&params),
    )
    .await;
    match listed {
        Err(Error::Kube {
            failure: ApiFailure::Forbidden,
            source,
            ..
        }) => {
            return Err(Error::Config(format!(
                "not allowed to list namespaces ({}); bind the controller's ServiceAccount to the shipped ClusterRole",
                api_message(&source)
            )));
        }
        Err(Error::Kube { source, .. }) => {
            return Err(Error::kube(
                "cannot reach the Kubernetes API server (check KUBECONFIG or the in-cluster configuration)",
                source,
            ));
        }
        other => other?,
    };
    lease_namespace_exists(client, args).await?;
    if !args.resources {
        return Ok(());
    }
    let resources: Api<crate::core::crd::EcrPullSecret> = Api::all(client.clone());
    let listed = call(
        || "listing EcrPullSecrets".into(),
        timeout,
        UNREACHABLE,
        resources.list_metadata(&params),
    )
    .await;
    match listed {
        Ok(_) => Ok(()),
        Err(e) if e.api_failure() == Some(ApiFailure::NotFound) => Err(Error::Config(
            "--resources: the EcrPullSecret CRD is not installed; install it with `make install` or \
             `kubectl apply -f deploy/crd/ecrpullsecrets.yaml`"
                .into(),
        )),
        Err(Error::Kube {
            failure: ApiFailure::Forbidden,
            source,
            ..
        }) => Err(Error::Config(format!(
            "--resources: not allowed to list ecrpullsecrets ({}); bind the controller's ServiceAccount to the shipped ClusterRole",
            api_message(&source)
        ))),
        Err(e) => Err(e),
    }
}

/// A Lease in a namespace that does not exist can never be created: the replica would follow
/// forever while reporting ready.
async fn lease_namespace_exists(client: &Client, args: &RunArgs) -> Result<(), Error> {
    let namespace = lease_namespace(client, args);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let found = call(
        || format!("reading namespace {namespace} (the Lease's)"),
        args.client.api_timeout,
        "",
        namespaces.get_metadata_opt(&namespace),
    )
    .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(Error::Config(format!(
            "the Lease's namespace {namespace:?} does not exist; create it, or set --lease-namespace \
             (ECR_PULL_SECRETS_LEASE_NAMESPACE) or --namespace (POD_NAMESPACE) to the controller's own namespace"
        ))),
    }
}

pub(crate) fn lease_namespace(client: &Client, args: &RunArgs) -> String {
    args.lease
        .lease_namespace
        .clone()
        .unwrap_or_else(|| own_namespace(client, args))
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
