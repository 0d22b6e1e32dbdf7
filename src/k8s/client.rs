//! The Kubernetes client: configuration from the cluster or KUBECONFIG.

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
    Client::try_from(config).map_err(|source| Error::Kube {
        context: "building the Kubernetes client".into(),
        source,
    })
}
