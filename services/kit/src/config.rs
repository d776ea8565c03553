//! Runner configuration: every flag can also be set through the environment.

use plugworker_consul_client::ConsulArgs;
use plugworker_telemetry::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::settings::AlgorithmSettings;
use crate::transport::ServerParams;

/// Streams per connection beyond the run slots and their queue, by default: room for
/// the calls admission refuses, and for health and listing calls beside the runs.
const STREAMS_BEYOND_SLOTS: usize = 16;

/// Largest request the health service decodes: a `HealthCheckRequest` is a service name.
pub(crate) const HEALTH_MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// Calls open at once on one health-port connection.
const HEALTH_MAX_CONCURRENT_STREAMS: u32 = 8;
/// The health port's flow-control windows (HTTP/2's initial 65,535-byte connection window
/// is also its floor).
const HEALTH_WINDOW_BYTES: u32 = 65_535;
/// Request bytes all calls on the health port together may hold.
const HEALTH_RECEIVING_BYTES: usize = 256 * 1024;

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

    /// HTTP/2 connections open at once on --listen. At the cap a new connection makes
    /// the oldest idle one close (GOAWAY); with none idle, the oldest one.
    #[arg(long, env = "PLUGWORKER_MAX_CONNECTIONS", default_value_t = 128)]
    pub max_connections: usize,

    /// HTTP/2 connections open at once on --health-listen (Consul's check opens one per
    /// check).
    #[arg(long, env = "PLUGWORKER_HEALTH_MAX_CONNECTIONS", default_value_t = 32)]
    pub health_max_connections: usize,

    /// Calls open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
    /// [default: --max-concurrent-runs + --max-queued-runs + 16, so admission stays with
    /// the run slots: the calls beyond them still reach the runner and are refused
    /// RESOURCE_EXHAUSTED, instead of waiting in the client for a stream].
    #[arg(long, env = "PLUGWORKER_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,

    /// A new connection must send its first call's headers within this (the health port
    /// uses the shorter of this and half the --check-interval).
    #[arg(long, env = "PLUGWORKER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// A connection without a call in progress this long is closed (GOAWAY); the health
    /// port uses the shortest of this, --header-read-timeout and half the
    /// --check-interval, and ends a call (a health Watch) that lasts longer.
    #[arg(long, env = "PLUGWORKER_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// Longest silence inside a request body (or wait for --max-receiving-bytes): the
    /// call is then answered UNAVAILABLE and its stream reset (on the health port, at
    /// most --header-read-timeout and half the --check-interval).
    #[arg(long, env = "PLUGWORKER_BODY_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,

    /// HTTP/2 PING after this long without a frame from the client; the connection is
    /// closed if the PING is not answered within --keepalive-timeout.
    #[arg(long, env = "PLUGWORKER_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,

    /// See --keepalive-interval.
    #[arg(long, env = "PLUGWORKER_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub keepalive_timeout: Duration,

    /// A connection older than this gets GOAWAY (calls in flight finish; clients
    /// reconnect, and a mesh client is authorized again).
    #[arg(long, env = "PLUGWORKER_MAX_CONNECTION_AGE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,

    /// How long calls may still run on a connection after its GOAWAY (age, cap) before
    /// it is closed.
    #[arg(long, env = "PLUGWORKER_MAX_CONNECTION_AGE_GRACE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_age_grace: Duration,

    /// HTTP/2 flow-control window of one call's request body, in bytes: what a client
    /// may send that the runner has not read yet.
    #[arg(long, env = "PLUGWORKER_STREAM_WINDOW_BYTES", default_value_t = 256 * 1024)]
    pub stream_window_bytes: u32,

    /// HTTP/2 flow-control window of a whole connection, in bytes: what one connection
    /// can make the runner hold unread, however many calls it opens.
    #[arg(long, env = "PLUGWORKER_CONNECTION_WINDOW_BYTES", default_value_t = 1024 * 1024)]
    pub connection_window_bytes: u32,

    /// Request bytes all calls on --listen together may have reserved for the messages
    /// they are receiving: a message over 16 KiB reserves its whole declared length when
    /// its first bytes arrive and releases it once decoded; calls that need more wait in
    /// turn (within --body-read-timeout) [default: 4 × --max-message-bytes; at least
    /// --max-message-bytes + 5].
    #[arg(long, env = "PLUGWORKER_MAX_RECEIVING_BYTES")]
    pub max_receiving_bytes: Option<usize>,

    /// On SIGTERM, how long in-flight runs may take to finish before the runner exits.
    #[arg(long, env = "PLUGWORKER_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Serve Prometheus metrics at http://ADDRESS/metrics (e.g. 0.0.0.0:9464); off if unset.
    #[arg(long, env = "PLUGWORKER_METRICS_ADDRESS")]
    pub metrics_address: Option<String>,

    /// Once every port is bound (gRPC, health, metrics when served), write their
    /// addresses to this file as JSON, e.g.
    /// `{"grpc": "127.0.0.1:PORT", "health": "127.0.0.1:PORT", "metrics": "127.0.0.1:PORT"}`
    /// (a key only for what is served; with --insecure-plaintext "health" is the gRPC
    /// port; an all-interfaces address is written as loopback). Written to PATH.tmp, then
    /// renamed to PATH, so a reader never sees half a file: with port 0 in the listen
    /// flags, this is how a test or supervisor learns the ports.
    #[arg(long, env = "PLUGWORKER_ADDRESS_FILE")]
    pub address_file: Option<PathBuf>,

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

    /// The algorithms' own settings (`register_settings!`), parsed from the same command
    /// line by [`crate::main`].
    #[arg(skip)]
    pub settings: AlgorithmSettings,
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

    /// The bounds of the server on --listen.
    pub(crate) fn server_params(&self) -> ServerParams {
        let streams = self.max_concurrent_streams.unwrap_or_else(|| {
            u32::try_from(self.max_concurrent_runs() + self.max_queued_runs + STREAMS_BEYOND_SLOTS)
                .unwrap_or(u32::MAX)
        });
        ServerParams {
            port: "main",
            max_connections: self.max_connections,
            max_concurrent_streams: streams.max(1),
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            body_read_timeout: self.body_read_timeout,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            max_connection_age: self.max_connection_age,
            max_connection_age_grace: self.max_connection_age_grace,
            stream_window_bytes: self.stream_window_bytes,
            connection_window_bytes: self.connection_window_bytes,
            max_receiving_bytes: self
                .max_receiving_bytes
                .unwrap_or(self.max_message_bytes.saturating_mul(4)),
            // A message's reservation is one semaphore acquisition (a u32 of permits).
            max_message_bytes: self.max_message_bytes.min(u32::MAX as usize - 5),
            max_call_duration: None,
        }
    }

    /// The bounds of the plaintext health port: `grpc.health.v1` alone, whose requests are
    /// a few bytes. Its idle and header timeouts are under half Consul's check interval,
    /// so connections that hold it open are closed long before the next check comes.
    pub(crate) fn health_server_params(&self) -> ServerParams {
        let quick = (self.check_interval / 2).min(self.header_read_timeout);
        ServerParams {
            port: "health",
            max_connections: self.health_max_connections,
            max_concurrent_streams: HEALTH_MAX_CONCURRENT_STREAMS,
            header_read_timeout: quick,
            idle_timeout: quick.min(self.idle_timeout),
            body_read_timeout: quick.min(self.body_read_timeout),
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            max_connection_age: self.max_connection_age,
            max_connection_age_grace: self.check_timeout,
            stream_window_bytes: HEALTH_WINDOW_BYTES,
            connection_window_bytes: HEALTH_WINDOW_BYTES,
            max_receiving_bytes: HEALTH_RECEIVING_BYTES,
            max_message_bytes: HEALTH_MAX_MESSAGE_BYTES,
            // A Watch lasts no longer than an idle connection may.
            max_call_duration: Some(quick.min(self.idle_timeout)),
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
