//! What every plugworker process shares about living and dying, written once:
//!
//! - [`Backoff`]: how long to wait before retrying something that failed (Consul
//!   registration, a blocking query, an SQS receive, a job's redelivery);
//! - [`shutdown_signal`]: when to start stopping (SIGTERM or SIGINT);
//! - [`address_file`]: telling whoever started the process which ports it bound;
//! - [`error_chain`]: a failure told in one line, its causes each said once.
//!
//! The process bootstrap (runtime + logs + traces) is `plugworker_telemetry::bootstrap`,
//! next to the telemetry it installs. This crate depends on nothing of ours, so every
//! crate, the Consul client included, can use it without a dependency cycle.

pub mod address_file;
mod backoff;
pub mod error_chain;
mod shutdown;

pub use backoff::Backoff;
pub use shutdown::shutdown_signal;
