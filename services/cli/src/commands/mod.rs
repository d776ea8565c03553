//! One module per `plugworker` subcommand.

pub mod algorithms;
pub mod call;
#[cfg(feature = "aws")]
pub mod controller;
#[cfg(feature = "dev")]
pub mod dev;
#[cfg(feature = "dev")]
pub mod dev_mesh;
pub mod dev_session;
#[cfg(feature = "gallery")]
pub mod gallery;
pub mod healthcheck;
pub mod pipeline;
#[cfg(feature = "dev")]
pub mod registry;
#[cfg(feature = "aws")]
pub mod results;
pub mod runner_link;
#[cfg(feature = "aws")]
pub mod submit;

/// Resolves when SIGTERM or SIGINT arrives (and logs which).
pub use plugworker_lifecycle::shutdown_signal;
