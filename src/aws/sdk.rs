//! The AWS SDK configuration of a pipeline: base credentials (a watched Secret or the default
//! chain) and the role assumed on top.

use std::sync::Arc;

use aws_config::identity::IdentityCache;
use kube::Client;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::Error;
use crate::aws::credentials::{self, SecretCredentials};
use crate::core::pipeline::PipelineConfig;
use crate::telemetry::metrics::Metrics;

/// The AWS configuration: base credentials from the credentials Secret in `namespace`
/// (followed by a task in `tasks`) or the default chain, optionally with a role assumed on top.
pub(crate) async fn for_pipeline(
    client: &Client,
    namespace: &str,
    config: &PipelineConfig,
    metrics: &Arc<Metrics>,
    tasks: &mut JoinSet<()>,
) -> Result<aws_config::SdkConfig, Error> {
    let mut base = None;
    if let Some(name) = &config.identity.credentials_secret {
        let initial = credentials::load_from_secret(client.clone(), namespace, name).await?;
        let provider = SecretCredentials::new(initial);
        tasks.spawn(
            provider
                .clone()
                .follow(
                    client.clone(),
                    namespace.to_string(),
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
    let sdk_config = sdk_config(config, base).await?;
    if let Some(role) = &config.identity.role {
        tracing::info!(
            role = role.role_arn,
            session = role.session_name,
            "assuming role for every token fetch"
        );
    }
    Ok(sdk_config)
}

/// The AWS SDK configuration with `base` credentials (else the default chain) and the
/// configured role assumed on top. Spawns nothing: `check` uses it as is.
pub(crate) async fn sdk_config(
    config: &PipelineConfig,
    base: Option<SecretCredentials>,
) -> Result<aws_config::SdkConfig, Error> {
    // No identity cache: every token fetch resolves credentials anew, so rotated keys (and
    // a fresh AssumeRole) apply at the next refresh. Fetches are hours apart; caching buys nothing.
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .identity_cache(IdentityCache::no_cache())
        .region(aws_config::Region::new(config.sts_region()));
    if let Some(provider) = base {
        loader = loader.credentials_provider(provider);
    }
    let sdk_config = loader.load().await;
    let Some(role) = &config.identity.role else {
        return Ok(sdk_config);
    };
    let base = sdk_config.credentials_provider().ok_or_else(|| {
        Error::Config("no AWS credentials to assume the role with: set a credentials Secret or the default chain".into())
    })?;
    let assumed = credentials::assume_role(&sdk_config, base, role).await;
    Ok(sdk_config
        .into_builder()
        .credentials_provider(assumed)
        .build())
}
