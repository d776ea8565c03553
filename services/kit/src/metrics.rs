//! The runner's Prometheus metrics (served on `--metrics-address`).

use crate::transport::Reason;
use plugworker_telemetry::metrics::latency_buckets;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex, OnceLock};

/// Label values are the algorithm's registered name and a fixed code name: `'static`,
/// so counting a run allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RunLabels {
    pub algorithm: &'static str,
    /// gRPC status code name: `ok`, `invalid_argument`, `deadline_exceeded`, …
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AlgorithmLabel {
    pub algorithm: &'static str,
}

/// Runs by algorithm and outcome, their latency, and runs in progress; and the HTTP/2
/// server's bounds at work.
pub(crate) struct RunnerMetrics {
    pub runs: Family<RunLabels, Counter>,
    pub run_seconds: Family<AlgorithmLabel, Histogram>,
    pub in_flight: Family<AlgorithmLabel, Gauge>,
    pub server: ServerMetrics,
    /// Each algorithm's current version and whether it serves degraded, asked at scrape.
    pub status: Arc<AlgorithmStatus>,
}

/// One loaded algorithm's state, for the health details and the metrics.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct AlgorithmDetail {
    pub algorithm: &'static str,
    /// What it answers with now ([`crate::Algorithm::version`]).
    pub version: String,
    /// What it is serving through, if anything ([`crate::Algorithm::degraded`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

type ReadDetails = Box<dyn Fn() -> Vec<AlgorithmDetail> + Send + Sync>;

/// `plugworker_runner_algorithm_version_info` and `plugworker_runner_algorithm_degraded`,
/// read from the loaded algorithms at scrape time: a version that changes while serving
/// (a reloaded gallery) needs no bookkeeping of its own.
#[derive(Default)]
pub(crate) struct AlgorithmStatus {
    read: OnceLock<ReadDetails>,
}

impl std::fmt::Debug for AlgorithmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlgorithmStatus").finish_non_exhaustive()
    }
}

impl AlgorithmStatus {
    /// Where the details come from (the runner's state, once it exists).
    pub fn read_from(&self, read: ReadDetails) {
        let _ = self.read.set(read);
    }

    pub fn details(&self) -> Vec<AlgorithmDetail> {
        self.read.get().map(|read| read()).unwrap_or_default()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    algorithm: &'static str,
    version: String,
}

impl Collector for AlgorithmStatus {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let details = self.details();
        let mut family = encoder.encode_descriptor(
            "plugworker_runner_algorithm_version_info",
            "The version each loaded algorithm answers with now (1 per algorithm)",
            None,
            MetricType::Gauge,
        )?;
        for detail in &details {
            ConstGauge::new(1).encode(family.encode_family(&VersionLabels {
                algorithm: detail.algorithm,
                version: detail.version.clone(),
            })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "plugworker_runner_algorithm_degraded",
            "1 while an algorithm serves through a problem (stale data it cannot refresh; see the health details)",
            None,
            MetricType::Gauge,
        )?;
        for detail in &details {
            ConstGauge::new(i64::from(detail.degraded.is_some())).encode(family.encode_family(
                &AlgorithmLabel {
                    algorithm: detail.algorithm,
                },
            )?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PortLabel {
    /// `main` or `health`.
    pub port: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClosedLabels {
    pub port: &'static str,
    /// A [`Reason`] label: `closed_at_cap`, `evicted`, `header_timeout`, …
    pub reason: &'static str,
}

/// What the server's bounds do, by port (see `transport::ServerParams`).
#[derive(Clone, Default)]
pub(crate) struct ServerMetrics {
    connections: Family<PortLabel, Gauge>,
    streams: Arc<OpenStreams>,
    closed: Family<ClosedLabels, Counter>,
}

/// How many streams each port has open, counted when the metrics are scraped (the
/// connections keep their own counts): a call touches no gauge shared by the port.
type CountStreams = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// `plugworker_runner_streams`, by port: each port's count, asked at scrape time.
#[derive(Default)]
struct OpenStreams {
    ports: Mutex<Vec<(&'static str, CountStreams)>>,
}

impl std::fmt::Debug for OpenStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStreams").finish_non_exhaustive()
    }
}

impl Collector for OpenStreams {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ports = self.ports.lock().expect("open streams lock");
        let mut family = encoder.encode_descriptor(
            "plugworker_runner_streams",
            "Open HTTP/2 streams (calls in progress), by port",
            None,
            MetricType::Gauge,
        )?;
        for (port, count) in ports.iter() {
            // `None` once the port's server has stopped.
            if let Some(open) = count() {
                ConstGauge::new(open as i64).encode(family.encode_family(&PortLabel { port })?)?;
            }
        }
        Ok(())
    }
}

impl ServerMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "plugworker_runner_connections",
            "Open HTTP/2 connections, by port (bounded by --max-connections / --health-max-connections)",
            self.connections.clone(),
        );
        registry.register_collector(Box::new(self.streams.clone()));
        registry.register(
            "plugworker_runner_server_closed",
            "Connections refused or closed, and calls reset, by a server bound: by port and reason",
            self.closed.clone(),
        );
    }

    /// Counts `port`'s open streams with `count` at each scrape.
    pub fn count_streams(&self, port: &'static str, count: CountStreams) {
        let mut ports = self.streams.ports.lock().expect("open streams lock");
        ports.retain(|(_, count)| count().is_some());
        ports.push((port, count));
    }

    /// One port's series, looked up once.
    pub fn port(&self, port: &'static str) -> PortMetrics {
        PortMetrics {
            port,
            connections: self.connections.get_or_create(&PortLabel { port }).clone(),
            closed: self.closed.clone(),
        }
    }
}

/// One port's server metrics: gauges touched per connection and per call (atomics), the
/// counter family only when a bound acts.
pub(crate) struct PortMetrics {
    port: &'static str,
    pub connections: Gauge,
    closed: Family<ClosedLabels, Counter>,
}

impl PortMetrics {
    pub fn closed(&self, reason: Reason) {
        self.closed
            .get_or_create(&ClosedLabels {
                port: self.port,
                reason: reason.label(),
            })
            .inc();
    }
}

impl RunnerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            runs: Family::default(),
            run_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            in_flight: Family::default(),
            server: ServerMetrics::default(),
            status: Arc::default(),
        };
        metrics.server.register(registry);
        registry.register_collector(Box::new(metrics.status.clone()));
        registry.register(
            "plugworker_runner_runs",
            "Runs answered, by algorithm and gRPC status code",
            metrics.runs.clone(),
        );
        registry.register(
            "plugworker_runner_run_duration_seconds",
            "Time from a Run call's arrival to its answer, by algorithm (successful runs)",
            metrics.run_seconds.clone(),
        );
        registry.register(
            "plugworker_runner_runs_in_flight",
            "Runs being processed or waiting for a slot, by algorithm",
            metrics.in_flight.clone(),
        );
        metrics
    }
}

/// One algorithm's series, looked up once: a run then touches only atomics, not the
/// families' locks and label hashing.
pub(crate) struct AlgorithmMetrics {
    algorithm: &'static str,
    runs: Family<RunLabels, Counter>,
    /// `runs` by gRPC code number, each series created at its first use so that only
    /// codes that happened are exported (as with the family alone).
    runs_by_code: [OnceLock<Counter>; CODES],
    in_flight: Gauge,
    run_seconds: Histogram,
}

/// gRPC status codes are 0 (`OK`) to 16 (`UNAUTHENTICATED`).
const CODES: usize = 17;

impl AlgorithmMetrics {
    pub fn new(metrics: &RunnerMetrics, algorithm: &'static str) -> Self {
        let label = AlgorithmLabel { algorithm };
        Self {
            algorithm,
            runs: metrics.runs.clone(),
            runs_by_code: std::array::from_fn(|_| OnceLock::new()),
            in_flight: metrics.in_flight.get_or_create(&label).clone(),
            run_seconds: metrics.run_seconds.get_or_create(&label).clone(),
        }
    }

    /// Counts the run as in flight until the returned guard drops, so a run whose
    /// caller went away (its future dropped) is not counted forever.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Counts an answered run; a successful one's duration (from arrival to answer) goes
    /// into the histogram.
    pub fn answered(&self, code: tonic::Code, duration: Option<std::time::Duration>) {
        let slot = &self.runs_by_code[(code as usize).min(CODES - 1)];
        slot.get_or_init(|| {
            self.runs
                .get_or_create(&RunLabels {
                    algorithm: self.algorithm,
                    code: code_label(code),
                })
                .clone()
        })
        .inc();
        if let Some(duration) = duration {
            self.run_seconds.observe(duration.as_secs_f64());
        }
    }
}

/// A run in progress, counted in `plugworker_runner_runs_in_flight` while this lives.
pub(crate) struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `invalid_argument` for `InvalidArgument`: the label values Prometheus conventions use.
pub(crate) fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_codes_become_snake_case_labels() {
        assert_eq!(
            super::code_label(tonic::Code::ResourceExhausted),
            "resource_exhausted"
        );
        assert_eq!(super::code_label(tonic::Code::Ok), "ok");
        assert_eq!(
            super::code_label(tonic::Code::InvalidArgument),
            "invalid_argument"
        );
        assert_eq!(
            super::code_label(tonic::Code::DeadlineExceeded),
            "deadline_exceeded"
        );
    }
}
