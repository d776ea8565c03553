//! The runner's Prometheus metrics (served on `--metrics-address`).

use plugworker_telemetry::metrics::latency_buckets;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RunLabels {
    pub algorithm: String,
    /// gRPC status code name: `ok`, `invalid_argument`, `deadline_exceeded`, …
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AlgorithmLabel {
    pub algorithm: String,
}

/// Runs by algorithm and outcome, their latency, and runs in progress.
pub(crate) struct RunnerMetrics {
    pub runs: Family<RunLabels, Counter>,
    pub run_seconds: Family<AlgorithmLabel, Histogram>,
    pub in_flight: Family<AlgorithmLabel, Gauge>,
}

impl RunnerMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            runs: Family::default(),
            run_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            in_flight: Family::default(),
        };
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

/// `invalid_argument` for `InvalidArgument`: the label values Prometheus conventions use.
pub(crate) fn code_label(code: tonic::Code) -> String {
    let name = format!("{code:?}");
    let mut label = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            label.push('_');
        }
        label.push(c.to_ascii_lowercase());
    }
    label
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_codes_become_snake_case_labels() {
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
