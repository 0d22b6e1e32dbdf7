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

/// Errors a user or operator sees. Each says what was wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration error: {0}")]
    Config(String),
    #[error(transparent)]
    Credentials(#[from] aws::credentials::CredentialsError),
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
