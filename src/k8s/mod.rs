//! Kubernetes I/O below the controller: the client, the Lease, the cache of our Secrets,
//! Events, ServiceAccount entries, and removing what we wrote. Named `k8s` so that `kube`
//! always means the kube-rs crate.

pub mod cleanup;
pub(crate) mod client;
pub mod events;
pub mod leader;
pub mod namespaces;
pub mod secret_cache;
pub(crate) mod service_account;
