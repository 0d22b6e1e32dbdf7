//! What the process reports: Prometheus metrics and probe health. State only, no I/O; every
//! layer records into it.

pub(crate) mod health;
pub mod metrics;
pub mod observed;
