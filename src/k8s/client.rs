//! The Kubernetes client (configuration from the cluster or KUBECONFIG), and `call`: the one
//! place a Kubernetes call gets its deadline and its failure typed.

use std::future::Future;
use std::time::Duration;

use kube::{Client, Config as KubeConfig};

use crate::Error;

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
    Client::try_from(config).map_err(|source| Error::kube("building the Kubernetes client", source))
}

/// One Kubernetes call, bounded by `timeout`: the one place a deadline is put on a call and its
/// failure typed. `what` (e.g. `reading Secret a/b`) names it in either error.
pub(crate) async fn call<T>(
    what: impl FnOnce() -> String,
    timeout: Duration,
    hint: &'static str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(Error::kube(what(), source)),
        Err(_) => Err(Error::Timeout {
            what: what(),
            after: timeout,
            hint,
        }),
    }
}

/// What the API server said (its Status message), else the error itself: for messages that
/// add their own fix.
pub(crate) fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}
