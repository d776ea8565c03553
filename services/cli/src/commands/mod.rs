//! One module per `plugworker` subcommand.

pub mod algorithms;
pub mod call;
pub mod controller;
pub mod dev;
pub mod dev_mesh;
pub mod healthcheck;
pub mod registry;
pub mod results;
pub mod submit;

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
