//! The commands: flags and environment (`args`), and `run`, `check`, `status`, `cleanup`.

pub mod args;
pub mod check;
pub mod cleanup;
pub mod run;
pub mod status;
