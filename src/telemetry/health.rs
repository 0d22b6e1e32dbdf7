//! What the probes report: shared by the election, the signal handler and the admin listener.

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

/// What the probes report.
#[derive(Default)]
pub(crate) struct Health {
    /// Configuration valid and the API server answered once.
    pub(crate) started: AtomicBool,
    /// SIGTERM received: take this replica out of rotation.
    pub(crate) shutting_down: AtomicBool,
    /// Why this replica cannot even contend for the Lease (refused, or its namespace gone): a
    /// configuration problem a human must fix, so not ready until it clears. Transient
    /// failures (an unreachable API server) never set it.
    pub(crate) lease_problem: Mutex<Option<String>>,
}
