//! `plugworker controller`: SQS jobs → Consul-resolved runners → results.

use crate::ConsulArgs;
use anyhow::Context;
use axum::http::StatusCode;
use plugworker_consul_client::{CheckDefinition, ServiceRegistration};
use plugworker_controller::ControllerArgs;
use plugworker_discovery::{META_METRICS_PORT, META_ROLE, ROLE_CONTROLLER, Registration};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Boxed: the controller's flags are many, and `Command` holds every command's.
    #[command(flatten)]
    pub controller: Box<ControllerArgs>,
    #[command(flatten)]
    pub consul: ConsulArgs,
    /// Address of the health and metrics endpoints (`GET /healthz`: 200 while taking
    /// jobs, 503 while draining; `GET /readyz`: 503 until Consul first answered, when no
    /// job is received yet; `GET /metrics`: Prometheus text).
    #[arg(
        long,
        env = "PLUGWORKER_HEALTH_ADDRESS",
        default_value = "0.0.0.0:9090"
    )]
    pub health_address: String,
    /// Do not register the controller in Consul (it registers as its --mesh-service, with
    /// an HTTP check on /healthz and Meta plugworker_role=controller and
    /// plugworker_metrics_port, so Prometheus finds it through Consul).
    #[arg(long, env = "PLUGWORKER_NO_REGISTER")]
    pub no_register: bool,
    /// Once the health endpoint is bound, write its address as JSON
    /// (`{"health": "127.0.0.1:PORT"}`) to PATH.tmp and rename it to PATH, so whoever
    /// started the controller with `--health-address 127.0.0.1:0` learns the port (a
    /// reader never sees half a file; an all-interfaces address is written as loopback).
    #[arg(long, env = "PLUGWORKER_ADDRESS_FILE", value_name = "PATH")]
    pub address_file: Option<std::path::PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let consul = args.consul.client()?;
    let serving = Arc::new(AtomicBool::new(true));
    if let Some(path) = &args.address_file {
        plugworker_lifecycle::address_file::clear(path).with_context(|| {
            format!("cannot remove the stale --address-file {}", path.display())
        })?;
    }
    let listener = tokio::net::TcpListener::bind(&args.health_address)
        .await
        .with_context(|| format!("cannot listen on {}", args.health_address))?;
    tracing::info!(address = %listener.local_addr()?, "health endpoint at /healthz, metrics at /metrics");
    let local = listener.local_addr()?;
    // Written once bound, before the controller's start-up (SQS checks, the mesh identity)
    // that can fail: a request queues on the bound socket until the endpoint serves.
    if let Some(path) = &args.address_file {
        // A few bytes to a local file: written in place rather than on a blocking thread.
        plugworker_lifecycle::address_file::write(path, &[("health", local)])
            .with_context(|| format!("cannot write --address-file {}", path.display()))?;
    }
    let mesh_service = args.controller.mesh.mesh_service.clone();
    let registration =
        (!args.no_register).then(|| registration(consul.clone(), &mesh_service, local));
    let (controller, metrics) =
        plugworker_controller::build_on_sqs(*args.controller, consul).await?;
    let stop_registration = tokio_util::sync::CancellationToken::new();
    let registration = match registration {
        Some(registration) => {
            let registration = registration.await;
            tokio::spawn(registration.clone().maintain(stop_registration.clone()));
            Some(registration)
        }
        None => None,
    };
    let ready = controller.readiness();
    let health = {
        let serving = serving.clone();
        axum::Router::new()
            // Readiness, apart from liveness: an orchestrator replaces a container whose
            // health check fails, and waiting for Consul is no reason to.
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let ready = *ready.borrow();
                    async move {
                        if ready {
                            (StatusCode::OK, "ready")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "waiting for Consul")
                        }
                    }
                }),
            )
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
    stop_registration.cancel();
    if let Some(registration) = &registration {
        let _ = tokio::time::timeout(Duration::from_secs(5), registration.deregister()).await;
    }
    health_server.abort();
    Ok(())
}

/// The controller's own registration: found by Prometheus through Consul
/// (`plugworker_role=controller`, `plugworker_metrics_port`), checked on `/healthz`.
async fn registration(
    client: plugworker_consul_client::ConsulClient,
    service: &str,
    local: std::net::SocketAddr,
) -> Registration {
    let host = plugworker_discovery::host_address(local.ip()).await;
    let port = local.port();
    let id = format!(
        "{service}-{}-{port}",
        gethostname::gethostname().to_string_lossy()
    );
    let base = match host {
        std::net::IpAddr::V6(ip) => format!("http://[{ip}]:{port}"),
        std::net::IpAddr::V4(ip) => format!("http://{ip}:{port}"),
    };
    let interval = Duration::from_secs(10);
    Registration {
        client,
        service: ServiceRegistration {
            id: id.clone(),
            name: service.to_string(),
            address: host.to_string(),
            port,
            meta: BTreeMap::from([
                (META_ROLE.to_string(), ROLE_CONTROLLER.to_string()),
                (META_METRICS_PORT.to_string(), port.to_string()),
            ]),
            check: Some(CheckDefinition {
                check_id: format!("service:{id}"),
                name: format!("{service} /healthz"),
                http: Some(format!("{base}/healthz")),
                interval: Some(interval),
                timeout: Some(Duration::from_secs(5)),
                deregister_critical_service_after: Some(Duration::from_secs(60)),
                ..Default::default()
            }),
            ..Default::default()
        },
        interval,
    }
}
