//! The supervisor of every pipeline: the flag-configured secret's, and one per EcrPullSecret
//! resource, each with its own credentials, limits and backoff, so a failing one neither blocks
//! nor slows the others. A pipeline that cannot start is retried with backoff.
//!
//! A finalizer holds a deleted resource until its Secrets and ServiceAccount entries are gone.
//! The resource's status is written from what its pipeline observes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{Mutex, watch};
use tracing::Instrument;

use crate::Error;
use crate::controller::pipeline::{self, Env};
use crate::core::api_failure::ApiFailure;
use crate::core::crd::{
    EcrPullSecret, EcrPullSecretStatus, FINALIZER, IdentityStatus, NamespaceCounts,
};
use crate::core::pipeline::{Inherited, PipelineConfig};
use crate::core::readiness::{FLAGS_RESOURCE, Readiness};
use crate::core::time::rfc3339;
use crate::k8s::client::api_message;
use crate::k8s::events::Events;
use crate::telemetry::observed::{Problem, TokenHealth};

/// How a resource, and the flag-configured secret, take over a Secret that is not theirs.
const ADOPT_BY_SPEC: &str = "set spec.adoptExisting: true";
const ADOPT_BY_FLAG: &str = "start the controller with --adopt-existing";
/// How often a running resource's status is recomputed (written only when it changed).
const STATUS_PERIOD: Duration = Duration::from_secs(2);
/// Field manager of status writes.
const STATUS_MANAGER: &str = "ecr-pull-secrets";

/// Where the flag-configured pipeline's Ready verdict goes besides the log and
/// `ecr_pull_secrets_resource_ready{resource="(flags)"}`: Events on the Lease, and the
/// annotation the elector publishes on it (`ready`, `core::readiness::READY_ANNOTATION`) for
/// `status`.
pub struct FlagsReport {
    pub lease: ObjectReference,
    pub ready: watch::Sender<Option<String>>,
}

/// Serves the flag-configured secret (`flags`, when the flags configure one) and, with
/// `resources`, every EcrPullSecret, until `stop`. The flag-configured secret is one more
/// pipeline under the same rules: started, retried with backoff when it cannot start, and its
/// state reported ([`report_flags_status`]); its secret name is reserved, so no resource may
/// reuse it.
pub async fn serve(
    env: Env,
    inherited: Inherited,
    flags: Option<PipelineConfig>,
    resources: bool,
    report: FlagsReport,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let implicit_secret = flags.as_ref().map(|f| f.secret_name.clone());
    let implicit = flags.map(|config| {
        let (stop_tx, stop_rx) = watch::channel(false);
        let secret_name = config.secret_name.clone();
        Running {
            uid: String::new(),
            generation: 0,
            metrics: env.metrics.clone(),
            stop: stop_tx,
            pipeline: Some(tokio::spawn(keep_running(config, env.clone(), stop_rx))),
            status: tokio::spawn(report_flags_status(env.clone(), report, secret_name)),
        }
    });
    let api: Api<EcrPullSecret> = Api::all(env.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let supervisor = Arc::new(Supervisor {
        client: env.client.clone(),
        env,
        inherited,
        implicit_secret,
        store: controller.store(),
        running: Mutex::new(HashMap::new()),
    });
    let mut deadline = stop.clone();
    if resources {
        let supervised = controller
            .graceful_shutdown_on(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .run(reconcile, error_policy, supervisor.clone())
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::warn!(error = %error, "EcrPullSecret reconcile failed; retrying");
                }
            });
        // A graceful shutdown can stall before the first list: bounded as in `pipeline::lead`.
        let drain_limit = supervisor.env.api_timeout + Duration::from_secs(1);
        tokio::select! {
            _ = supervised => {}
            _ = async {
                let _ = deadline.wait_for(|s| *s).await;
                tokio::time::sleep(drain_limit).await;
            } => tracing::warn!("EcrPullSecret reconciles did not finish within {drain_limit:?}"),
        }
    } else {
        drop(controller);
        let _ = stop.wait_for(|s| *s).await;
    }
    // Then stop every pipeline; each drains its in-flight writes.
    let running: Vec<Running> = supervisor
        .running
        .lock()
        .await
        .drain()
        .map(|(_, r)| r)
        .chain(implicit)
        .collect();
    futures::future::join_all(
        running
            .into_iter()
            .map(|r| r.stop(supervisor.env.api_timeout)),
    )
    .await;
    Ok(())
}

/// Reports the flag-configured pipeline's state as a resource's status would be computed,
/// every [`STATUS_PERIOD`]: as `ecr_pull_secrets_resource_ready{resource="(flags)"}`, and as
/// the Ready verdict the elector publishes on the Lease for `status`. Each change of the
/// verdict is also logged and recorded as an Event on the Lease (the controller's one object),
/// so `kubectl describe lease` and `kubectl get events` show why the flag-configured secret is
/// not in sync.
pub async fn report_flags_status(env: Env, report: FlagsReport, secret_name: String) {
    let events = Events::new(env.client.clone(), env.identity.clone());
    let mut conditions: Vec<Condition> = Vec::new();
    let mut reported: Option<(String, String)> = None;
    loop {
        let status = status_of(
            ADOPT_BY_FLAG,
            0,
            &env.metrics.observed().token_health(),
            &env.metrics.observed().state_counts(),
            env.metrics.observed().current_problem().as_ref(),
            &conditions,
            SystemTime::now(),
        );
        conditions = status.conditions;
        if let Some(ready) = conditions.iter().find(|c| c.type_ == "Ready") {
            let healthy = ready.status == "True";
            env.metrics.resource_ready(FLAGS_RESOURCE, Some(healthy));
            let published = Readiness {
                secret_name: secret_name.clone(),
                status: ready.status.clone(),
                reason: ready.reason.clone(),
                message: ready.message.clone(),
                since: rfc3339(SystemTime::from(ready.last_transition_time.0)),
            }
            .to_annotation();
            report.ready.send_if_modified(|current| {
                let changed = current.as_ref() != Some(&published);
                *current = Some(published);
                changed
            });
            let verdict = (ready.status.clone(), ready.reason.clone());
            // Waiting for the first token is not news; every later change is.
            if reported.as_ref() != Some(&verdict)
                && !(reported.is_none() && ready.reason == "Progressing")
            {
                if healthy {
                    tracing::info!(
                        resource = FLAGS_RESOURCE,
                        reason = ready.reason,
                        "flag-configured secret: {}",
                        ready.message
                    );
                } else {
                    tracing::warn!(
                        resource = FLAGS_RESOURCE,
                        reason = ready.reason,
                        "flag-configured secret: {}",
                        ready.message
                    );
                }
                if env.fence.check().is_ok() {
                    events
                        .report(
                            &report.lease,
                            !healthy,
                            &ready.reason,
                            ready.message.clone(),
                        )
                        .await;
                }
                reported = Some(verdict);
            }
        }
        tokio::time::sleep(STATUS_PERIOD).await;
    }
}

struct Supervisor {
    client: Client,
    /// What every pipeline shares (the resource's own metrics replace `env.metrics`).
    env: Env,
    /// The controller's own flags: what a resource does not set.
    inherited: Inherited,
    implicit_secret: Option<String>,
    store: Store<EcrPullSecret>,
    /// Running pipelines by resource name; `serve` stops them all on shutdown.
    running: Mutex<HashMap<String, Running>>,
}

/// One resource's pipeline and status writer. Dropped (the leader's work dropped on a lost
/// lease), it aborts both: nothing outlives the leadership that started it.
struct Running {
    uid: String,
    generation: i64,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
    stop: watch::Sender<bool>,
    pipeline: Option<tokio::task::JoinHandle<()>>,
    status: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the pipeline (letting in-flight writes finish, within a deadline) and forgets its
    /// metrics.
    async fn stop(mut self, api_timeout: Duration) {
        self.status.abort();
        self.stop.send_replace(true);
        if let Some(mut pipeline) = self.pipeline.take()
            && tokio::time::timeout(api_timeout + Duration::from_secs(2), &mut pipeline)
                .await
                .is_err()
        {
            pipeline.abort();
        }
        self.metrics.forget();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.status.abort();
        if let Some(pipeline) = &self.pipeline {
            pipeline.abort();
        }
    }
}

async fn reconcile(resource: Arc<EcrPullSecret>, ctx: Arc<Supervisor>) -> Result<Action, Error> {
    let api: Api<EcrPullSecret> = Api::all(ctx.client.clone());
    let name = resource.name_any();
    finalizer(&api, FINALIZER, resource, |event| async {
        match event {
            Finalizer::Apply(resource) => ctx.apply(&resource).await,
            Finalizer::Cleanup(resource) => ctx.cleanup(&resource).await,
        }
    })
    .await
    .map_err(|source| Error::Resource {
        name: name.clone(),
        source: Box::new(source),
    })
}

fn error_policy(_: Arc<EcrPullSecret>, error: &Error, _: Arc<Supervisor>) -> Action {
    tracing::warn!(error = %error, "EcrPullSecret: retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

impl Supervisor {
    async fn apply(&self, resource: &EcrPullSecret) -> Result<Action, Error> {
        let name = resource.name_any();
        let uid = resource.uid().unwrap_or_default();
        let generation = resource.metadata.generation.unwrap_or_default();
        let secret_name = &resource.spec.secret_name;

        if self.implicit_secret.as_ref() == Some(secret_name) {
            self.block(
                resource,
                "SecretNameInUse",
                format!(
                    "the controller's own configuration (--secret-name) already writes Secret {secret_name}; \
                     choose another spec.secretName (recreate the resource: it is immutable)"
                ),
            )
            .await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        if let Some(other) = self.older_with_secret(resource) {
            self.block(
                resource,
                "SecretNameInUse",
                format!(
                    "EcrPullSecret {other} already writes Secret {secret_name}; each resource needs its own \
                     spec.secretName (recreate this one with another name, or delete {other})"
                ),
            )
            .await?;
            // Picked up again once the other one is gone.
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
        let config = match resource.spec.pipeline(&name, &self.inherited) {
            Ok(config) => config,
            Err(message) => {
                self.block(resource, "InvalidSpec", message).await?;
                return Ok(Action::await_change());
            }
        };

        let mut running = self.running.lock().await;
        if let Some(current) = running.get(&name)
            && current.uid == uid
            && current.generation == generation
        {
            return Ok(Action::await_change());
        }
        if let Some(old) = running.remove(&name) {
            tracing::info!(resource = name, "spec changed; restarting its pipeline");
            old.stop(self.env.api_timeout).await;
        }
        let metrics = Arc::new(self.env.metrics.for_resource(&name));
        let (stop_tx, stop) = watch::channel(false);
        let env = Env {
            metrics: metrics.clone(),
            ..self.env.clone()
        };
        let pipeline = tokio::spawn(keep_running(config, env, stop));
        let status = tokio::spawn(write_status(
            Api::all(self.client.clone()),
            name.clone(),
            generation,
            resource.status.clone().unwrap_or_default(),
            metrics.clone(),
            self.env.fence.clone(),
        ));
        tracing::info!(
            resource = name,
            secret = secret_name,
            "serving EcrPullSecret"
        );
        running.insert(
            name,
            Running {
                uid,
                generation,
                metrics,
                stop: stop_tx,
                pipeline: Some(pipeline),
                status,
            },
        );
        Ok(Action::await_change())
    }

    /// The oldest other live resource that writes the same Secret name, if it is older.
    fn older_with_secret(&self, resource: &EcrPullSecret) -> Option<String> {
        let key = |r: &EcrPullSecret| (r.metadata.creation_timestamp.clone(), r.name_any());
        self.store
            .state()
            .into_iter()
            .filter(|other| {
                other.name_any() != resource.name_any()
                    && other.spec.secret_name == resource.spec.secret_name
                    && other.metadata.deletion_timestamp.is_none()
                    && key(other) < key(resource)
            })
            .map(|other| other.name_any())
            .min()
    }

    /// Stops the resource's pipeline, if any, and reports why it cannot run.
    async fn block(
        &self,
        resource: &EcrPullSecret,
        reason: &'static str,
        message: String,
    ) -> Result<(), Error> {
        let name = resource.name_any();
        if let Some(old) = self.running.lock().await.remove(&name) {
            old.stop(self.env.api_timeout).await;
        }
        tracing::warn!(resource = name, reason, message, "EcrPullSecret not served");
        self.env.metrics.resource_ready(&name, Some(false));
        let previous = resource.status.clone().unwrap_or_default();
        // The counts stay: they are what deletion goes by when it may not list the Secrets.
        let status = EcrPullSecretStatus {
            observed_generation: resource.metadata.generation,
            namespaces: previous.namespaces.clone(),
            conditions: conditions(
                &previous.conditions,
                false,
                reason,
                &message,
                SystemTime::now(),
            ),
            ..EcrPullSecretStatus::default()
        };
        if status != previous {
            patch_status(&Api::all(self.client.clone()), &name, &status).await?;
        }
        Ok(())
    }

    /// Deleting: stop the pipeline, remove exactly this resource's Secrets (by owner label)
    /// and its ServiceAccount entries; the finalizer goes once that succeeded.
    async fn cleanup(&self, resource: &EcrPullSecret) -> Result<Action, Error> {
        let name = resource.name_any();
        if let Some(old) = self.running.lock().await.remove(&name) {
            old.stop(self.env.api_timeout).await;
        }
        let secret_name = &resource.spec.secret_name;
        // Entries named like our Secret are ours only when nothing else writes that name.
        let shared = self.implicit_secret.as_ref() == Some(secret_name)
            || self.older_with_secret(resource).is_some();
        // Entries are removed even when spec.serviceAccounts is unset now: an earlier
        // generation may have set it. Without the right to list ServiceAccounts, and with none
        // configured, there is nothing this resource could have added.
        let mut removed = crate::k8s::cleanup::remove(
            &self.client,
            secret_name,
            Some(&name),
            false,
            self.env.api_timeout,
            !shared,
            &self.env.fence,
        )
        .await;
        if resource.spec.service_accounts.is_none()
            && removed.as_ref().is_err_and(Error::is_forbidden)
        {
            removed = crate::k8s::cleanup::remove(
                &self.client,
                secret_name,
                Some(&name),
                false,
                self.env.api_timeout,
                false,
                &self.env.fence,
            )
            .await;
        }
        let report = match removed {
            Ok(report) => report,
            Err(Error::Kube {
                failure: ApiFailure::Forbidden,
                source,
                context,
            }) => {
                let synced = resource
                    .status
                    .as_ref()
                    .and_then(|s| s.namespaces.as_ref())
                    .is_some_and(|n| n.synced > 0);
                if !synced {
                    // Never allowed to watch its Secrets, so it never wrote one: nothing to
                    // remove, and holding the resource forever would help nobody.
                    tracing::warn!(
                        resource = name,
                        "EcrPullSecret deleted; its Secrets cannot be listed (forbidden) and it never synced one: nothing removed"
                    );
                    self.env.metrics.resource_ready(&name, None);
                    return Ok(Action::await_change());
                }
                let message = format!(
                    "cannot remove this resource's Secrets ({context}: {}); add {secret_name} to the \
                     ClusterRole's secrets resourceNames, or remove the finalizer {FINALIZER} by hand \
                     to leave the Secrets behind",
                    api_message(&source)
                );
                let mut status = resource.status.clone().unwrap_or_default();
                status.conditions = conditions(
                    &status.conditions,
                    false,
                    "Forbidden",
                    &message,
                    SystemTime::now(),
                );
                let _ = patch_status(&Api::all(self.client.clone()), &name, &status).await;
                return Err(Error::Kube {
                    context: message,
                    failure: ApiFailure::Forbidden,
                    source,
                });
            }
            Err(error) => return Err(error),
        };
        self.env.metrics.resource_ready(&name, None);
        tracing::info!(
            resource = name,
            secrets = report.secrets.len(),
            service_account_entries = report.service_accounts.len(),
            "EcrPullSecret deleted: removed its secrets and ServiceAccount entries"
        );
        Ok(Action::await_change())
    }
}

/// Runs one resource's pipeline until `stop` (sent by [`Running::stop`], also on shutdown);
/// when it cannot start (credentials Secret missing, say) records why and retries with backoff.
async fn keep_running(config: PipelineConfig, env: Env, stop: watch::Receiver<bool>) {
    // The flag-configured pipeline has no resource name.
    let name = config
        .owner
        .clone()
        .unwrap_or_else(|| FLAGS_RESOURCE.into());
    let metrics = env.metrics.clone();
    // Capped at 30 s: a credentials Secret created after the resource is picked up soon.
    let backoff = crate::core::backoff::Exponential {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };
    let mut failures = 0u32;
    loop {
        // A resource's name on every log line of its pipeline, token refreshes included.
        let span = match &config.owner {
            Some(owner) => tracing::info_span!("resource", name = owner.as_str()),
            None => tracing::Span::current(),
        };
        let result = pipeline::lead(&config, &env, stop.clone())
            .instrument(span)
            .await;
        match result {
            Ok(()) => break,
            Err(error) => {
                let reason = match &error {
                    Error::Credentials(_) => "CredentialsUnavailable",
                    Error::Config(_) => "InvalidSpec",
                    _ => "Failing",
                };
                tracing::warn!(resource = name, error = %error, "EcrPullSecret pipeline failed; retrying");
                metrics.problem(reason, error.to_string());
                let delay = backoff.delay(failures, rand::random());
                failures = failures.saturating_add(1);
                let mut stopping = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
        }
    }
}

/// Writes the resource's status whenever what its pipeline observes changes.
async fn write_status(
    api: Api<EcrPullSecret>,
    name: String,
    generation: i64,
    mut written: EcrPullSecretStatus,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
    fence: crate::k8s::leader::Fence,
) {
    loop {
        let status = status_of(
            ADOPT_BY_SPEC,
            generation,
            &metrics.observed().token_health(),
            &metrics.observed().state_counts(),
            metrics.observed().current_problem().as_ref(),
            &written.conditions,
            SystemTime::now(),
        );
        metrics.resource_ready(&name, Some(is_ready(&status)));
        if status != written && fence.check().is_ok() {
            match patch_status(&api, &name, &status).await {
                Ok(()) => written = status,
                Err(error) => {
                    tracing::warn!(resource = name, error = %error, "could not write EcrPullSecret status")
                }
            }
        }
        tokio::time::sleep(STATUS_PERIOD).await;
    }
}

async fn patch_status(
    api: &Api<EcrPullSecret>,
    name: &str,
    status: &EcrPullSecretStatus,
) -> Result<(), Error> {
    // Server-side apply of the whole status: fields we no longer set are removed.
    let patch = serde_json::json!({
        "apiVersion": EcrPullSecret::api_version(&()),
        "kind": EcrPullSecret::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| {
        Error::kube(
            format!("writing the status of EcrPullSecret {name}"),
            source,
        )
    })
}

/// The status from what a pipeline observed: counts, token health and the latest problem.
/// Ready is True only when nothing needs attention; Degraded says what does.
pub(crate) fn status_of(
    adopt: &str,
    generation: i64,
    tokens: &BTreeMap<String, TokenHealth>,
    counts: &BTreeMap<&'static str, u32>,
    problem: Option<&Problem>,
    previous: &[Condition],
    now: SystemTime,
) -> EcrPullSecretStatus {
    let count = |state| counts.get(state).copied().unwrap_or(0);
    let namespaces = NamespaceCounts {
        synced: count("synced"),
        failed: count("failed"),
        conflict: count("conflict"),
        pending: count("pending"),
        expired: count("expired"),
    };
    let expires = tokens.values().filter_map(|t| t.expires_at).min();
    let last_refresh = tokens.values().filter_map(|t| t.last_refresh).min();
    let failing: Vec<(&String, &TokenHealth)> = tokens
        .iter()
        .filter(|(_, t)| t.consecutive_failures > 0)
        .collect();
    let valid_until = expires
        .map(|e| {
            if e <= now {
                format!(
                    "the last good token expired at {}: pulls fail in {} namespace(s) until AWS answers again",
                    rfc3339(e),
                    namespaces.expired
                )
            } else {
                format!(
                    "the secrets keep the last good token, valid until {}",
                    rfc3339(e)
                )
            }
        })
        .unwrap_or_else(|| "no token was fetched yet, so nothing was written".into());

    // `None`: still progressing (no token yet, or namespaces waiting for one).
    let verdict: Option<(bool, &str, String)> = if let Some(problem) = problem {
        Some((false, problem.reason, problem.message.clone()))
    } else if !failing.is_empty() {
        let detail = failing
            .iter()
            .map(|(identity, t)| {
                format!(
                    "{identity}: {} failure(s) in a row, last: {}",
                    t.consecutive_failures,
                    t.last_error.as_deref().unwrap_or("unknown")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Some((
            false,
            "TokenRefreshFailing",
            format!("token refresh failing ({detail}); retried with backoff; {valid_until}"),
        ))
    } else if namespaces.failed > 0 {
        Some((
            false,
            "NamespacesFailing",
            format!(
                "{} namespace(s) failed their last write and are retried with backoff; \
                 their Events (reason SyncFailed) and the controller log say why",
                namespaces.failed
            ),
        ))
    } else if namespaces.conflict > 0 {
        Some((
            false,
            "SecretConflict",
            format!(
                "{} namespace(s) hold a Secret with this name that is not ours (left untouched); \
                 delete or rename it there, or {adopt}",
                namespaces.conflict
            ),
        ))
    } else if tokens.is_empty() || namespaces.pending > 0 {
        None
    } else {
        Some((
            true,
            "Synced",
            format!(
                "{} namespace(s) hold the current secret; tokens refresh on schedule",
                namespaces.synced
            ),
        ))
    };
    EcrPullSecretStatus {
        observed_generation: Some(generation),
        conditions: match verdict {
            Some((healthy, reason, message)) => {
                conditions(previous, healthy, reason, &message, now)
            }
            None => progressing(previous, now),
        },
        token_expires_at: expires.map(rfc3339),
        last_refresh_time: last_refresh.map(rfc3339),
        namespaces: Some(namespaces),
        identities: identities(tokens),
    }
}

fn is_ready(status: &EcrPullSecretStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn identities(tokens: &BTreeMap<String, TokenHealth>) -> Vec<IdentityStatus> {
    tokens
        .iter()
        .map(|(name, t)| IdentityStatus {
            name: name.clone(),
            expires_at: t.expires_at.map(rfc3339),
            last_refresh_time: t.last_refresh.map(rfc3339),
            consecutive_failures: t.consecutive_failures,
            last_error: t.last_error.clone(),
        })
        .collect()
}

/// Ready and Degraded: Ready = `healthy`; Degraded = not healthy; both with `reason`.
fn conditions(
    previous: &[Condition],
    healthy: bool,
    reason: &str,
    message: &str,
    now: SystemTime,
) -> Vec<Condition> {
    let degraded_reason = if healthy { "AsExpected" } else { reason };
    let degraded_message = if healthy {
        "nothing needs attention"
    } else {
        message
    };
    vec![
        condition(previous, "Ready", healthy, reason, message, now),
        condition(
            previous,
            "Degraded",
            !healthy,
            degraded_reason,
            degraded_message,
            now,
        ),
    ]
}

/// Waiting for the first token or the first writes: not ready, not degraded.
fn progressing(previous: &[Condition], now: SystemTime) -> Vec<Condition> {
    let message = "waiting for the first token and the first writes";
    vec![
        condition(previous, "Ready", false, "Progressing", message, now),
        condition(
            previous,
            "Degraded",
            false,
            "AsExpected",
            "nothing needs attention",
            now,
        ),
    ]
}

/// One condition; its transition time moves only when its status changes.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: SystemTime,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(jiff_time(now)));
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time,
        observed_generation: None,
    }
}

fn jiff_time(t: SystemTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::try_from(t).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn healthy_token(expires: u64) -> TokenHealth {
        TokenHealth {
            expires_at: Some(t(expires)),
            last_refresh: Some(t(0)),
            consecutive_failures: 0,
            last_error: None,
        }
    }

    fn reason(status: &EcrPullSecretStatus, type_: &str) -> (String, String) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn status_table() {
        let tokens = BTreeMap::from([("us-east-1".to_string(), healthy_token(43200))]);
        let synced = BTreeMap::from([("synced", 3), ("excluded", 5)]);
        let status = status_of(ADOPT_BY_SPEC, 4, &tokens, &synced, None, &[], t(10));
        assert_eq!(reason(&status, "Ready"), ("True".into(), "Synced".into()));
        assert_eq!(
            reason(&status, "Degraded"),
            ("False".into(), "AsExpected".into())
        );
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.namespaces.as_ref().unwrap().synced, 3);
        assert_eq!(
            status.token_expires_at.as_deref(),
            Some("2027-01-15T20:00:00Z")
        );

        // Nothing fetched yet: progressing, not degraded.
        let status = status_of(
            ADOPT_BY_SPEC,
            1,
            &BTreeMap::new(),
            &BTreeMap::new(),
            None,
            &[],
            t(0),
        );
        assert_eq!(
            reason(&status, "Ready"),
            ("False".into(), "Progressing".into())
        );
        assert_eq!(reason(&status, "Degraded").0, "False");

        let mut failing = tokens.clone();
        let health = failing.get_mut("us-east-1").unwrap();
        health.consecutive_failures = 3;
        health.last_error = Some("ThrottlingException".into());
        let status = status_of(ADOPT_BY_SPEC, 4, &failing, &synced, None, &[], t(10));
        assert_eq!(
            reason(&status, "Degraded"),
            ("True".into(), "TokenRefreshFailing".into())
        );
        let message = &status.conditions[1].message;
        assert!(
            message.contains("us-east-1: 3 failure(s) in a row, last: ThrottlingException"),
            "{message}"
        );
        assert!(
            message.contains("valid until 2027-01-15T20:00:00Z"),
            "{message}"
        );

        let counts = BTreeMap::from([("synced", 3), ("failed", 1), ("conflict", 1)]);
        let status = status_of(ADOPT_BY_SPEC, 4, &tokens, &counts, None, &[], t(10));
        assert_eq!(
            reason(&status, "Ready"),
            ("False".into(), "NamespacesFailing".into())
        );
        let counts = BTreeMap::from([("synced", 3), ("conflict", 1)]);
        let status = status_of(ADOPT_BY_SPEC, 4, &tokens, &counts, None, &[], t(10));
        assert_eq!(
            reason(&status, "Degraded"),
            ("True".into(), "SecretConflict".into())
        );

        // A problem (refused watch, missing credentials) wins over everything else.
        let problem = Problem {
            reason: "Forbidden",
            message: "add it".into(),
            at: t(5),
        };
        let status = status_of(
            ADOPT_BY_SPEC,
            4,
            &tokens,
            &synced,
            Some(&problem),
            &[],
            t(10),
        );
        assert_eq!(
            reason(&status, "Degraded"),
            ("True".into(), "Forbidden".into())
        );
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let tokens = BTreeMap::from([("us-east-1".to_string(), healthy_token(43200))]);
        let counts = BTreeMap::from([("synced", 1)]);
        let first = status_of(ADOPT_BY_SPEC, 1, &tokens, &counts, None, &[], t(10));
        let counts = BTreeMap::from([("synced", 2)]);
        let second = status_of(
            ADOPT_BY_SPEC,
            1,
            &tokens,
            &counts,
            None,
            &first.conditions,
            t(20),
        );
        assert_eq!(
            first.conditions[0].last_transition_time,
            second.conditions[0].last_transition_time
        );
        let counts = BTreeMap::from([("synced", 2), ("failed", 1)]);
        let third = status_of(
            ADOPT_BY_SPEC,
            1,
            &tokens,
            &counts,
            None,
            &second.conditions,
            t(30),
        );
        assert_ne!(
            second.conditions[0].last_transition_time,
            third.conditions[0].last_transition_time
        );
    }
}
