//! A runner's life, in named steps:
//!
//! 1. **bind** the gRPC port (and, in mesh mode, the plaintext health port);
//! 2. **serve health** (`NOT_SERVING`) at once, so probes get an answer while loading;
//! 3. **load** every algorithm in the background;
//! 4. **identity** (mesh mode): get this service's Connect leaf and the CA roots from the
//!    agent, retrying (and saying why) until it works: without them no client could be
//!    verified, so nothing else may start;
//! 5. **serve** the Runner service: over Connect mTLS, every connection authorized by
//!    intentions; or plaintext with `--insecure-plaintext`;
//! 6. **register** in Consul (kept alive in the background);
//! 7. **wait** for the algorithms, then turn `SERVING`, then wait for SIGTERM/SIGINT;
//! 8. **drain**: `NOT_SERVING`, refuse new runs, let in-flight runs finish (bounded by the
//!    grace period);
//! 9. **deregister**, stop serving, exit 0.
//!
//! [`run`] (the binary) and [`Runner`] (in-process: tests) serve the same way: both bind
//! (step 1) and hand the listeners to one task running steps 2 to 9, which reports its
//! bound addresses back once every port is bound.
//!
//! One stop mechanism throughout: [`CancellationToken`]s. `shutdown` is cancelled by the
//! signal (or [`Runner::stop`]) and ends steps 4 and 7; `keep_registered` ends the
//! registration loop before deregistering; `servers` is cancelled last (also when the
//! runner fails) and stops the gRPC, health and metrics servers.

use crate::RunnerConfig;
use crate::algorithm::LoadContext;
use crate::catalog::Catalog;
use crate::registration::{Ports, runner_registration};
use crate::service::{RunnerService, RunnerState};
use crate::slots::RunSlots;
use crate::transport::{self, Routes};
use anyhow::{Context, anyhow};
use plugworker_consul_client::ConsulClient;
use plugworker_discovery::Registration;
use plugworker_mesh::{Identity, ServerSettings, WeakIdentity};
use plugworker_rpc::runner::v1::runner_server::RunnerServer;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Largest request the reflection service decodes.
const REFLECTION_MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A server of `transport`: it returns once stopped, or if its connections stop coming
/// (the mesh's accept loop died), or it panics.
type ServerTask = JoinHandle<()>;

/// Why a server task ended before the runner told it to stop.
fn server_ended(server: &str, ended: Result<(), tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok(()) => anyhow!("{server} server stopped unexpectedly: no more connections to accept"),
        Err(error) => anyhow!("{server} server stopped unexpectedly: {error}"),
    }
}

/// Runs a runner until SIGTERM/SIGINT. `Err` means it could not start or an algorithm
/// failed to load; the message says which and why.
pub async fn run(
    config: RunnerConfig,
    catalog: Catalog,
    default_service_name: &str,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            plugworker_lifecycle::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    clear_address_file(&config)?;
    let listeners = Listeners::bind(&config).await?;
    Runner::launch(listeners, config, catalog, default_service_name, shutdown)
        .await?
        .finished()
        .await
}

/// A runner served inside this process: what [`run`] serves, minus the signal handling,
/// with its bound addresses and a stop handle. Tests use it to serve a catalog on port 0
/// and call it without a process; dropping it stops the runner (in the background).
pub struct Runner {
    addresses: BoundAddresses,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// Set once every algorithm has loaded and health says `SERVING`.
    serving: CancellationToken,
    mesh_stats: plugworker_mesh::ServerStats,
    /// Weak on purpose: the mesh acceptor's copy is what keeps the leaf renewing, so a
    /// test observing the identity through this handle cannot keep it alive by itself.
    identity: Arc<OnceLock<WeakIdentity>>,
}

impl Runner {
    /// Binds the addresses `config` names (port 0 picks a free port) and serves `catalog`
    /// there. Returns once every port is bound; the algorithms load, and in mesh mode the
    /// Connect identity is fetched, in the background ([`Runner::serving`] waits for both).
    pub async fn start(
        config: RunnerConfig,
        catalog: Catalog,
        default_service_name: &str,
    ) -> anyhow::Result<Self> {
        clear_address_file(&config)?;
        let listeners = Listeners::bind(&config).await?;
        Self::launch(
            listeners,
            config,
            catalog,
            default_service_name,
            CancellationToken::new(),
        )
        .await
    }

    /// [`Runner::start`] on listeners already bound (`config`'s addresses are then not
    /// bound again: `--listen` and `--health-listen` are ignored).
    pub async fn serve(
        listeners: Listeners,
        config: RunnerConfig,
        catalog: Catalog,
        default_service_name: &str,
    ) -> anyhow::Result<Self> {
        clear_address_file(&config)?;
        Self::launch(
            listeners,
            config,
            catalog,
            default_service_name,
            CancellationToken::new(),
        )
        .await
    }

    async fn launch(
        listeners: Listeners,
        config: RunnerConfig,
        catalog: Catalog,
        default_service_name: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        if config.insecure_plaintext != listeners.health.is_none() {
            anyhow::bail!(
                "a runner in mesh mode serves health on a listener of its own, and only there; \
                 with --insecure-plaintext, on the main one"
            );
        }
        let (bound, addresses) = oneshot::channel();
        let report = Report {
            bound,
            serving: CancellationToken::new(),
            mesh_stats: plugworker_mesh::ServerStats::default(),
            identity: Arc::new(OnceLock::new()),
        };
        let mut runner = Self {
            addresses: BoundAddresses {
                grpc: listeners.main_address,
                health: listeners.health_address,
                metrics: None,
            },
            shutdown: shutdown.clone(),
            task: None,
            serving: report.serving.clone(),
            mesh_stats: report.mesh_stats.clone(),
            identity: report.identity.clone(),
        };
        let name = default_service_name.to_string();
        let mut task = tokio::spawn(run_until(
            config, catalog, name, listeners, shutdown, report,
        ));
        match addresses.await {
            Ok(addresses) => {
                runner.addresses = addresses;
                runner.task = Some(task);
                Ok(runner)
            }
            // It stopped before it had bound everything: its error says why.
            Err(_) => Err(joined((&mut task).await)
                .err()
                .unwrap_or_else(|| anyhow!("the runner stopped while starting"))),
        }
    }

    /// Where it serves: gRPC, health, metrics (when `--metrics-address` was given).
    pub fn addresses(&self) -> BoundAddresses {
        self.addresses
    }

    /// The mesh acceptor's connection counters (all zero with `--insecure-plaintext`).
    pub fn mesh_stats(&self) -> &plugworker_mesh::ServerStats {
        &self.mesh_stats
    }

    /// The runner's Connect identity (its leaf kept renewed by the server that serves
    /// over it), once fetched; `None` before, after the runner stopped, and with
    /// `--insecure-plaintext`. The handle holds it weakly: only the runner's own copies
    /// keep it renewing.
    pub fn identity(&self) -> Option<Identity> {
        self.identity.get().and_then(WeakIdentity::upgrade)
    }

    /// Waits until every algorithm has loaded and health says `SERVING` (in mesh mode,
    /// also until the identity arrived and jobs are served over it). `Err` if the runner
    /// stopped first, with why.
    pub async fn serving(&mut self) -> anyhow::Result<()> {
        let Some(task) = self.task.as_mut() else {
            anyhow::bail!("the runner has stopped");
        };
        tokio::select! {
            () = self.serving.cancelled() => Ok(()),
            ended = task => {
                self.task = None;
                Err(joined(ended).err().unwrap_or_else(|| anyhow!("the runner stopped before serving")))
            }
        }
    }

    /// Stops it as SIGTERM stops a runner process (drain, deregister, stop serving) and
    /// waits for that, every server's port closed (each given at most 5 s together):
    /// `Err` if it had failed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.finished().await
    }

    /// Waits for it to stop, by [`Runner::stop`] or by itself (an error).
    async fn finished(mut self) -> anyhow::Result<()> {
        match self.task.take() {
            Some(task) => joined(task.await),
            None => Ok(()),
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The runner task's outcome, a panic included.
fn joined(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    ended.unwrap_or_else(|error| Err(anyhow!("the runner task failed: {error}")))
}

/// What the runner task tells its [`Runner`] handle as it goes.
struct Report {
    /// Every port bound (sent once the address file, if any, is written).
    bound: oneshot::Sender<BoundAddresses>,
    serving: CancellationToken,
    mesh_stats: plugworker_mesh::ServerStats,
    identity: Arc<OnceLock<WeakIdentity>>,
}

/// The runner: the steps in this module's documentation, until `shutdown` is cancelled.
async fn run_until(
    config: RunnerConfig,
    catalog: Catalog,
    default_service_name: String,
    listeners: Listeners,
    shutdown: CancellationToken,
    report: Report,
) -> anyhow::Result<()> {
    let service_name = config.service_name.clone().unwrap_or(default_service_name);
    if config.insecure_plaintext {
        tracing::warn!(
            listen = %listeners.main_address,
            "--insecure-plaintext: serving jobs over PLAINTEXT gRPC with no client authentication \
             and no intentions; anyone who can reach this port can send and read jobs"
        );
    }
    ensure_file_limit(&config);
    let (host, port) = advertised_address(&config, listeners.main_address).await?;
    let instance_id = format!(
        "{service_name}-{}-{port}-{:04x}",
        gethostname::gethostname().to_string_lossy(),
        rand::random::<u16>()
    );
    let mut metrics_registry = plugworker_telemetry::metrics::MetricsRegistry::default();
    let state = Arc::new(RunnerState {
        metrics: crate::metrics::RunnerMetrics::new(&mut metrics_registry),
        service_name: service_name.clone(),
        instance_id: instance_id.clone(),
        loaded: OnceLock::new(),
        draining: false.into(),
        slots: RunSlots::new(config.max_concurrent_runs(), config.max_queued_runs),
        catalog,
    });
    // The metrics ask the algorithms themselves; weak, so the collector never keeps the
    // runner's state alive.
    let weak = Arc::downgrade(&state);
    state.metrics.status.read_from(Box::new(move || {
        weak.upgrade()
            .map(|state| state.details())
            .unwrap_or_default()
    }));
    // Cancelled last: stops every server and the registration loop.
    let servers = CancellationToken::new();
    let _stop_servers_on_return = servers.clone().drop_guard();

    let (health, health_service) = tonic_health::server::health_reporter();
    // A health request is a service name: a few bytes, not the 4 MB tonic allows.
    let health_service = health_service
        .max_decoding_message_size(crate::config::HEALTH_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::config::HEALTH_MAX_MESSAGE_BYTES);
    set_health(&health, ServingStatus::NotServing).await;
    let mut health_server = listeners.health.map(|listener| {
        let state = state.clone();
        let params = config.health_server_params();
        let health_service = health_service.clone();
        let stop = servers.clone().cancelled_owned();
        tokio::spawn(async move {
            transport::serve(
                incoming(listener),
                Routes::new(health_service),
                params,
                &state.metrics.server,
                stop,
            )
            .await;
        })
    });
    let mut metrics_port = None;
    let mut metrics_address = None;
    let mut metrics_server = None;
    if let Some(address) = &config.metrics_address {
        let router = plugworker_telemetry::metrics::router(Arc::new(std::sync::Mutex::new(
            metrics_registry,
        )))
        .route("/health", health_details(&state));
        let (bound, task) = plugworker_telemetry::metrics::serve(
            address,
            router,
            servers.clone().cancelled_owned(),
        )
        .await
        .with_context(|| format!("cannot serve metrics on {address}"))?;
        tracing::info!(metrics = %format!("http://{bound}/metrics"), "serving metrics");
        metrics_port = Some(bound.port());
        metrics_address = Some(bound);
        metrics_server = Some(task);
    }
    let addresses = BoundAddresses {
        grpc: listeners.main_address,
        health: listeners.health_address,
        metrics: metrics_address,
    };
    if let Some(path) = &config.address_file {
        // A few bytes to a local file: written in place rather than on a blocking thread.
        write_address_file(path, &addresses)
            .with_context(|| format!("cannot write --address-file {}", path.display()))?;
    }
    let _ = report.bound.send(addresses);
    tracing::info!(
        listen = %listeners.main_address,
        health = %listeners.health_address,
        advertised = %format!("{host}:{port}"),
        service = %service_name,
        instance = %instance_id,
        mtls = !config.insecure_plaintext,
        algorithms = ?state.catalog.names(),
        "runner started; loading algorithms"
    );
    let consul = if config.no_register && config.insecure_plaintext {
        None
    } else {
        Some(config.consul.client()?)
    };
    let loader = load(&state, &config, consul.clone());
    let identity = match (&consul, config.insecure_plaintext) {
        (Some(consul), false) => {
            match acquire_identity(consul, &service_name, &shutdown).await {
                Some(identity) => {
                    let _ = report.identity.set(identity.downgrade());
                    Some(identity)
                }
                // Stopped before the identity arrived: nothing was registered or served.
                None => {
                    tracing::info!("runner stopped before its Connect identity was ready");
                    stop_servers(&servers, [health_server.as_mut(), metrics_server.as_mut()]).await;
                    return Ok(());
                }
            }
        }
        _ => None,
    };

    let mut server = serve(
        &config,
        listeners.main,
        health_service,
        &state,
        identity.zip(consul.clone()),
        report.mesh_stats,
        &servers,
    )?;

    let registration = match (&consul, config.no_register) {
        (Some(consul), false) => Some(runner_registration(
            consul.clone(),
            &instance_id,
            &service_name,
            state.catalog.names(),
            Ports {
                host,
                port,
                health_port: listeners.health_address.port(),
                metrics_port,
            },
            &config,
        )),
        _ => None,
    };
    // Stopped before deregistering, so it cannot register the instance again.
    let keep_registered = servers.child_token();
    let registration_task = registration
        .clone()
        .map(|r| tokio::spawn(r.maintain(keep_registered.clone())));

    let failure = wait(
        &state,
        &health,
        loader,
        &mut server,
        &mut health_server,
        &shutdown,
        &report.serving,
    )
    .await;

    drain(&state, &health, &config, failure.is_none()).await;
    keep_registered.cancel();
    if let Some(task) = registration_task {
        let _ = task.await;
    }
    if let Some(registration) = &registration {
        deregister(registration).await;
    }
    stop_servers(
        &servers,
        [
            Some(&mut server),
            health_server.as_mut(),
            metrics_server.as_mut(),
        ],
    )
    .await;
    match failure {
        Some(error) => Err(error),
        None => {
            tracing::info!("runner stopped");
            Ok(())
        }
    }
}

/// Cancels `servers` and waits for the tasks serving (at most 5 s together: responses of
/// finished runs are still being written), so that once `Runner::stop` returns no port is
/// served any more.
async fn stop_servers<const N: usize>(
    servers: &CancellationToken,
    tasks: [Option<&mut ServerTask>; N],
) {
    servers.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for task in tasks.into_iter().flatten() {
            // One that ended (a server that died) was already awaited.
            if !task.is_finished() {
                let _ = task.await;
            }
        }
    })
    .await;
}

/// Files a runner holds besides its gRPC connections: listeners, Consul and metrics
/// connections, model files, the runtime's own.
const FILES_BESIDES_CONNECTIONS: libc::rlim_t = 128;

/// The connection caps bound the sockets a runner holds (2 × each port's cap: 1.5 × for
/// connections open or still closing, half of it lingering after they ended, plus the
/// mesh's handshakes in progress: half the main port's cap); the open-file limit must
/// be above that, or accepts fail
/// with EMFILE before the caps act (and the health port with them). Raises the soft limit
/// towards the hard one when needed; warns when even the hard limit is too low.
fn ensure_file_limit(config: &RunnerConfig) {
    // Mesh mode: the main port's handshakes (half its cap) and the health port too.
    let sockets = if config.insecure_plaintext {
        config.max_connections.saturating_mul(2)
    } else {
        config.max_connections.saturating_mul(5) / 2
            + config.health_max_connections.saturating_mul(2)
    };
    let needed = sockets as libc::rlim_t + FILES_BESIDES_CONNECTIONS;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct given, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= needed {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    let now = if ok { raised.rlim_cur } else { limit.rlim_cur };
    if now < needed {
        tracing::warn!(
            open_files = now,
            needed,
            "the open-file limit is below what the connection caps need \
             (--max-connections, --health-max-connections): raise it (ulimit -n) or lower the caps"
        );
    } else {
        tracing::info!(
            open_files = now,
            "raised the open-file limit for the connection caps"
        );
    }
}

/// The sockets a runner serves on: bound by [`Listeners::bind`] from its configuration,
/// or by the caller ([`Listeners::new`]) and handed to [`Runner::serve`].
pub struct Listeners {
    main: TcpListener,
    main_address: SocketAddr,
    /// The plaintext health port (mesh mode); `None` when health shares the main port.
    health: Option<TcpListener>,
    health_address: SocketAddr,
}

impl Listeners {
    /// `main` serves gRPC; `health`, the plaintext health port, is for mesh mode (with
    /// `--insecure-plaintext` health is served on `main`, and `health` must be `None`).
    pub fn new(main: TcpListener, health: Option<TcpListener>) -> std::io::Result<Self> {
        let main_address = main.local_addr()?;
        let health_address = match &health {
            Some(health) => health.local_addr()?,
            None => main_address,
        };
        Ok(Self {
            main,
            main_address,
            health,
            health_address,
        })
    }

    /// Step 1: binds `--listen` (and `--health-listen` in mesh mode) before anything
    /// else, so a port in use fails the start.
    pub async fn bind(config: &RunnerConfig) -> anyhow::Result<Self> {
        let main = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let health = if config.insecure_plaintext {
            None
        } else {
            Some(
                TcpListener::bind(config.health_listen)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot listen on {} (--health-listen)",
                            config.health_listen
                        )
                    })?,
            )
        };
        Self::new(main, health).context("a bound listener has no local address")
    }
}

/// The addresses a runner serves on, once bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundAddresses {
    /// The gRPC port (`--listen`).
    pub grpc: SocketAddr,
    /// The health port (`--health-listen`; the gRPC port with `--insecure-plaintext`).
    pub health: SocketAddr,
    /// The metrics port (`--metrics-address`), when served.
    pub metrics: Option<SocketAddr>,
}

/// `--address-file`: each bound port by name (`grpc`, `health`, `metrics` when served).
fn write_address_file(path: &std::path::Path, addresses: &BoundAddresses) -> std::io::Result<()> {
    let mut named = vec![("grpc", addresses.grpc), ("health", addresses.health)];
    named.extend(addresses.metrics.map(|metrics| ("metrics", metrics)));
    plugworker_lifecycle::address_file::write(path, &named)
}

/// `--address-file`: a stale one from an earlier run is removed before binding.
fn clear_address_file(config: &RunnerConfig) -> anyhow::Result<()> {
    if let Some(path) = &config.address_file {
        plugworker_lifecycle::address_file::clear(path).with_context(|| {
            format!("cannot remove the stale --address-file {}", path.display())
        })?;
    }
    Ok(())
}

/// Accepted sockets get TCP_NODELAY: gRPC writes small frames, and Nagle's algorithm
/// would hold each response until the previous one is acknowledged.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Step 3: every algorithm loads on a blocking thread; the result is awaited in [`wait`].
fn load(
    state: &Arc<RunnerState>,
    config: &RunnerConfig,
    consul: Option<ConsulClient>,
) -> JoinHandle<Result<(), crate::CatalogError>> {
    let context = LoadContext::with(config.models_dir.clone(), config.settings.clone(), consul);
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let loaded = state.catalog.load_all(&context)?;
        let _ = state.loaded.set(loaded);
        Ok(())
    })
}

/// `GET /health` beside `/metrics`: the runner's state and each algorithm's version and
/// what it is serving through (a gallery it cannot refresh): what gRPC health's one
/// status cannot say.
fn health_details(state: &Arc<RunnerState>) -> axum::routing::MethodRouter {
    let state = Arc::downgrade(state);
    axum::routing::get(move || {
        let details = state.upgrade().map(|state| {
            let status = if state.draining.load(Ordering::Acquire) {
                "draining"
            } else if state.loaded.get().is_some() {
                "serving"
            } else {
                "loading"
            };
            serde_json::json!({ "status": status, "algorithms": state.details() })
        });
        async move { axum::Json(details.unwrap_or_else(|| serde_json::json!({ "status": "stopped" }))) }
    })
}

/// Step 4: the Connect identity, retried until it arrives or `shutdown` is cancelled
/// (`None`). A runner without it serves nothing and registers nothing: health stays
/// `NOT_SERVING`, and each failed attempt is logged with its cause (agent unreachable,
/// a token without `service:write`, Connect disabled).
async fn acquire_identity(
    consul: &ConsulClient,
    service: &str,
    shutdown: &CancellationToken,
) -> Option<Identity> {
    let mut attempt = 0u32;
    loop {
        let started = tokio::select! {
            started = Identity::start(consul.clone(), service, Duration::from_secs(10)) => started,
            () = shutdown.cancelled() => return None,
        };
        match started {
            Ok(identity) => return Some(identity),
            Err(error) => {
                attempt += 1;
                tracing::error!(
                    %error,
                    attempt,
                    consul = %consul.address(),
                    "no Connect certificate for this runner yet: not serving jobs and not registering; retrying"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => return None,
        }
    }
}

/// Step 5: the Runner, reflection and (in plaintext mode) health services on the main
/// port: over Connect mTLS when an identity is given, else plaintext.
fn serve(
    config: &RunnerConfig,
    listener: TcpListener,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    state: &Arc<RunnerState>,
    mesh: Option<(Identity, ConsulClient)>,
    mesh_stats: plugworker_mesh::ServerStats,
    servers: &CancellationToken,
) -> anyhow::Result<ServerTask> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plugworker_rpc::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the gRPC reflection service")?
        // Its requests name a file or a symbol.
        .max_decoding_message_size(REFLECTION_MAX_REQUEST_BYTES);
    let runner = RunnerServer::new(RunnerService {
        state: state.clone(),
    })
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);
    let routes = Routes::new(crate::deadline::StampArrival(runner))
        .with(health_service)
        .with(reflection);
    let stop = servers.clone().cancelled_owned();
    let params = config.server_params();
    let metrics_state = state.clone();
    Ok(match mesh {
        Some((identity, consul)) => {
            let settings = ServerSettings {
                authorize_cache_ttl: config.mesh_authorize_cache_ttl,
                // Sockets still in their TLS handshake are not yet the server's: bounded
                // here, within the open-file budget of `ensure_file_limit`.
                max_concurrent_handshakes: config.max_connections.div_ceil(2),
                handshake_timeout: config.header_read_timeout,
                stats: mesh_stats,
            };
            tracing::info!(spiffe_id = %identity.spiffe_id(), "serving over Connect mTLS");
            let incoming = plugworker_mesh::incoming(listener, identity, consul, settings);
            tokio::spawn(async move {
                let metrics = &metrics_state.metrics.server;
                transport::serve(incoming, routes, params, metrics, stop).await;
            })
        }
        None => tokio::spawn(async move {
            let metrics = &metrics_state.metrics.server;
            transport::serve(incoming(listener), routes, params, metrics, stop).await;
        }),
    })
}

/// Step 7: wait for the algorithms (then `SERVING`), then for `shutdown`. `Some` when
/// the runner must stop with an error: an algorithm failed to load or a server died.
async fn wait(
    state: &RunnerState,
    health: &HealthReporter,
    loader: JoinHandle<Result<(), crate::CatalogError>>,
    server: &mut ServerTask,
    health_server: &mut Option<ServerTask>,
    shutdown: &CancellationToken,
    serving: &CancellationToken,
) -> Option<anyhow::Error> {
    let health_died = async move {
        match health_server {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let mut health_died = std::pin::pin!(health_died);
    tokio::select! {
        loaded = loader => match loaded {
            Err(panic) => return Some(anyhow!("algorithm loader panicked: {panic}")),
            Ok(Err(error)) => return Some(anyhow::Error::new(error)),
            Ok(Ok(())) => {}
        },
        () = shutdown.cancelled() => return None,
        ended = &mut *server => return Some(server_ended("gRPC", ended)),
        ended = &mut health_died => return Some(server_ended("health", ended)),
    }
    set_health(health, ServingStatus::Serving).await;
    serving.cancel();
    tracing::info!(instance = %state.instance_id, "all algorithms loaded; serving");
    tokio::select! {
        () = shutdown.cancelled() => None,
        ended = &mut *server => Some(server_ended("gRPC", ended)),
        ended = &mut health_died => Some(server_ended("health", ended)),
    }
}

/// Step 8: stop taking work, health first so Consul and the controller route elsewhere;
/// after a clean stop, let in-flight runs finish within the grace period.
async fn drain(state: &RunnerState, health: &HealthReporter, config: &RunnerConfig, clean: bool) {
    state.draining.store(true, Ordering::Release);
    set_health(health, ServingStatus::NotServing).await;
    if !clean {
        return;
    }
    let in_flight = state.slots.in_flight();
    tracing::info!(in_flight, grace = ?config.shutdown_grace, "draining");
    if !state.slots.drain(config.shutdown_grace).await {
        tracing::warn!(
            in_flight = state.slots.in_flight(),
            "grace period over; abandoning runs still in flight"
        );
    }
}

/// Step 9: bounded: with Consul unreachable, the check's DeregisterCriticalServiceAfter
/// removes the instance anyway.
async fn deregister(registration: &Registration) {
    let deregistered =
        tokio::time::timeout(Duration::from_secs(5), registration.deregister()).await;
    if deregistered.is_err() {
        tracing::warn!(
            "Consul did not answer the deregistration in 5 s; its health check will expire the instance"
        );
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(plugworker_rpc::RUNNER_SERVICE_NAME, status)
        .await;
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
