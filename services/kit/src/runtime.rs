//! A runner's life: bind, serve (health `NOT_SERVING`), register, load every algorithm,
//! turn `SERVING`; then on SIGTERM/SIGINT: `NOT_SERVING`, refuse new runs, let in-flight
//! runs finish (bounded by the grace period), deregister, stop serving, exit 0.

use crate::RunnerConfig;
use crate::algorithm::LoadContext;
use crate::catalog::Catalog;
use crate::registration::Registration;
use crate::service::{RunnerService, RunnerState};
use crate::slots::RunSlots;
use anyhow::{Context, anyhow};
use plugworker_rpc::runner::v1::runner_server::RunnerServer;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Runs a runner until it is told to stop. `Err` means it could not start or an algorithm
/// failed to load; the message says which and why.
pub async fn run(
    config: RunnerConfig,
    catalog: Catalog,
    default_service_name: &str,
) -> anyhow::Result<()> {
    let service_name = config
        .service_name
        .clone()
        .unwrap_or_else(|| default_service_name.to_string());
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener
        .local_addr()
        .context("listener has no local address")?;
    let (host, port) = advertised_address(&config, local).await?;
    let instance_id = format!(
        "{service_name}-{}-{port}-{:04x}",
        gethostname::gethostname().to_string_lossy(),
        rand::random::<u16>()
    );

    let mut registry = plugworker_telemetry::metrics::MetricsRegistry::default();
    let metrics = crate::metrics::RunnerMetrics::new(&mut registry);
    let state = Arc::new(RunnerState {
        metrics,
        service_name: service_name.clone(),
        instance_id: instance_id.clone(),
        loaded: OnceLock::new(),
        draining: false.into(),
        slots: RunSlots::new(config.max_concurrent_runs(), config.max_queued_runs),
        catalog,
    });

    // Health says NOT_SERVING until every algorithm has loaded.
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plugworker_rpc::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the gRPC reflection service")?;
    let runner = RunnerServer::new(RunnerService {
        state: state.clone(),
    })
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::util::MapRequestLayer::new(
                crate::deadline::stamp_arrival,
            ))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(runner)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = server_stopped.await;
            }),
    );
    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    if let Some(address) = &config.metrics_address {
        let router =
            plugworker_telemetry::metrics::router(Arc::new(std::sync::Mutex::new(registry)));
        let bound = plugworker_telemetry::metrics::serve(address, router, async {
            let _ = metrics_stopped.await;
        })
        .await
        .with_context(|| format!("cannot serve metrics on {address}"))?;
        tracing::info!(metrics = %format!("http://{bound}/metrics"), "serving metrics");
    }
    tracing::info!(
        listen = %local,
        advertised = %format!("{host}:{port}"),
        service = %service_name,
        instance = %instance_id,
        algorithms = ?state.catalog.names(),
        "runner started; loading algorithms"
    );

    let (stop_registration, registration_stopped) = watch::channel(false);
    let registration = if config.no_register {
        None
    } else {
        let consul = config.consul.client()?;
        Some(Registration::new(
            consul,
            &instance_id,
            &service_name,
            state.catalog.names(),
            (host, port),
            &config,
        ))
    };
    let registration_task = registration
        .clone()
        .map(|r| tokio::spawn(r.maintain(registration_stopped)));

    let context = LoadContext {
        models_dir: config.models_dir.clone(),
    };
    let loader = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.catalog.load_all(&context))
    };
    let mut signal = std::pin::pin!(shutdown_signal());

    let failure = tokio::select! {
        loaded = loader => match loaded.context("algorithm loader panicked")? {
            Ok(loaded) => {
                let _ = state.loaded.set(loaded);
                set_health(&health, ServingStatus::Serving).await;
                tracing::info!(instance = %instance_id, "all algorithms loaded; serving");
                tokio::select! {
                    () = &mut signal => None,
                    ended = &mut server => Some(anyhow!("gRPC server stopped unexpectedly: {:?}", ended)),
                }
            }
            Err(error) => Some(anyhow::Error::new(error)),
        },
        () = &mut signal => None,
        ended = &mut server => Some(anyhow!("gRPC server stopped unexpectedly: {:?}", ended)),
    };

    // Stop taking work: health first, so Consul and the controller route elsewhere.
    state.draining.store(true, Ordering::Release);
    set_health(&health, ServingStatus::NotServing).await;
    if failure.is_none() {
        let in_flight = state.slots.in_flight();
        tracing::info!(in_flight, grace = ?config.shutdown_grace, "draining");
        if !state.slots.drain(config.shutdown_grace).await {
            tracing::warn!(
                in_flight = state.slots.in_flight(),
                "grace period over; abandoning runs still in flight"
            );
        }
    }
    let _ = stop_registration.send(true);
    if let Some(task) = registration_task {
        let _ = task.await;
    }
    if let Some(registration) = &registration {
        // Bounded: with Consul unreachable, the check's DeregisterCriticalServiceAfter
        // removes the instance anyway.
        let deregistered =
            tokio::time::timeout(std::time::Duration::from_secs(5), registration.deregister())
                .await;
        if deregistered.is_err() {
            tracing::warn!(
                "Consul did not answer the deregistration in 5 s; its health check will expire the instance"
            );
        }
    }
    let _ = stop_server.send(());
    let _ = stop_metrics.send(());
    if !server.is_finished() {
        // Responses of finished runs are still being written; give them a moment.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut server).await;
    }
    match failure {
        Some(error) => Err(error),
        None => {
            tracing::info!("runner stopped");
            Ok(())
        }
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(plugworker_rpc::RUNNER_SERVICE_NAME, status)
        .await;
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The `host` and `port` to register: `--advertise-address` if given; otherwise the listen
/// address; or, when listening on all interfaces, the address this host's name resolves to.
async fn advertised_address(
    config: &RunnerConfig,
    local: SocketAddr,
) -> anyhow::Result<(String, u16)> {
    if let Some(advertised) = &config.advertise_address {
        return Ok(match advertised.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || advertised.starts_with('[') => {
                let port = port.parse().with_context(|| {
                    format!("invalid port in --advertise-address {advertised:?}")
                })?;
                (host.trim_matches(['[', ']']).to_string(), port)
            }
            _ => (advertised.clone(), local.port()),
        });
    }
    if !local.ip().is_unspecified() {
        return Ok((local.ip().to_string(), local.port()));
    }
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let resolved = tokio::net::lookup_host((hostname.as_str(), local.port()))
        .await
        .ok()
        .and_then(|mut addrs| addrs.find(|a| a.is_ipv4() && !a.ip().is_loopback()))
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    tracing::info!(%resolved, "listening on all interfaces; advertising this host's address (set --advertise-address to override)");
    Ok((resolved.to_string(), local.port()))
}
