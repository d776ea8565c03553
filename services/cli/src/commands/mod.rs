//! One module per `plugworker` subcommand.

pub mod algorithms;
pub mod call;
pub mod controller;
pub mod dev;
pub mod dev_mesh;
pub mod healthcheck;
pub mod registry;
pub mod results;
pub mod runner_link;
pub mod submit;

/// Resolves when SIGTERM or SIGINT arrives (and logs which).
pub use plugworker_lifecycle::shutdown_signal;
