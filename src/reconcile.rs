//! Reconciling one namespace: make its pull secret match the rendered config, never touching a
//! Secret we do not own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::Error;
use crate::render::{Rendered, rfc3339};
use crate::selection::Selection;

/// Field manager of every write (server-side apply).
pub const FIELD_MANAGER: &str = "ecr-pull-secrets";
/// Label on every Secret we manage; a same-named Secret without it is someone else's.
pub const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_VALUE: &str = "ecr-pull-secrets";
/// Hash of the rendered config (never the token itself): unchanged writes are skipped.
pub const FINGERPRINT_ANNOTATION: &str = "ecr-pull-secrets.io/fingerprint";
pub const EXPIRES_ANNOTATION: &str = "ecr-pull-secrets.io/expires-at";
pub const REGISTRIES_ANNOTATION: &str = "ecr-pull-secrets.io/registries";
pub const DOCKER_CONFIG_KEY: &str = ".dockerconfigjson";
pub const DOCKER_CONFIG_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub secret_name: String,
    pub selection: Selection,
    /// The config to write, `None` until the first token arrives.
    pub desired: watch::Receiver<Option<Arc<Rendered>>>,
    pub api_timeout: Duration,
}

/// The outcome of one reconcile, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    NotSelected,
    NoTokenYet,
    /// A Secret with our name exists without our label: left alone.
    Conflict,
    UpToDate,
    Written,
}

/// The Secret we want in `namespace`.
pub fn desired_secret(name: &str, namespace: &str, rendered: &Rendered) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_LABEL.to_string(),
                MANAGED_VALUE.to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (
                    FINGERPRINT_ANNOTATION.to_string(),
                    rendered.fingerprint.clone(),
                ),
                (EXPIRES_ANNOTATION.to_string(), rfc3339(rendered.expires_at)),
                (REGISTRIES_ANNOTATION.to_string(), rendered.hosts.join(",")),
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

fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_LABEL))
        .is_some_and(|v| v == MANAGED_VALUE)
}

fn fingerprint_of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(FINGERPRINT_ANNOTATION))
        .map(String::as_str)
}

impl Context {
    /// Brings namespace `ns` in line with the desired config.
    pub async fn reconcile_namespace(
        &self,
        ns: &PartialObjectMeta<Namespace>,
    ) -> Result<Outcome, Error> {
        let namespace = ns.name_any();
        if !self
            .selection
            .selects(&namespace, ns.metadata.deletion_timestamp.is_some())
        {
            return Ok(Outcome::NotSelected);
        }
        let Some(rendered) = self.desired.borrow().clone() else {
            return Ok(Outcome::NoTokenYet);
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let existing = self
            .bounded(
                "read",
                &namespace,
                secrets.get_metadata_opt(&self.secret_name),
            )
            .await?;
        if let Some(existing) = &existing {
            if !is_managed(&existing.metadata) {
                tracing::warn!(
                    namespace,
                    secret = self.secret_name,
                    "a Secret with our name exists without label {MANAGED_LABEL}={MANAGED_VALUE}; leaving it untouched \
                     (rename ours with --secret-name, or delete or label the existing one to let us manage it)"
                );
                return Ok(Outcome::Conflict);
            }
            if fingerprint_of(&existing.metadata) == Some(rendered.fingerprint.as_str()) {
                return Ok(Outcome::UpToDate);
            }
        }
        let secret = desired_secret(&self.secret_name, &namespace, &rendered);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.bounded(
            "write",
            &namespace,
            secrets.patch(&self.secret_name, &params, &Patch::Apply(&secret)),
        )
        .await?;
        tracing::info!(
            namespace,
            secret = self.secret_name,
            registries = rendered.hosts.join(","),
            expires_at = %rfc3339(rendered.expires_at),
            "wrote pull secret"
        );
        Ok(Outcome::Written)
    }

    /// Every API call that must finish gets a deadline: kube-client has none by default.
    async fn bounded<T>(
        &self,
        what: &'static str,
        namespace: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.api_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(Error::Kube {
                context: format!("{what} Secret {namespace}/{}", self.secret_name),
                source,
            }),
            Err(_) => Err(Error::Timeout(format!(
                "{what} Secret {namespace}/{} took longer than {:?}",
                self.secret_name, self.api_timeout
            ))),
        }
    }
}

/// kube-runtime entry point.
pub async fn reconcile(
    ns: Arc<PartialObjectMeta<Namespace>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.reconcile_namespace(&ns).await?;
    // New tokens re-enqueue every namespace; namespace events enqueue this one.
    Ok(Action::await_change())
}

/// Retry a failed namespace later; the other namespaces are not delayed.
pub fn error_policy(
    ns: Arc<PartialObjectMeta<Namespace>>,
    error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(namespace = ns.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
