//! What the process reports: Prometheus metrics and probe health. State only, no I/O; every
//! layer records into it.

pub mod health;
pub mod metrics;
