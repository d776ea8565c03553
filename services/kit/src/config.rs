//! Runner configuration: every flag can also be set through the environment.

use plugworker_consul_client::ConsulArgs;
use plugworker_telemetry::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A plugworker runner: serves the algorithms compiled into this binary over gRPC and
/// registers itself in Consul, tagged with their names, so the controller can find it.
#[derive(Clone, Debug, clap::Parser)]
#[command(version)]
pub struct RunnerConfig {
    /// Address the gRPC server listens on (port 0 picks a free port). It speaks Consul
    /// Connect mTLS only, unless --insecure-plaintext.
    #[arg(long, env = "PLUGWORKER_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Address of the plaintext gRPC health service (`grpc.health.v1` alone, nothing
    /// else), which Consul's check and --health-probe query: Consul's agent holds no
    /// client certificate for checks. Port 0 picks a free port. Unused with
    /// --insecure-plaintext, where health is served on --listen.
    #[arg(
        long,
        env = "PLUGWORKER_HEALTH_LISTEN",
        default_value = "0.0.0.0:50052"
    )]
    pub health_listen: SocketAddr,

    /// Serve plaintext gRPC on --listen, without Connect mTLS and without intentions:
    /// anyone who can reach the port can send and read jobs. For local debugging and
    /// benchmarks only; logged at WARN at start.
    #[arg(long, env = "PLUGWORKER_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// How long the decision of Consul's authorize endpoint for one client certificate
    /// is reused: an intention change reaches new connections within this.
    #[arg(long, env = "PLUGWORKER_MESH_AUTHORIZE_CACHE_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub mesh_authorize_cache_ttl: Duration,

    /// `host[:port]` other processes use to reach this runner, as registered in Consul.
    /// Defaults to the listen address, or this host's address when listening on 0.0.0.0.
    #[arg(long, env = "PLUGWORKER_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,

    /// Consul service name (defaults to the runner binary's name).
    #[arg(long, env = "PLUGWORKER_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// Serve without registering in Consul (benchmarks, debugging).
    #[arg(long, env = "PLUGWORKER_NO_REGISTER")]
    pub no_register: bool,

    /// How often Consul probes the runner's gRPC health, and how often the runner checks
    /// that the agent still knows it (re-registering if not).
    #[arg(long, env = "PLUGWORKER_CHECK_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub check_interval: Duration,

    /// Timeout of one health probe.
    #[arg(long, env = "PLUGWORKER_CHECK_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub check_timeout: Duration,

    /// Consul removes the instance after its check has been critical this long.
    #[arg(long, env = "PLUGWORKER_DEREGISTER_CRITICAL_AFTER", default_value = "1m", value_parser = humantime::parse_duration)]
    pub deregister_critical_after: Duration,

    /// Runs executing at once (default: number of CPUs).
    #[arg(long, env = "PLUGWORKER_MAX_CONCURRENT_RUNS")]
    pub max_concurrent_runs: Option<usize>,

    /// Runs allowed to wait for a slot; beyond that, calls get RESOURCE_EXHAUSTED.
    #[arg(long, env = "PLUGWORKER_MAX_QUEUED_RUNS", default_value_t = 64)]
    pub max_queued_runs: usize,

    /// Largest gRPC message accepted or sent, in bytes (inline images travel in payloads).
    #[arg(long, env = "PLUGWORKER_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// On SIGTERM, how long in-flight runs may take to finish before the runner exits.
    #[arg(long, env = "PLUGWORKER_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 0.0.0.0:9464); off if unset.
    #[arg(long, env = "PLUGWORKER_METRICS_ADDRESS")]
    pub metrics_address: Option<String>,

    /// Folder holding model files.
    #[arg(long, env = "PLUGWORKER_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,

    /// Do not serve: ask the runner already running for its gRPC health (on
    /// --health-listen, or --listen with --insecure-plaintext; on 127.0.0.1 when that is
    /// all interfaces), print it, and exit 0 only if it is SERVING.
    /// For container health checks (the Dockerfiles' HEALTHCHECK).
    #[arg(long)]
    pub health_probe: bool,

    /// Log format (level comes from RUST_LOG, default info).
    #[arg(long, env = "PLUGWORKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Where Consul is and how to reach it (`--consul-address`, TLS, token...), from the
    /// standard `CONSUL_*` variables: one definition shared with the `plugworker` command.
    #[command(flatten)]
    pub consul: ConsulArgs,
}

impl RunnerConfig {
    /// Where gRPC health is served: its own plaintext port in mesh mode, the main port
    /// with --insecure-plaintext.
    pub(crate) fn health_address(&self) -> SocketAddr {
        if self.insecure_plaintext {
            self.listen
        } else {
            self.health_listen
        }
    }

    pub(crate) fn max_concurrent_runs(&self) -> usize {
        self.max_concurrent_runs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
    }
}
