//! ecr-pull-secrets: keeps Amazon ECR image pull secrets valid in every selected namespace.
//!
//! One token per region is fetched and kept fresh ([`token`]), rendered once into a docker
//! config ([`render`]), and written into every namespace that [`selection`] picks
//! ([`reconcile`]). [`run`] wires these together.

pub mod admin;
pub mod backoff;
pub mod check;
pub mod cleanup;
pub mod config;
pub mod crd;
pub mod credentials;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod registry;
pub mod render;
pub mod resources;
pub mod run;
pub mod secret_cache;
pub mod selection;
pub mod service_account;
pub mod status;
pub mod token;

/// Errors a user or operator sees. Each says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration error: {0}")]
    Config(String),
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialsError),
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("lost leadership: {0}")]
    LostLeadership(String),
    #[error("EcrPullSecret: {0}")]
    Resource(String),
}

impl Error {
    /// A short, bounded label for metrics and events.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Credentials(_) => "credentials",
            Error::Kube { .. } => "kube",
            Error::Timeout(_) => "timeout",
            Error::Conflict(_) => "conflict",
            Error::LostLeadership(_) => "lost_leadership",
            Error::Resource(_) => "resource",
        }
    }
}
