//! Telemetry shared by every plugworker binary: logs, traces and metrics.
//!
//! - **Logs** go to stderr through `tracing`, human-readable or JSON, filtered by
//!   `RUST_LOG` (default `info`); [`redirect_logs`] sends them to a file instead from then
//!   on (`plugworker dev` on a terminal, where they would break up its table).
//! - **Traces**: `tracing` spans are exported as OpenTelemetry spans over OTLP/gRPC when an
//!   exporter is configured with the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_TRACES_EXPORTER=otlp`), sampled by
//!   `OTEL_TRACES_SAMPLER`, named by `OTEL_SERVICE_NAME` (default: the binary's role) and
//!   described by `OTEL_RESOURCE_ATTRIBUTES`. With none configured, no exporter exists:
//!   no network traffic and no error messages. [`propagation`] carries the W3C context
//!   across SQS messages and gRPC calls, so one job is one trace.
//! - **Metrics**: Prometheus text exposition of a [`prometheus_client`] registry
//!   ([`metrics`]).
//!
//! A binary's `main` calls [`bootstrap`] once, after parsing its arguments: it builds the
//! Tokio runtime, installs logs and traces on it, and flushes the traces when dropped.

pub mod metrics;
pub mod propagation;

pub use prometheus_client;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, fmt};

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event, for log shippers.
    Json,
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] (or drop) flushes it.
#[must_use = "dropping the guard shuts tracing down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter. Call it after the work
    /// is done but while the Tokio runtime still exists (the exporter's gRPC client
    /// runs on it).
    pub fn shutdown(mut self) {
        self.flush_and_stop();
    }

    fn flush_and_stop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("telemetry: flushing spans failed: {error}");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush_and_stop();
    }
}

/// A process's Tokio runtime with its telemetry installed: what [`bootstrap`] returns.
/// Run the program with [`block_on`](Self::block_on); dropping it (at the end of `main`,
/// outside any async context) flushes the spans still buffered, then stops the runtime.
#[must_use = "dropping the process stops its runtime and flushes its traces"]
pub struct Process {
    // Declared before the runtime: dropped (flushed) while the runtime still exists.
    telemetry: Option<Telemetry>,
    runtime: tokio::runtime::Runtime,
}

impl Process {
    /// Runs `future` to completion on the process's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The runtime, for what `block_on` does not cover.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(telemetry) = self.telemetry.take() {
            // The exporter's gRPC client runs on this runtime, and its shutdown blocks: it
            // runs on one of the runtime's blocking threads while the others serve the
            // export.
            let _ = self
                .runtime
                .block_on(self.runtime.spawn_blocking(move || telemetry.shutdown()));
        }
    }
}

/// The start of every plugworker binary, after its arguments are parsed (it parses
/// nothing itself): builds the multi-threaded Tokio runtime and, when `telemetry` names
/// the service and log format, installs logs and traces on it ([`init`]). `None` is for
/// short-lived helpers that must not log or trace (container health probes).
///
/// Fails only if the runtime cannot be built (no threads or file descriptors left).
pub fn bootstrap(telemetry: Option<(&str, LogFormat)>) -> std::io::Result<Process> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let telemetry = telemetry.map(|(service_name, format)| {
        // The trace exporter's client is created inside the runtime it will run on.
        let _context = runtime.enter();
        init(service_name, format)
    });
    Ok(Process { telemetry, runtime })
}

/// Whether the environment (`var`) asks for an OTLP trace exporter.
fn exporter_configured(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return false;
    }
    match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        Some("none") => false,
        Some("otlp") => true,
        _ => set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    }
}

/// Installs the global subscriber and, if configured, the OTLP trace pipeline.
///
/// `service_name` is used when `OTEL_SERVICE_NAME` is not set. Must be called inside a
/// Tokio runtime context (`runtime.enter()`) when an exporter may be configured. Safe to
/// call more than once: later calls install nothing and return an inert guard.
pub fn init(service_name: &str, format: LogFormat) -> Telemetry {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: escape codes garble log files and collectors, and
    // writing them into every span's fields costs a runner's hot path about a microsecond.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // Two writers, one live at a time: stderr until [`redirect_logs`], then the file
    // (never coloured); without RUST_LOG, also [`quiet_by_default`]. Each event costs an
    // atomic load or two.
    let rust_log = std::env::var_os("RUST_LOG").is_some();
    let on_stderr = filter_fn(move |meta| {
        !LOGS_REDIRECTED.load(Ordering::Relaxed) && (rust_log || within_default(meta))
    });
    let in_file = filter_fn(move |meta| {
        LOGS_REDIRECTED.load(Ordering::Relaxed) && (rust_log || within_default(meta))
    });
    let logs = match format {
        LogFormat::Human => vec![
            fmt::layer()
                .with_ansi(colour)
                .with_writer(std::io::stderr)
                .with_filter(filter().and(on_stderr))
                .boxed(),
            fmt::layer()
                .with_ansi(false)
                .with_writer(|| LogFile)
                .with_filter(filter().and(in_file))
                .boxed(),
        ],
        LogFormat::Json => vec![
            fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_filter(filter().and(on_stderr))
                .boxed(),
            fmt::layer()
                .json()
                .with_writer(|| LogFile)
                .with_filter(filter().and(in_file))
                .boxed(),
        ],
    };

    let mut provider = None;
    let mut exporter_error = None;
    if exporter_configured(|name| std::env::var(name).ok()) {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                let mut resource = Resource::builder();
                if std::env::var("OTEL_SERVICE_NAME").is_err() {
                    resource = resource.with_service_name(service_name.to_string());
                }
                provider = Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(resource.build())
                        .build(),
                );
            }
            Err(error) => exporter_error = Some(error.to_string()),
        }
    }
    // Spans are exported at INFO and above whatever RUST_LOG says: quieting logs must not
    // cut traces short.
    // Busy/idle time, thread and source-location attributes are off: they cost a clock
    // read per poll and several attributes per span, and say nothing a job's trace needs
    // (span durations are exact without them). See docs/benchmarks.md, tracing overhead.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("plugworker"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(LevelFilter::INFO)
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if !installed {
        return Telemetry { provider: None };
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    if let Some(error) = exporter_error {
        tracing::warn!(%error, "OTLP exporter not started; traces are off");
    }
    if provider.is_some() {
        TRACES_EXPORTED.store(true, Ordering::Release);
        tracing::info!(service = service_name, "exporting traces over OTLP");
    }
    Telemetry { provider }
}

static TRACES_EXPORTED: AtomicBool = AtomicBool::new(false);

/// Whether, without RUST_LOG, only warnings and errors are logged ([`quiet_by_default`]).
static QUIET: AtomicBool = AtomicBool::new(false);

fn within_default(meta: &tracing::Metadata<'_>) -> bool {
    !QUIET.load(Ordering::Relaxed) || *meta.level() <= tracing::Level::WARN
}

/// From now on, unless RUST_LOG says otherwise, log warnings and errors only: for a
/// one-shot command whose output is its answer (`plugworker algorithms`, `call`), where
/// INFO lines (a certificate issued, a connection made) are noise.
pub fn quiet_by_default() {
    QUIET.store(true, Ordering::Relaxed);
}

static LOG_FILE: OnceLock<std::fs::File> = OnceLock::new();
static LOGS_REDIRECTED: AtomicBool = AtomicBool::new(false);

/// From now on, this process's log lines go to `file` (appended, without colour) instead
/// of stderr. Once per process: returns false, and changes nothing, if logs were already
/// redirected.
pub fn redirect_logs(file: std::fs::File) -> bool {
    if LOG_FILE.set(file).is_err() {
        return false;
    }
    LOGS_REDIRECTED.store(true, Ordering::Relaxed);
    true
}

/// Whether [`redirect_logs`] sent the logs to a file.
pub fn logs_redirected() -> bool {
    LOGS_REDIRECTED.load(Ordering::Relaxed)
}

/// The writer of redirected log lines: the file given to [`redirect_logs`] (stderr
/// before, which its filter never lets happen).
struct LogFile;

impl std::io::Write for LogFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match LOG_FILE.get() {
            Some(mut file) => file.write(bytes),
            None => std::io::stderr().write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match LOG_FILE.get() {
            Some(mut file) => file.flush(),
            None => std::io::stderr().flush(),
        }
    }
}

/// Whether this process exports spans ([`init`] installed an OTLP pipeline). Hot paths
/// use it to leave out span fields only a trace backend reads.
pub fn traces_exported() -> bool {
    TRACES_EXPORTED.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::exporter_configured;

    fn with(vars: &[(&str, &str)]) -> bool {
        exporter_configured(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    /// `plugworker dev` on a terminal: after the redirect, log lines land in the file,
    /// without colour, and not before it. (One process per test: the subscriber is global;
    /// ERROR, which any RUST_LOG the tests run with lets through.)
    #[test]
    fn redirected_logs_go_to_the_file_from_then_on() {
        let _telemetry = super::init("test", super::LogFormat::Human);
        tracing::error!("before the redirect");
        let path = std::env::temp_dir().join(format!("telemetry-{}.log", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        assert!(super::redirect_logs(file));
        assert!(super::logs_redirected());
        tracing::error!(answer = 42, "after the redirect");
        let again = std::fs::File::create(path.with_extension("other")).unwrap();
        assert!(!super::redirect_logs(again), "once per process");
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("other"));
        assert!(
            text.contains("after the redirect") && text.contains("answer=42"),
            "{text}"
        );
        assert!(!text.contains("before the redirect"), "{text}");
        assert!(
            !text.contains('\x1b'),
            "no colour codes in a file: {text:?}"
        );
    }

    #[test]
    fn an_exporter_exists_only_when_the_environment_asks_for_one() {
        assert!(!with(&[]), "nothing configured: no exporter, no traffic");
        assert!(!with(&[
            ("OTEL_SERVICE_NAME", "x"),
            ("OTEL_TRACES_SAMPLER", "always_on")
        ]));
        assert!(!with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]));
        assert!(with(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4317"
        )]));
        assert!(with(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4317"
        )]));
        assert!(with(&[("OTEL_TRACES_EXPORTER", "otlp")]));
        assert!(!with(&[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")
        ]));
        assert!(!with(&[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")
        ]));
    }
}
