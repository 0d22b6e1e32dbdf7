//! The controller: one pipeline per configuration (`pipeline`), reconciling a namespace
//! (`reconcile`), the supervisor of EcrPullSecrets (`supervisor`), and the admin listener.

pub(crate) mod admin;
pub mod pipeline;
pub mod reconcile;
pub mod supervisor;

/// Aborts a spawned task when dropped, so nothing outlives the scope that started it.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
