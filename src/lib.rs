//! ecr-pull-secrets: keeps Amazon ECR image pull secrets valid in every selected namespace.
//!
//! Layers, each depending only on those below it (`make check-layers` checks this):
//!
//! - [`cli`]: the commands and their flags;
//! - [`controller`]: pipelines, reconciling a namespace, the EcrPullSecret supervisor;
//! - [`aws`] and [`k8s`]: I/O with AWS and with the API server;
//! - [`telemetry`]: metrics and probe health, which every layer records into;
//! - [`core`]: pure logic: pipeline configuration, tokens, rendering, selection, ownership.

pub mod aws;
pub mod cli;
pub mod controller;
pub mod core;
pub mod k8s;
pub mod telemetry;

use crate::core::api_failure::ApiFailure;

/// Errors a user or operator sees. Each says what was wrong and what to do; causes are kept as
/// sources.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration (flags, a spec, the cluster's setup); the message names the flag or
    /// field and the fix.
    #[error("configuration error: {0}")]
    Config(String),
    #[error(transparent)]
    Credentials(#[from] aws::credentials::CredentialsError),
    /// A Kubernetes API call failed, typed once by [`ApiFailure`].
    #[error("{context}: {source}")]
    Kube {
        context: String,
        failure: ApiFailure,
        #[source]
        source: kube::Error,
    },
    /// A Kubernetes API call got no answer within its deadline (`--api-timeout`).
    #[error("timed out: {what}: no answer within {after:?}{hint}")]
    Timeout {
        what: String,
        after: std::time::Duration,
        /// What to check, with its leading separator (`; check ...`), or empty.
        hint: &'static str,
    },
    /// This replica may not write: it does not hold a fresh lease.
    #[error("lost leadership: {0}")]
    LostLeadership(String),
    /// An EcrPullSecret's reconcile (its finalizer, cleanup or serving) failed.
    #[error("EcrPullSecret {name}: {source}")]
    Resource {
        name: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },
}

impl Error {
    /// A failed Kubernetes call, typed.
    pub fn kube(context: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube {
            context: context.into(),
            failure: ApiFailure::of(&source),
            source,
        }
    }

    /// How the Kubernetes call under this error failed, if one did.
    pub fn api_failure(&self) -> Option<ApiFailure> {
        match self {
            Error::Kube { failure, .. } => Some(*failure),
            Error::Resource { source, .. } => match source.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.api_failure(),
                kube::runtime::finalizer::Error::AddFinalizer(e)
                | kube::runtime::finalizer::Error::RemoveFinalizer(e) => Some(ApiFailure::of(e)),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn is_forbidden(&self) -> bool {
        self.api_failure() == Some(ApiFailure::Forbidden)
    }
}
