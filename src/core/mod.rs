//! Pure logic, no I/O: what a pipeline is configured to do, tokens as values, the rendered
//! docker config, namespace selection, what marks a Secret as ours, backoff arithmetic.

pub(crate) mod adopt;
pub mod api_failure;
pub mod backoff;
pub mod crd;
pub mod meta;
pub(crate) mod names;
pub mod pipeline;
pub(crate) mod readiness;
pub mod registry;
pub mod render;
pub mod selection;
pub mod service_accounts;
pub(crate) mod time;
pub mod token;
