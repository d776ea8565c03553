//! `plugworker controller`: SQS jobs → Consul-resolved runners → results.

use crate::ConsulArgs;
use anyhow::Context;
use axum::http::StatusCode;
use plugworker_controller::ControllerArgs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Boxed: the controller's flags are many, and `Command` holds every command's.
    #[command(flatten)]
    pub controller: Box<ControllerArgs>,
    #[command(flatten)]
    pub consul: ConsulArgs,
    /// Address of the health and metrics endpoints (`GET /healthz`: 200 while taking
    /// jobs, 503 while draining; `GET /metrics`: Prometheus text).
    #[arg(
        long,
        env = "PLUGWORKER_HEALTH_ADDRESS",
        default_value = "0.0.0.0:9090"
    )]
    pub health_address: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let consul = args.consul.client()?;
    let serving = Arc::new(AtomicBool::new(true));
    let listener = tokio::net::TcpListener::bind(&args.health_address)
        .await
        .with_context(|| format!("cannot listen on {}", args.health_address))?;
    tracing::info!(address = %listener.local_addr()?, "health endpoint at /healthz, metrics at /metrics");
    let (controller, metrics) =
        plugworker_controller::build_on_sqs(*args.controller, consul).await?;
    let health = {
        let serving = serving.clone();
        axum::Router::new()
            .route(
                "/healthz",
                axum::routing::get(move || {
                    let serving = serving.load(Ordering::Acquire);
                    async move {
                        if serving {
                            (StatusCode::OK, "ok")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "draining")
                        }
                    }
                }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                plugworker_telemetry::metrics::CONTENT_TYPE,
                            )],
                            metrics.render().await,
                        )
                    }
                }),
            )
    };
    let health_server = tokio::spawn(async move { axum::serve(listener, health).await });
    let shutdown = {
        let serving = serving.clone();
        async move {
            super::shutdown_signal().await;
            tracing::info!("shutdown requested");
            serving.store(false, Ordering::Release);
        }
    };
    controller.run(shutdown).await;
    health_server.abort();
    Ok(())
}
