//! The controller's Prometheus metrics (served at `/metrics` beside `/healthz`).
//!
//! Counted where things happen (jobs, SQS operations, visibility extensions); resolver
//! and queue-depth gauges are refreshed from their sources at each scrape.

use crate::queue::JobQueue;
use futures::future::BoxFuture;
use plugworker_discovery::Resolver;
use plugworker_telemetry::metrics::{Registry, latency_buckets};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a job ended (label `outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Result published, message deleted.
    Ok,
    /// Error result published, message moved to the DLQ.
    PermanentError,
    /// Left for redelivery (or, on its last receive, for the queue's redrive to the DLQ).
    TransientError,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::PermanentError => "permanent_error",
            Outcome::TransientError => "transient_error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The job's algorithm; empty for messages that are not valid jobs.
    pub algorithm: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlgorithmLabel {
    pub algorithm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `permanent_error` (moved by the controller) or `max_receives` (by the redrive policy).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `visible` (waiting) or `in_flight` (received, not yet deleted).
    pub state: String,
}

#[derive(Clone)]
pub struct ControllerMetrics {
    pub jobs: Family<JobLabels, Counter>,
    pub job_seconds: Family<JobLabels, Histogram>,
    pub in_flight: Gauge,
    pub receives: Counter,
    pub messages_received: Counter,
    pub deletes: Counter,
    pub dlq_moves: Family<ReasonLabel, Counter>,
    pub visibility_extensions: Counter,
    pub runner_instances: Family<AlgorithmLabel, Gauge>,
    pub consul_errors: Counter,
    pub queue_messages: Family<StateLabel, Gauge>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    pub fn new() -> Self {
        Self {
            jobs: Family::default(),
            job_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            in_flight: Gauge::default(),
            receives: Counter::default(),
            messages_received: Counter::default(),
            deletes: Counter::default(),
            dlq_moves: Family::default(),
            visibility_extensions: Counter::default(),
            runner_instances: Family::default(),
            consul_errors: Counter::default(),
            queue_messages: Family::default(),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "plugworker_jobs",
            "Jobs finished, by algorithm and outcome",
            self.jobs.clone(),
        );
        registry.register(
            "plugworker_job_duration_seconds",
            "Time from a job's receipt to its result being delivered, by algorithm and outcome",
            self.job_seconds.clone(),
        );
        registry.register(
            "plugworker_jobs_in_flight",
            "Jobs received and not yet finished",
            self.in_flight.clone(),
        );
        registry.register(
            "plugworker_sqs_receives",
            "ReceiveMessage calls that succeeded",
            self.receives.clone(),
        );
        registry.register(
            "plugworker_sqs_messages_received",
            "Messages received from the jobs queue",
            self.messages_received.clone(),
        );
        registry.register(
            "plugworker_sqs_deletes",
            "Messages deleted after their result was delivered",
            self.deletes.clone(),
        );
        registry.register(
            "plugworker_dlq_moves",
            "Jobs sent to the dead-letter queue, by reason",
            self.dlq_moves.clone(),
        );
        registry.register(
            "plugworker_visibility_extensions",
            "Visibility timeout extensions for long-running jobs",
            self.visibility_extensions.clone(),
        );
        registry.register(
            "plugworker_runner_instances",
            "Passing runner instances per algorithm, as the resolver sees them",
            self.runner_instances.clone(),
        );
        registry.register(
            "plugworker_consul_watch_errors",
            "Failed Consul requests of the resolver's watches",
            self.consul_errors.clone(),
        );
        registry.register(
            "plugworker_queue_messages",
            "Approximate messages in the jobs queue, by state",
            self.queue_messages.clone(),
        );
    }

    pub fn job_finished(&self, algorithm: Option<&str>, outcome: Outcome, took: Duration) {
        let labels = JobLabels {
            algorithm: algorithm.unwrap_or_default().to_string(),
            outcome: outcome.label().to_string(),
        };
        self.jobs.get_or_create(&labels).inc();
        self.job_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn dlq_move(&self, reason: &str) {
        self.dlq_moves
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Values read from their sources: instances per algorithm, Consul errors, queue depth.
    pub async fn refresh(&self, resolver: &Resolver, queue: &dyn JobQueue) {
        let snapshot = resolver.snapshot();
        self.runner_instances.clear();
        for (algorithm, count) in snapshot.instance_counts() {
            self.runner_instances
                .get_or_create(&AlgorithmLabel {
                    algorithm: algorithm.to_string(),
                })
                .set(count as i64);
        }
        self.consul_errors.inner().store(
            resolver.stats().consul_errors.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        match queue.depth().await {
            Ok(Some(depth)) => {
                let set = |state: &str, value: u64| {
                    self.queue_messages
                        .get_or_create(&StateLabel {
                            state: state.to_string(),
                        })
                        .set(value as i64);
                };
                set("visible", depth.visible);
                set("in_flight", depth.in_flight);
            }
            Ok(None) => {}
            Err(error) => tracing::debug!(%error, "queue depth unavailable for metrics"),
        }
    }
}

/// A metrics registry and how to refresh it before a scrape.
#[derive(Clone)]
pub struct MetricsSource {
    pub registry: Arc<Mutex<Registry>>,
    pub refresh: Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
}

impl MetricsSource {
    /// The text exposition, refreshed.
    pub async fn render(&self) -> String {
        (self.refresh)().await;
        plugworker_telemetry::metrics::render(
            &self.registry.lock().unwrap_or_else(|e| e.into_inner()),
        )
    }
}
