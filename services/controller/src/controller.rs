//! The job loop: receive, run, deliver, acknowledge, in that order.
//!
//! Invariants (DESIGN.md §3):
//! - a message is deleted only after its result (ok or error) has been published;
//! - permanent errors: error result, then a copy to the DLQ, then delete; never retried;
//! - transient errors: the message becomes visible again after a growing backoff; on the
//!   queue's last allowed receive an error result is published too, and the queue's
//!   redrive policy moves the message to the DLQ;
//! - while a job runs, its message's visibility is extended, so a long job is not
//!   delivered twice;
//! - on shutdown: stop receiving, let running jobs finish within the grace period, and
//!   make the rest visible again at once.

use crate::dispatch::{Dispatcher, Failure, Success};
use crate::metrics::{ControllerMetrics, MetricsSource, Outcome};
use crate::queue::{Delivery, JobQueue, ResultSink};
use plugworker_jobs::{ErrorClass, ErrorInfo, JobResult, Status, Timings, parse_job};
use rand::Rng;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

/// How the controller behaves; see `ControllerArgs` for the flags that set it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Jobs running at once, all algorithms together.
    pub max_in_flight: usize,
    /// Jobs running at once per algorithm.
    pub max_in_flight_per_algorithm: usize,
    /// Concurrent calls to one runner instance.
    pub max_calls_per_instance: usize,
    /// Deadline of one run on a runner.
    pub job_timeout: Duration,
    /// How long a job waits for a runner of its algorithm to appear before it is
    /// released for redelivery.
    pub runner_wait: Duration,
    /// First redelivery delay after a transient error; doubles per attempt.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Extend a running job's visibility every `visibility × heartbeat_fraction`.
    pub heartbeat_fraction: f64,
    /// How long running jobs may finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_in_flight_per_algorithm: 64,
            max_calls_per_instance: 64,
            job_timeout: Duration::from_secs(300),
            runner_wait: Duration::from_secs(10),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            heartbeat_fraction: 0.5,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

struct Context {
    queue: Arc<dyn JobQueue>,
    sink: Arc<dyn ResultSink>,
    dispatcher: Arc<Dispatcher>,
    settings: Settings,
    per_algorithm: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Jobs being handled, by receipt, for releasing them if shutdown outlasts the grace.
    in_flight: Mutex<HashMap<String, Arc<Delivery>>>,
    metrics: ControllerMetrics,
}

pub struct Controller {
    context: Arc<Context>,
}

impl Controller {
    pub fn new(
        queue: Arc<dyn JobQueue>,
        sink: Arc<dyn ResultSink>,
        dispatcher: Arc<Dispatcher>,
        settings: Settings,
    ) -> Self {
        Self {
            context: Arc::new(Context {
                queue,
                sink,
                dispatcher,
                settings,
                per_algorithm: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
                metrics: ControllerMetrics::new(),
            }),
        }
    }

    /// The Prometheus metrics, refreshed from the resolver and the queue at each scrape.
    pub fn metrics_source(&self) -> MetricsSource {
        let mut registry = plugworker_telemetry::metrics::Registry::default();
        self.context.metrics.register(&mut registry);
        let metrics = self.context.metrics.clone();
        let queue = self.context.queue.clone();
        let resolver = self.context.dispatcher.resolver().clone();
        MetricsSource {
            registry: Arc::new(Mutex::new(registry)),
            refresh: Arc::new(move || {
                let (metrics, queue, resolver) = (metrics.clone(), queue.clone(), resolver.clone());
                Box::pin(async move { metrics.refresh(&resolver, queue.as_ref()).await })
            }),
        }
    }

    /// Runs until `shutdown` resolves, then drains as the module docs say.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let context = self.context;
        let slots = Arc::new(Semaphore::new(context.settings.max_in_flight.max(1)));
        let mut jobs = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut queue_errors = 0u32;
        'receiving: loop {
            while jobs.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
                () = &mut shutdown => break 'receiving,
            };
            let want = 1 + slots.available_permits().min(9);
            let receive = context.queue.receive(want);
            let mut receive = std::pin::pin!(receive);
            let (received, stopping) = tokio::select! {
                received = &mut receive => (received, false),
                // A receive in progress is finished, not abandoned: what it brings back is
                // released at once instead of staying invisible for a visibility timeout.
                () = &mut shutdown => (receive.await, true),
            };
            let deliveries = match received {
                Ok(deliveries) => {
                    queue_errors = 0;
                    context.metrics.receives.inc();
                    context
                        .metrics
                        .messages_received
                        .inc_by(deliveries.len() as u64);
                    deliveries
                }
                Err(error) => {
                    queue_errors += 1;
                    tracing::warn!(%error, "receiving jobs failed; retrying");
                    drop(first);
                    if stopping {
                        break 'receiving;
                    }
                    let delay = Duration::from_millis(200) * 2u32.pow(queue_errors.min(6));
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue 'receiving,
                        () = &mut shutdown => break 'receiving,
                    }
                }
            };
            if stopping {
                for delivery in &deliveries {
                    release(&context, delivery).await;
                }
                break 'receiving;
            }
            let mut permits = Some(first);
            for delivery in deliveries {
                let permit = match permits.take() {
                    Some(permit) => permit,
                    None => slots.clone().acquire_owned().await.expect("never closed"),
                };
                context.metrics.in_flight.inc();
                let delivery = Arc::new(delivery);
                context
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(delivery.receipt.clone(), delivery.clone());
                jobs.spawn(handle(context.clone(), delivery, permit));
            }
        }

        let running = jobs.len();
        tracing::info!(running, grace = ?context.settings.shutdown_grace, "controller stopping: no new jobs; letting running jobs finish");
        let drained = tokio::time::timeout(context.settings.shutdown_grace, async {
            while jobs.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            jobs.abort_all();
            while jobs.join_next().await.is_some() {}
            let abandoned: Vec<Arc<Delivery>> = context
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
                .map(|(_, d)| d)
                .collect();
            tracing::warn!(
                count = abandoned.len(),
                "grace period over; releasing unfinished jobs for redelivery"
            );
            for delivery in &abandoned {
                release(&context, delivery).await;
            }
        }
        tracing::info!("controller stopped");
    }
}

/// Makes a message visible again now.
async fn release(context: &Context, delivery: &Delivery) {
    context.metrics.released.inc();
    if let Err(error) = context.queue.retry_later(delivery, Duration::ZERO).await {
        tracing::warn!(%error, message_id = %delivery.message_id, "could not release a job; it reappears after its visibility timeout");
    }
}

async fn handle(context: Arc<Context>, delivery: Arc<Delivery>, slot: OwnedSemaphorePermit) {
    // The CONSUMER span of the job's trace, continuing the producer's when the message
    // carries a `traceparent`.
    let span = tracing::info_span!(
        "process job",
        otel.kind = "consumer",
        messaging.system = "aws_sqs",
        messaging.operation.type = "process",
        messaging.message.id = %delivery.message_id,
        plugworker.receive_count = delivery.receive_count,
        plugworker.algorithm = tracing::field::Empty,
        plugworker.job_id = tracing::field::Empty,
        plugworker.outcome = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    if let Some(traceparent) = &delivery.traceparent {
        plugworker_telemetry::propagation::continue_from(
            &span,
            [(
                plugworker_telemetry::propagation::TRACEPARENT,
                traceparent.as_str(),
            )],
        );
    }
    handle_traced(context, delivery, slot, span.clone())
        .instrument(span)
        .await
}

async fn handle_traced(
    context: Arc<Context>,
    delivery: Arc<Delivery>,
    _slot: OwnedSemaphorePermit,
    span: tracing::Span,
) {
    let received_at = SystemTime::now();
    let started = Instant::now();
    let work = async {
        match parse_job(&delivery.body) {
            Err(error) => {
                let failure = Failure {
                    error: ErrorInfo {
                        code: error.code().into(),
                        message: error.to_string(),
                        class: ErrorClass::Permanent,
                    },
                    runner: None,
                };
                (None, None, Err(failure), Duration::ZERO)
            }
            Ok(job) => {
                tracing::Span::current().record("plugworker.algorithm", job.algorithm.as_str());
                if let Some(id) = &job.id {
                    tracing::Span::current().record("plugworker.job_id", id.as_str());
                }
                let limit = context.algorithm_limit(&job.algorithm);
                let _running = limit.acquire_owned().await.expect("never closed");
                let queued = started.elapsed();
                let outcome = context
                    .dispatcher
                    .run_waiting(&job, context.settings.runner_wait)
                    .await;
                (Some(job.algorithm), job.id, outcome, queued)
            }
        }
    };
    let (algorithm, job_id, outcome, queued) =
        keep_invisible_while(&context, &delivery, work).await;

    let total = started.elapsed();
    let mut result = JobResult {
        job_id,
        message_id: delivery.message_id.clone(),
        algorithm,
        status: Status::Ok,
        result: None,
        error: None,
        runner: None,
        algorithm_version: None,
        trace_id: plugworker_telemetry::propagation::trace_id(&span),
        attempt: delivery.receive_count,
        timings: Timings {
            received_at: humantime::format_rfc3339_millis(received_at).to_string(),
            queued_ms: millis(queued),
            run_ms: 0.0,
            total_ms: millis(total),
        },
    };
    let class = match outcome {
        Ok(Success {
            result: value,
            algorithm_version,
            runner,
            run_micros,
        }) => {
            result.result = Some(value);
            result.algorithm_version = Some(algorithm_version);
            result.runner = Some(runner);
            result.timings.run_ms = run_micros as f64 / 1000.0;
            None
        }
        Err(Failure { error, runner }) => {
            result.status = Status::Error;
            result.runner = runner;
            let class = error.class;
            result.error = Some(error);
            Some(class)
        }
    };
    if let Some(error) = &result.error {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", error.message.as_str());
        span.record(
            "error.type",
            format!("{}/{}", class_name(error.class), error.code).as_str(),
        );
    }
    let algorithm = result.algorithm.clone();
    let outcome = deliver(&context, &delivery, result, class).await;
    span.record("plugworker.outcome", outcome.label());
    context.metrics.job_finished(
        algorithm.as_deref(),
        &context.dispatcher.resolver().snapshot(),
        outcome,
        started.elapsed(),
    );
    context.metrics.in_flight.dec();
    context
        .in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&delivery.receipt);
}

fn class_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Permanent => "permanent",
        ErrorClass::Transient => "transient",
    }
}

/// Publishes the result and acknowledges the message according to its error class.
async fn deliver(
    context: &Context,
    delivery: &Delivery,
    result: JobResult,
    class: Option<ErrorClass>,
) -> Outcome {
    let queue = &context.queue;
    let message_id = &delivery.message_id;
    match class {
        None | Some(ErrorClass::Permanent) => {
            if let Err(error) = context.sink.publish(&result).await {
                tracing::warn!(%error, %message_id, "result not published; the job will be redelivered");
                let _ = queue
                    .retry_later(delivery, backoff(&context.settings, delivery.receive_count))
                    .await;
                return Outcome::TransientError;
            }
            if let Some(error) = result.error.as_ref().filter(|_| class.is_some()) {
                tracing::info!(%message_id, code = %error.code, error = %error.message, "job failed permanently; moving it to the dead-letter queue");
                if let Err(dlq_error) = queue.dead_letter(delivery, error).await {
                    tracing::warn!(error = %dlq_error, %message_id, "could not copy the job to the dead-letter queue; it will be redelivered");
                    let _ = queue
                        .retry_later(delivery, backoff(&context.settings, delivery.receive_count))
                        .await;
                    return Outcome::TransientError;
                }
                context.metrics.dlq_move("permanent_error");
            }
            match queue.complete(delivery).await {
                Ok(()) => {
                    context.metrics.deletes.inc();
                }
                Err(error) => {
                    tracing::warn!(%error, %message_id, "result delivered but the job could not be deleted; it may run again (same message id)");
                }
            };
            if class.is_some() {
                Outcome::PermanentError
            } else {
                Outcome::Ok
            }
        }
        Some(ErrorClass::Transient) => {
            let error = result
                .error
                .as_ref()
                .expect("an error class comes with an error");
            let last = queue
                .max_receive_count()
                .is_some_and(|max| delivery.receive_count >= max);
            let delay = if last {
                // The queue will dead-letter it on the next receive: say why, now.
                tracing::warn!(%message_id, attempt = delivery.receive_count, code = %error.code, error = %error.message, "job failed on its last attempt; the queue moves it to the dead-letter queue");
                if let Err(publish_error) = context.sink.publish(&result).await {
                    tracing::warn!(error = %publish_error, %message_id, "could not publish the final error result");
                }
                context.metrics.dlq_move("max_receives");
                Duration::ZERO
            } else {
                let delay = backoff(&context.settings, delivery.receive_count);
                tracing::info!(%message_id, attempt = delivery.receive_count, code = %error.code, error = %error.message, retry_in = ?delay, "job failed transiently; it will be redelivered");
                delay
            };
            if let Err(error) = queue.retry_later(delivery, delay).await {
                tracing::warn!(%error, %message_id, "could not set the redelivery delay; the visibility timeout applies");
            }
            Outcome::TransientError
        }
    }
}

/// Runs `work`, extending the message's visibility every `visibility × heartbeat_fraction`
/// until it finishes, so a job longer than the visibility timeout is not delivered twice.
async fn keep_invisible_while<T>(
    context: &Context,
    delivery: &Delivery,
    work: impl Future<Output = T>,
) -> T {
    let visibility = context.queue.visibility_timeout();
    let period = visibility.mul_f64(context.settings.heartbeat_fraction.clamp(0.1, 0.9));
    let mut work = std::pin::pin!(work);
    if period.is_zero() {
        return work.await;
    }
    let mut next = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            output = &mut work => return output,
            () = tokio::time::sleep_until(next) => {
                next += period;
                match context.queue.extend(delivery, visibility).await {
                    Ok(()) => {
                        context.metrics.visibility_extensions.inc();
                        tracing::debug!(message_id = %delivery.message_id, ?visibility, "visibility extended");
                    }
                    Err(error) => tracing::warn!(%error, message_id = %delivery.message_id, "could not extend visibility"),
                }
            }
        }
    }
}

impl Context {
    fn algorithm_limit(&self, algorithm: &str) -> Arc<Semaphore> {
        let mut limits = self.per_algorithm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = limits.get(algorithm) {
            return limit.clone();
        }
        limits
            .entry(algorithm.to_string())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.settings.max_in_flight_per_algorithm.max(1),
                ))
            })
            .clone()
    }
}

/// `retry_base × 2^(attempt-1)`, capped at `retry_max`, with ±20 % jitter.
fn backoff(settings: &Settings, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(20);
    let delay = settings
        .retry_base
        .saturating_mul(1 << exponent)
        .min(settings.retry_max);
    delay.mul_f64(rand::rng().random_range(0.8..=1.2))
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let settings = Settings {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(10),
            ..Settings::default()
        };
        let first = backoff(&settings, 1);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        let third = backoff(&settings, 3);
        assert!(third >= Duration::from_millis(3200) && third <= Duration::from_millis(4800));
        assert!(backoff(&settings, 30) <= Duration::from_secs(12));
    }
}
