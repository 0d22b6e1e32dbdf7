//! AWS I/O: credentials (a watched Secret, an assumed role), the SDK configuration, ECR token
//! fetches and the refresh loop.

pub mod credentials;
pub(crate) mod ecr;
pub(crate) mod sdk;
