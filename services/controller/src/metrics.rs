//! The controller's Prometheus metrics (served at `/metrics` beside `/healthz` and `/readyz`).
//!
//! Counted where things happen (jobs, SQS operations, visibility extensions); resolver
//! and queue-depth gauges are refreshed from their sources at each scrape.

use crate::queue::JobQueue;
use futures::future::BoxFuture;
use plugworker_discovery::{Resolver, Snapshot};
use plugworker_telemetry::metrics::{MetricsRegistry, latency_buckets};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `algorithm` label of jobs for algorithms no runner has announced.
pub const UNKNOWN_ALGORITHM: &str = "unknown";

/// How a job's delivery ended (label `outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Result published, message deleted.
    Ok,
    /// Final error result published (a permanent error, or a transient one on the last
    /// attempt), job copied to the DLQ, message deleted.
    PermanentError,
    /// Left for redelivery after a backoff, attempts remaining.
    TransientError,
    /// Final result published, but the DLQ copy failed: redelivered to finish it.
    DeadLetterPending,
    /// The result could not be published: the job is kept for another try.
    Unpublished,
    /// Put back unfinished at shutdown (or behind a FIFO predecessor that was).
    Released,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::PermanentError => "permanent_error",
            Outcome::TransientError => "transient_error",
            Outcome::DeadLetterPending => "dead_letter_pending",
            Outcome::Unpublished => "unpublished",
            Outcome::Released => "released",
        }
    }

    /// Whether the message is gone from the queue.
    pub fn is_final(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::PermanentError)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The job's algorithm if some runner announces (or announced) it, `unknown` if none
    /// ever did, empty for messages that are not valid jobs.
    pub algorithm: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    /// A stored pipeline's name, or `inline` (written in the job, or a name the store
    /// does not hold: producers cannot grow the set of series).
    pub pipeline: String,
    /// How the job's delivery ended ([`Outcome::label`]).
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabel {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// The step's algorithm if some runner announces (or announced) it, else `unknown`.
    pub algorithm: String,
    /// `ok`, `permanent_error` or `transient_error` (the job's deadline passed).
    pub status: String,
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnpublishableLabel {
    /// `too_large`, `rejected` (content refused) or `unavailable`.
    pub reason: String,
}

#[derive(Clone)]
pub struct ControllerMetrics {
    /// Results the results queue did not take (after the error-result fallback, for
    /// refused results): their jobs are kept and run again. Alert on any increase.
    pub results_unpublishable: Family<UnpublishableLabel, Counter>,
    /// Deliveries of messages whose final result this controller had already published
    /// (a failed DLQ copy or delete): finished without running or publishing again.
    pub duplicate_deliveries: Counter,
    pub jobs: Family<JobLabels, Counter>,
    pub job_seconds: Family<JobLabels, Histogram>,
    pub in_flight: Gauge,
    pub receives: Counter,
    pub messages_received: Counter,
    pub deletes: Counter,
    pub dlq_moves: Family<ReasonLabel, Counter>,
    pub visibility_extensions: Counter,
    pub released: Counter,
    pub runner_instances: Family<AlgorithmLabel, Gauge>,
    pub consul_errors: Counter,
    /// Runner services refused jobs because nothing the operator set admits them (no
    /// intention allows this controller, not in --allow-service), once per service.
    pub services_refused: Counter,
    /// 1 once the resolver has heard from Consul (jobs are received only then).
    pub consul_ready: Gauge,
    pub queue_messages: Family<StateLabel, Gauge>,
    pub pipeline_jobs: Family<PipelineLabels, Counter>,
    pub pipeline_job_seconds: Family<PipelineLabel, Histogram>,
    pub pipeline_steps: Family<StepLabels, Counter>,
    pub pipeline_step_seconds: Family<AlgorithmLabel, Histogram>,
    /// Algorithms seen in the resolver's view: the only names used as label values, so
    /// job producers cannot grow the set of series at will.
    known_algorithms: Arc<Mutex<HashSet<String>>>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    pub fn new() -> Self {
        Self {
            results_unpublishable: Family::default(),
            duplicate_deliveries: Counter::default(),
            jobs: Family::default(),
            job_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            in_flight: Gauge::default(),
            receives: Counter::default(),
            messages_received: Counter::default(),
            deletes: Counter::default(),
            dlq_moves: Family::default(),
            visibility_extensions: Counter::default(),
            released: Counter::default(),
            runner_instances: Family::default(),
            consul_errors: Counter::default(),
            services_refused: Counter::default(),
            consul_ready: Gauge::default(),
            queue_messages: Family::default(),
            pipeline_jobs: Family::default(),
            pipeline_job_seconds: Family::new_with_constructor(
                || Histogram::new(latency_buckets()),
            ),
            pipeline_steps: Family::default(),
            pipeline_step_seconds: Family::new_with_constructor(|| {
                Histogram::new(latency_buckets())
            }),
            known_algorithms: Arc::default(),
        }
    }

    pub fn register(&self, registry: &mut MetricsRegistry) {
        registry.register(
            "plugworker_results_unpublishable",
            "Final results the results queue did not take; their jobs are kept and run again (alert on any)",
            self.results_unpublishable.clone(),
        );
        registry.register(
            "plugworker_duplicate_deliveries",
            "Deliveries of jobs whose final result was already published here, finished without publishing again",
            self.duplicate_deliveries.clone(),
        );
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
            "plugworker_jobs_released",
            "Jobs handed back to the queue unfinished at shutdown, for redelivery",
            self.released.clone(),
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
            "plugworker_runner_services_refused",
            "Runner services refused jobs because no intention (nor --allow-service) admits them, once per service",
            self.services_refused.clone(),
        );
        registry.register(
            "plugworker_consul_ready",
            "1 once the controller has heard from Consul; no job is received before",
            self.consul_ready.clone(),
        );
        registry.register(
            "plugworker_queue_messages",
            "Approximate messages in the jobs queue, by state",
            self.queue_messages.clone(),
        );
        registry.register(
            "plugworker_pipeline_jobs",
            "Pipeline jobs finished, by pipeline (stored name or inline) and status (the delivery's outcome)",
            self.pipeline_jobs.clone(),
        );
        registry.register(
            "plugworker_pipeline_job_duration_seconds",
            "Time from a pipeline job's receipt to its result being delivered, by pipeline",
            self.pipeline_job_seconds.clone(),
        );
        registry.register(
            "plugworker_pipeline_steps",
            "Pipeline steps ended, by algorithm and status",
            self.pipeline_steps.clone(),
        );
        registry.register(
            "plugworker_pipeline_step_duration_seconds",
            "Time a pipeline step took, retries within the delivery included, by algorithm",
            self.pipeline_step_seconds.clone(),
        );
    }

    /// Counts a finished job. `snapshot` is the resolver's current view, which says
    /// whether `algorithm` is a name runners announce.
    pub fn job_finished(
        &self,
        algorithm: Option<&str>,
        snapshot: &Snapshot,
        outcome: Outcome,
        took: Duration,
    ) {
        let labels = JobLabels {
            algorithm: self.algorithm_label(algorithm, snapshot),
            outcome: outcome.label().to_string(),
        };
        self.jobs.get_or_create(&labels).inc();
        self.job_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts a finished pipeline job: stored pipelines (those with a revision) by name,
    /// the rest as `inline`.
    pub fn pipeline_finished(
        &self,
        pipeline: &plugworker_jobs::PipelineInfo,
        outcome: Outcome,
        took: Duration,
    ) {
        let name = match pipeline.revision {
            Some(_) => pipeline.name.clone(),
            None => plugworker_jobs::pipeline::INLINE.to_string(),
        };
        self.pipeline_jobs
            .get_or_create(&PipelineLabels {
                pipeline: name.clone(),
                status: outcome.label().to_string(),
            })
            .inc();
        self.pipeline_job_seconds
            .get_or_create(&PipelineLabel { pipeline: name })
            .observe(took.as_secs_f64());
    }

    /// Counts a pipeline step that ended with `status`.
    pub fn step_finished(
        &self,
        algorithm: &str,
        snapshot: &Snapshot,
        status: &str,
        took: Duration,
    ) {
        let algorithm = self.algorithm_label(Some(algorithm), snapshot);
        self.pipeline_steps
            .get_or_create(&StepLabels {
                algorithm: algorithm.clone(),
                status: status.to_string(),
            })
            .inc();
        self.pipeline_step_seconds
            .get_or_create(&AlgorithmLabel { algorithm })
            .observe(took.as_secs_f64());
    }

    fn algorithm_label(&self, algorithm: Option<&str>, snapshot: &Snapshot) -> String {
        let Some(algorithm) = algorithm else {
            return String::new();
        };
        let mut known = self
            .known_algorithms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if known.contains(algorithm) || !snapshot.instances(algorithm).is_empty() {
            known.insert(algorithm.to_string());
            algorithm.to_string()
        } else {
            UNKNOWN_ALGORITHM.to_string()
        }
    }

    pub fn unpublishable(&self, error: &crate::queue::PublishError) {
        let reason = match error {
            crate::queue::PublishError::TooLarge { .. } => "too_large",
            crate::queue::PublishError::Rejected(_) => "rejected",
            crate::queue::PublishError::Unavailable(_) => "unavailable",
        };
        self.results_unpublishable
            .get_or_create(&UnpublishableLabel {
                reason: reason.to_string(),
            })
            .inc();
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
        self.services_refused.inner().store(
            resolver.stats().services_refused.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.consul_ready.set(i64::from(resolver.is_ready()));
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
    pub registry: Arc<Mutex<MetricsRegistry>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_announced_algorithms_become_label_values() {
        let metrics = ControllerMetrics::new();
        let empty = Snapshot::default();
        assert_eq!(metrics.algorithm_label(None, &empty), "");
        assert_eq!(
            metrics.algorithm_label(Some("made-up-by-a-producer"), &empty),
            UNKNOWN_ALGORITHM
        );
        // Once announced, a name stays a label even while its runners are gone.
        metrics
            .known_algorithms
            .lock()
            .unwrap()
            .insert("ocr".into());
        assert_eq!(metrics.algorithm_label(Some("ocr"), &empty), "ocr");
    }
}
