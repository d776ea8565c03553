//! The job loop: receive, run, deliver, acknowledge, in that order.
//!
//! Invariants (the delivery guarantee, `docs/delivery.md`):
//! - a message is deleted only after its final result (ok or error) has been published;
//! - a final result is published once per message id by a controller: if the DLQ copy or
//!   the delete that follow it fail, the redelivered message finishes those steps and is
//!   not run or published again ([`Finals`]);
//! - permanent errors: error result, copy to the DLQ, delete; never retried;
//! - transient errors: visible again after a growing backoff; on the last attempt (the
//!   redrive policy's `maxReceiveCount`) the error result is published and the job copied
//!   to the DLQ, like a permanent error;
//! - a result the results queue refuses (too large, characters it does not accept) is
//!   replaced by an error result saying so; a result that cannot be published at all
//!   keeps its message (re-queued without spending a receive) and its run slot, and is
//!   counted in `plugworker_results_unpublishable_total`;
//! - a result is published only while its message is known to be invisible (its receive
//!   or last extension plus the visibility timeout, less a margin); after that it is
//!   dropped, and the redelivery makes it (a publish then in flight is awaited); a
//!   redelivery received here while a result is being delivered waits for it to be
//!   published or dropped;
//! - while a job runs (or waits for a runner), its message's visibility is extended, so a
//!   long job is not delivered twice;
//! - a job waiting for a runner to appear holds no run slot, unless its body came from S3
//!   (bodies in memory stay within `--max-in-flight × --max-job-bytes`);
//! - FIFO queues: jobs of one message group run one at a time, in the order received;
//! - on shutdown: stop receiving, let running jobs finish within the grace period, and
//!   put the rest back without spending one of their receives.

use crate::dispatch::{Dispatcher, Failure, Success};
use crate::metrics::{ControllerMetrics, MetricsSource, Outcome};
use crate::queue::{Carried, Delivery, JobQueue, PublishError, ResultSink};
use crate::stored_pipelines::StoredPipelines;
use plugworker_jobs::{
    ErrorClass, ErrorInfo, Job, JobResult, PipelineInfo, RunnerInfo, Status, StepReport, Timings,
    Work, codes, parse_job,
};
use plugworker_lifecycle::Backoff;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

/// SQS's longest message delay: a re-queued copy cannot be held back longer.
const MAX_REQUEUE_DELAY: Duration = Duration::from_secs(900);
/// How long a result that cannot be published is kept in memory (its job holding its run
/// slot and its message invisible) before the job is re-queued to run again later, on a
/// standard queue. FIFO queues hold up to [`MAX_INVISIBLE`] instead: their re-queue is a
/// release, which spends a receive and carries nothing forward.
const MAX_HOLD: Duration = Duration::from_secs(3600);
/// How long SQS lets a received message stay invisible, counted from its receive.
pub(crate) const MAX_INVISIBLE: Duration = Duration::from_secs(12 * 3600);
/// The longest safety margin kept before a message may be visible again (a publish must
/// be done by then); shorter for short visibility timeouts ([`Lease::margin`]).
const MAX_LEASE_MARGIN: Duration = Duration::from_secs(10);
/// Message ids whose final result this controller published, remembered for redeliveries.
const FINALS_REMEMBERED: usize = 100_000;
/// Message ids of stored-pipeline jobs this controller started, with the revision each
/// ran, remembered so a redelivery runs the same revision.
const REVISIONS_REMEMBERED: usize = 100_000;
/// After the grace period, how long jobs get to put their messages back before they are
/// abandoned (their messages then reappear after the visibility timeout).
const REQUEUE_GRACE: Duration = Duration::from_secs(15);
/// Between failed receives: quick at first (a blip), then every 10 s at most (SQS or the
/// network is down; jobs wait in the queue meanwhile).
const RECEIVE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

pub use crate::config::Settings;

/// What running a job came to.
#[derive(Debug)]
pub(crate) enum Verdict {
    Ok(Success),
    /// Every step of a pipeline finished: their outputs, by step name.
    Pipeline(Box<RawValue>),
    /// The job itself is wrong: retrying cannot help.
    Permanent(ErrorInfo, Option<RunnerInfo>),
    /// Something around the job is wrong for now.
    Transient(ErrorInfo, Option<RunnerInfo>),
}

impl Verdict {
    /// The verdict of `error`, by its class.
    pub(crate) fn failed(error: ErrorInfo, runner: Option<RunnerInfo>) -> Self {
        match error.class {
            ErrorClass::Permanent => Verdict::Permanent(error, runner),
            ErrorClass::Transient => Verdict::Transient(error, runner),
        }
    }
}

impl From<Result<Success, Failure>> for Verdict {
    fn from(outcome: Result<Success, Failure>) -> Self {
        match outcome {
            Ok(success) => Verdict::Ok(success),
            Err(Failure { error, runner }) => Verdict::failed(error, runner),
        }
    }
}

/// The message ids whose final result this controller has published, and whether their
/// DLQ copy is still to be made. A redelivery of one of them (its DLQ copy or its delete
/// failed) finishes those steps instead of running the job and publishing again.
///
/// In memory, so it covers redeliveries to this controller only; bounded (oldest
/// forgotten first), so it covers redeliveries within the last [`FINALS_REMEMBERED`]
/// results.
type Finals = Remembered<Final>;

/// A published final result: whether it is an error, and the DLQ copy still to make.
#[derive(Clone, Debug, PartialEq)]
struct Final {
    failed: bool,
    dead_letter: Option<ErrorInfo>,
}

/// Something remembered per message id, in memory and bounded: past `limit` ids the
/// oldest is forgotten first.
pub(crate) struct Remembered<V> {
    limit: usize,
    inner: Mutex<RememberedInner<V>>,
}

struct RememberedInner<V> {
    by_id: HashMap<String, V>,
    /// Oldest first, for forgetting.
    order: VecDeque<String>,
}

impl<V: Clone> Remembered<V> {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            inner: Mutex::new(RememberedInner {
                by_id: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    pub(crate) fn get(&self, message_id: &str) -> Option<V> {
        lock(&self.inner).by_id.get(message_id).cloned()
    }

    /// Records (or replaces) what is remembered for `message_id`.
    pub(crate) fn record(&self, message_id: &str, value: V) {
        let mut inner = lock(&self.inner);
        let RememberedInner { by_id, order } = &mut *inner;
        if by_id.insert(message_id.to_string(), value).is_none() {
            order.push_back(message_id.to_string());
            while order.len() > self.limit {
                if let Some(oldest) = order.pop_front() {
                    by_id.remove(&oldest);
                }
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A job's place in its FIFO message group: it waits for the job before it, and tells the
/// job after it whether it finished (a job that did not, went back to the queue, so the
/// ones after it must too, to keep the group's order).
struct GroupTurn {
    group: String,
    seq: u64,
    previous: Option<oneshot::Receiver<bool>>,
    done: oneshot::Sender<bool>,
}

/// FIFO groups with a job in this controller: each group's last job (its sequence number
/// and `done` signal).
#[derive(Default)]
struct Groups {
    next_seq: u64,
    last: HashMap<String, (u64, oneshot::Receiver<bool>)>,
}

pub(crate) struct Context {
    queue: Arc<dyn JobQueue>,
    sink: Arc<dyn ResultSink>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) settings: Settings,
    pub(crate) run_slots: Arc<Semaphore>,
    pub(crate) waiting_for_runner: Arc<Semaphore>,
    /// Per-algorithm limits, for algorithms runners announce only: a producer inventing
    /// names cannot grow this map.
    per_algorithm: Mutex<HashMap<String, Arc<Semaphore>>>,
    finals: Finals,
    /// Messages whose result is being delivered here, until it is published or dropped
    /// (a closed channel): a redelivery received meanwhile (its lease ran out, or SQS's
    /// clock ran ahead of ours) waits for that, then finds the final or runs the job.
    delivering: Mutex<HashMap<String, watch::Receiver<()>>>,
    /// Stored-pipeline jobs started here: message id → (pipeline name, revision run).
    pub(crate) revisions: Remembered<(String, u64)>,
    groups: Mutex<Groups>,
    /// Turns true when the shutdown grace is over: unfinished jobs put their messages back.
    give_up: watch::Receiver<bool>,
    pub(crate) metrics: ControllerMetrics,
    /// Named pipelines, as Consul's KV store holds them.
    pub(crate) pipelines: StoredPipelines,
}

pub struct Controller {
    context: Arc<Context>,
    give_up: watch::Sender<bool>,
}

impl Controller {
    pub fn new(
        queue: Arc<dyn JobQueue>,
        sink: Arc<dyn ResultSink>,
        dispatcher: Arc<Dispatcher>,
        settings: Settings,
    ) -> Self {
        let (give_up, give_up_receiver) = watch::channel(false);
        Self {
            context: Arc::new(Context {
                queue,
                sink,
                dispatcher,
                run_slots: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
                waiting_for_runner: Arc::new(Semaphore::new(settings.max_waiting_for_runner)),
                settings,
                per_algorithm: Mutex::new(HashMap::new()),
                finals: Finals::new(FINALS_REMEMBERED),
                delivering: Mutex::default(),
                revisions: Remembered::new(REVISIONS_REMEMBERED),
                groups: Mutex::new(Groups::default()),
                give_up: give_up_receiver,
                metrics: ControllerMetrics::new(),
                pipelines: StoredPipelines::none(),
            }),
            give_up,
        }
    }

    /// Runs jobs that name a stored pipeline from `pipelines` (without it they stay
    /// transient `pipeline_unavailable`).
    pub fn with_pipelines(mut self, pipelines: StoredPipelines) -> Self {
        Arc::get_mut(&mut self.context)
            .expect("set before the controller runs")
            .pipelines = pipelines;
        self
    }

    /// The Prometheus metrics, refreshed from the resolver and the queue at each scrape.
    pub fn metrics_source(&self) -> MetricsSource {
        let mut registry = plugworker_telemetry::metrics::MetricsRegistry::default();
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

    /// True once the resolver has heard from Consul (`/readyz`); jobs are received only then.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.context.dispatcher.resolver().readiness()
    }

    /// Runs until `shutdown` resolves, then drains as the module docs say.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let context = self.context;
        let slots = context.run_slots.clone();
        let mut jobs = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        // No job is received before Consul has answered once: an empty runner view then
        // means "not heard yet", and failing jobs `no_runner` on it would lose them.
        // Stored pipelines are waited for until Consul was asked once (an answer, or a
        // refusal that keeps them unavailable).
        let ready = async {
            context.dispatcher.wait_ready().await;
            context.pipelines.first_attempt().await;
        };
        tokio::select! {
            () = ready => {}
            () = &mut shutdown => {
                tracing::info!("controller stopped before Consul first answered; no job was received");
                return;
            }
        }
        let mut queue_errors = 0u32;
        // The grace period counts from the shutdown request, a receive in progress
        // included, so the whole shutdown takes at most max(grace, receive wait) plus the
        // time to put unfinished jobs back (what the orchestrator's stop timeout must allow).
        let mut stop_requested = None;
        'receiving: loop {
            while jobs.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("never closed"),
                () = &mut shutdown => {
                    stop_requested = Some(tokio::time::Instant::now());
                    break 'receiving;
                }
            };
            let want = 1 + slots.available_permits().min(9);
            let receive = context.queue.receive(want);
            let mut receive = std::pin::pin!(receive);
            let (received, stopping) = tokio::select! {
                received = &mut receive => (received, false),
                // A receive in progress is finished, not abandoned: what it brings back is
                // put back at once instead of staying invisible for a visibility timeout.
                () = &mut shutdown => {
                    stop_requested = Some(tokio::time::Instant::now());
                    (receive.await, true)
                }
            };
            // When the received messages' visibility started, or just after (the response's
            // way back): what each job's lease counts from.
            let received_at = Instant::now();
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
                    let delay = RECEIVE_BACKOFF.delay(queue_errors);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue 'receiving,
                        () = &mut shutdown => {
                            stop_requested = Some(tokio::time::Instant::now());
                            break 'receiving;
                        }
                    }
                }
            };
            if stopping {
                // Received but never started: back without spending a receive, in order
                // (a FIFO group's first message first).
                for delivery in &deliveries {
                    put_back(&context, delivery).await;
                }
                break 'receiving;
            }
            let mut permits = Some(first);
            for delivery in deliveries {
                let permit = match permits.take() {
                    Some(permit) => permit,
                    None => slots.clone().acquire_owned().await.expect("never closed"),
                };
                let turn = delivery
                    .group_id
                    .clone()
                    .map(|group| context.take_turn(group));
                let lease = Lease::new(
                    received_at,
                    context.queue.visibility_timeout(),
                    context.settings.heartbeat_fraction,
                );
                jobs.spawn(handle(
                    context.clone(),
                    Arc::new(delivery),
                    lease,
                    permit,
                    turn,
                ));
            }
        }

        let running = jobs.len();
        tracing::info!(running, grace = ?context.settings.shutdown_grace, "controller stopping: no new jobs; letting running jobs finish");
        let deadline = stop_requested.unwrap_or_else(tokio::time::Instant::now)
            + context.settings.shutdown_grace;
        let drained = tokio::time::timeout_at(deadline, async {
            while jobs.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!(
                count = jobs.len(),
                "grace period over; putting unfinished jobs back for another controller"
            );
            let _ = self.give_up.send(true);
            let requeued = tokio::time::timeout(REQUEUE_GRACE, async {
                while jobs.join_next().await.is_some() {}
            })
            .await
            .is_ok();
            if !requeued {
                tracing::warn!(
                    count = jobs.len(),
                    "jobs could not put their messages back in time; they reappear after their visibility timeout"
                );
                jobs.abort_all();
                while jobs.join_next().await.is_some() {}
            }
        }
        tracing::info!("controller stopped");
    }
}

/// Puts an unfinished job back for another controller, without counting this delivery
/// as an attempt (it was interrupted, not tried).
async fn put_back(context: &Context, delivery: &Delivery) {
    context.metrics.released.inc();
    if let Err(error) = context
        .queue
        .requeue(delivery, carried(delivery, 0), Duration::ZERO)
        .await
    {
        tracing::warn!(%error, message_id = %delivery.message_id, "could not put a job back; it reappears after its visibility timeout");
    }
}

/// What a re-queued copy of `delivery` carries: its attempts so far (this delivery's not
/// counted: it was interrupted, or its run is kept apart as `unpublished`) and
/// `unpublished` more results that could not be published.
fn carried(delivery: &Delivery, unpublished: u32) -> Carried {
    Carried {
        attempts: delivery.attempt().saturating_sub(1),
        unpublished: delivery.unpublished.saturating_add(unpublished),
    }
}

/// Decrements the in-flight gauge however the job ends.
struct InFlight(ControllerMetrics);

impl InFlight {
    fn new(metrics: &ControllerMetrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Until when a delivery's message is known to be invisible to other consumers: its
/// receive, or its last successful extension, plus the visibility timeout. Past that a
/// redelivery may be running the job, so a result published then could be its second.
struct Lease {
    received: Instant,
    visibility: Duration,
    /// Renewed this long after each extension (`visibility × --heartbeat-fraction`).
    period: Duration,
    /// Time kept in hand before the lease ends, for a publish to finish.
    margin: Duration,
    /// Known invisible until then.
    until: Mutex<Instant>,
    /// SQS said the receipt is no longer valid: the message is redelivered or gone.
    lost: std::sync::atomic::AtomicBool,
}

impl Lease {
    /// A lease renewed every `visibility × heartbeat_fraction`; its margin is half of
    /// what is left of the visibility timeout at each renewal (a quarter of it at the
    /// default fraction of 0.5), at most 10 s, so a renewal on time always finds it held.
    fn new(received: Instant, visibility: Duration, heartbeat_fraction: f64) -> Self {
        let period = visibility.mul_f64(heartbeat_fraction.clamp(0.1, 0.9));
        Self {
            received,
            visibility,
            period,
            margin: ((visibility - period) / 2).min(MAX_LEASE_MARGIN),
            until: Mutex::new(received + visibility),
            lost: Default::default(),
        }
    }

    fn margin(&self) -> Duration {
        self.margin
    }

    /// When the next extension is due: a period after the last successful one (or the
    /// receive), whoever asked for it, so a result held between two waits never finds
    /// its lease short.
    fn renewal_due(&self) -> tokio::time::Instant {
        let until = *lock(&self.until);
        tokio::time::Instant::from_std(until - (self.visibility - self.period))
    }

    /// When a publish still in progress is abandoned: half the margin before the lease
    /// ends, so no retry of it reaches SQS once the message may be visible again.
    fn publish_deadline(&self) -> tokio::time::Instant {
        let until = *lock(&self.until);
        tokio::time::Instant::from_std(until - self.margin / 2)
    }

    fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the message stays invisible for at least the margin from now.
    fn holds(&self) -> bool {
        !self.is_lost() && Instant::now() + self.margin() < *lock(&self.until)
    }

    /// The last moment the message can be kept invisible at all: SQS's 12 h from its
    /// receive, less the margin.
    fn ceiling(&self) -> Instant {
        self.received + MAX_INVISIBLE.saturating_sub(self.margin())
    }

    /// Until when a result held from `now` may be held before the job is re-queued: an
    /// hour on a standard queue, whose copy carries the backoff forward at no receive;
    /// on FIFO, where a re-queue is a release (a receive spent, nothing carried), as long
    /// as SQS keeps the message invisible. Never past the 12 h ceiling.
    fn hold_until(&self, fifo: bool, now: Instant) -> Instant {
        match fifo {
            true => self.ceiling(),
            false => self.ceiling().min(now + MAX_HOLD),
        }
    }

    /// Extends the message's visibility by the visibility timeout from now; a success
    /// moves the lease on, a stale receipt ends it. A lease that has run out stays out:
    /// the message may have been received again meanwhile, and SQS may still accept this
    /// delivery's older receipt, so a late success would not make the message ours.
    async fn extend(&self, context: &Context, delivery: &Delivery) -> bool {
        if !self.holds() {
            self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        let asked = Instant::now();
        match context.queue.extend(delivery, self.visibility).await {
            Ok(()) => {
                let mut until = lock(&self.until);
                *until = (*until).max(asked + self.visibility);
                true
            }
            Err(error) => {
                if error.stale_receipt {
                    self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::warn!(%error, message_id = %delivery.message_id, "could not extend visibility");
                false
            }
        }
    }
}

async fn handle(
    context: Arc<Context>,
    delivery: Arc<Delivery>,
    lease: Lease,
    slot: OwnedSemaphorePermit,
    turn: Option<GroupTurn>,
) {
    // The CONSUMER span of the job's trace, continuing the producer's when the message
    // carries a `traceparent`.
    let span = tracing::info_span!(
        "process job",
        otel.kind = "consumer",
        messaging.system = "aws_sqs",
        messaging.operation.type = "process",
        messaging.message.id = %delivery.message_id,
        plugworker.receive_count = delivery.attempt(),
        plugworker.algorithm = tracing::field::Empty,
        plugworker.pipeline = tracing::field::Empty,
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
    let _in_flight = InFlight::new(&context.metrics);
    let (previous, done) = match turn {
        Some(GroupTurn {
            group,
            seq,
            previous,
            done,
        }) => (previous, Some((group, seq, done))),
        None => (None, None),
    };
    let finished = handle_traced(&context, &delivery, &lease, slot, previous, span.clone())
        .instrument(span)
        .await;
    if let Some((group, seq, done)) = done {
        let _ = done.send(finished);
        context.leave_group(&group, seq);
    }
}

/// Handles one delivery; true if its message is gone from the queue (the job finished).
async fn handle_traced(
    context: &Context,
    delivery: &Delivery,
    lease: &Lease,
    slot: OwnedSemaphorePermit,
    previous: Option<oneshot::Receiver<bool>>,
    span: tracing::Span,
) -> bool {
    let received_at = SystemTime::now();
    let started = Instant::now();

    let delivering = lock(&context.delivering).get(&delivery.message_id).cloned();
    if let Some(mut delivering) = delivering {
        tracing::info!(message_id = %delivery.message_id, "its last delivery is still delivering its result here; waiting for its answer");
        let _ = delivering.changed().await;
    }
    if let Some(pending) = context.finals.get(&delivery.message_id) {
        // Published already (by this controller): finish what failed after publishing,
        // never run it or publish it again.
        context.metrics.duplicate_deliveries.inc();
        tracing::info!(message_id = %delivery.message_id, attempt = delivery.attempt(), "final result already published; finishing the message without running it again");
        let outcome = finish(context, delivery, pending).await;
        span.record("plugworker.outcome", outcome.label());
        return outcome.is_final();
    }

    let mut give_up = context.give_up.clone();
    // The job's run slot, kept until its result is out (or the job is back in the queue):
    // a result held through a results outage keeps it, so an outage stops new receives
    // instead of running the backlog into memory.
    let mut slot = Some(slot);
    let work = async {
        // The body (a claim-check pointer's object) is fetched here, in the job's own
        // task and under its heartbeat: a slow S3 holds up this job only, and its message
        // stays invisible meanwhile; a stalled one gives up after --job-timeout.
        let loaded = load(context, delivery).await;
        if let Some(previous) = previous
            && !previous.await.unwrap_or(false)
        {
            // The job before it in its FIFO group went back to the queue: so does this
            // one, or it would finish first.
            return None;
        }
        let ran = run_job(
            context,
            loaded.as_ref().unwrap_or(delivery),
            &mut slot,
            started,
        )
        .await;
        Some((ran, loaded))
    };
    let work = keep_invisible_while(context, delivery, lease, work);
    let finished = tokio::select! {
        finished = work => finished,
        _ = give_up.wait_for(|g| *g) => None,
    };
    let Some((ran, mut loaded)) = finished else {
        // A copy of a message that may be received elsewhere already would be a second job.
        if lease.holds() {
            put_back(context, delivery).await;
        }
        span.record("plugworker.outcome", Outcome::Released.label());
        return false;
    };
    // The body fetched from S3 is not needed any more (copies refer to the object): not
    // kept while the result waits to be published.
    if let Some(loaded) = loaded.as_mut()
        && loaded.stored.is_some()
    {
        loaded.body = String::new();
    }
    let delivery = loaded.as_ref().unwrap_or(delivery);

    let total = started.elapsed();
    let Ran {
        algorithm,
        job_id,
        verdict,
        queued,
        pipeline,
        steps,
    } = ran;
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
        attempt: delivery.attempt(),
        timings: Timings {
            received_at: humantime::format_rfc3339_millis(received_at).to_string(),
            queued_ms: millis(queued),
            run_ms: 0.0,
            total_ms: millis(total),
        },
        pipeline,
        steps,
    };
    let transient = matches!(verdict, Verdict::Transient(..));
    match verdict {
        Verdict::Ok(Success {
            result: value,
            algorithm_version,
            runner,
            run_micros,
        }) => {
            result.result = Some(value);
            result.algorithm_version = Some(algorithm_version);
            result.runner = Some(runner);
            result.timings.run_ms = run_micros as f64 / 1000.0;
        }
        Verdict::Pipeline(value) => {
            result.result = Some(value);
        }
        Verdict::Permanent(error, runner) | Verdict::Transient(error, runner) => {
            result.status = Status::Error;
            result.runner = runner;
            result.error = Some(error);
        }
    }
    if let Some(error) = &result.error {
        record_error(&span, error);
    }
    if let Some(steps) = &result.steps {
        // The runners' own run time, summed over the steps.
        let run_ms: f64 = steps.values().map(|s| s.timings.run_ms).sum();
        result.timings.run_ms = (run_ms * 1000.0).round() / 1000.0;
    }
    let algorithm = result.algorithm.clone();
    let pipeline = result.pipeline.clone();
    let outcome = if transient && delivery.attempt() < context.queue.max_attempts() {
        retry(context, delivery, &result)
            .await
            .unwrap_or(Outcome::TransientError)
    } else {
        deliver(context, delivery, lease, result.capped()).await
    };
    drop(slot);
    span.record("plugworker.outcome", outcome.label());
    context.metrics.job_finished(
        algorithm.as_deref(),
        &context.dispatcher.resolver().snapshot(),
        outcome,
        started.elapsed(),
    );
    if let Some(pipeline) = pipeline {
        context
            .metrics
            .pipeline_finished(&pipeline, outcome, started.elapsed());
    }
    outcome.is_final()
}

/// What running a job came to, and what its result says it ran.
pub(crate) struct Ran {
    pub(crate) algorithm: Option<String>,
    pub(crate) job_id: Option<String>,
    pub(crate) verdict: Verdict,
    /// Waiting for a run slot and a runner before the (first) call.
    pub(crate) queued: Duration,
    pub(crate) pipeline: Option<PipelineInfo>,
    pub(crate) steps: Option<BTreeMap<String, StepReport>>,
}

impl Ran {
    pub(crate) fn new(
        algorithm: Option<String>,
        job_id: Option<String>,
        verdict: Verdict,
        queued: Duration,
    ) -> Self {
        Self {
            algorithm,
            job_id,
            verdict,
            queued,
            pipeline: None,
            steps: None,
        }
    }
}

/// The delivery with its body fetched (`None`: the body is the message's own), within
/// --job-timeout: a stalled fetch is a transient `payload_unavailable`.
async fn load(context: &Context, delivery: &Delivery) -> Option<Delivery> {
    let within = context.settings.job_timeout;
    match tokio::time::timeout(within, context.queue.load(delivery)).await {
        Ok(loaded) => loaded,
        Err(_) => {
            tracing::warn!(message_id = %delivery.message_id, ?within, "the job's body was not read within --job-timeout");
            Some(Delivery {
                unreadable: Some(ErrorInfo::transient(
                    codes::PAYLOAD_UNAVAILABLE,
                    format!("the job's body was not read within {within:?} (--job-timeout)"),
                )),
                ..delivery.clone()
            })
        }
    }
}

/// Parses and runs the job. `slot` is the job's run slot; it is held again when this
/// returns.
async fn run_job(
    context: &Context,
    delivery: &Delivery,
    slot: &mut Option<OwnedSemaphorePermit>,
    started: Instant,
) -> Ran {
    if let Some(error) = &delivery.unreadable {
        return Ran::new(
            None,
            None,
            Verdict::failed(error.clone(), None),
            Duration::ZERO,
        );
    }
    let Job { id, work, payload } = match parse_job(&delivery.body) {
        Ok(job) => job,
        Err(error) => {
            let error = ErrorInfo::permanent(error.code(), error.to_string());
            // Whatever is wrong, a valid id (and the pipeline named) is echoed: the
            // producer can tell which job failed.
            let id = plugworker_jobs::job_id(&delivery.body);
            return Ran {
                pipeline: plugworker_jobs::job_pipeline(&delivery.body),
                ..Ran::new(None, id, Verdict::failed(error, None), Duration::ZERO)
            };
        }
    };
    if let Some(id) = &id {
        tracing::Span::current().record("plugworker.job_id", id.as_str());
    }
    match work {
        Work::Algorithm(algorithm) => {
            run_algorithm(context, delivery, slot, started, id, algorithm, &payload).await
        }
        Work::Pipeline(pipeline) => {
            crate::pipeline::run(context, delivery, pipeline, id, &payload, slot, started).await
        }
    }
}

/// Runs a job of one algorithm.
async fn run_algorithm(
    context: &Context,
    delivery: &Delivery,
    slot: &mut Option<OwnedSemaphorePermit>,
    started: Instant,
    id: Option<String>,
    algorithm: String,
    payload: &RawValue,
) -> Ran {
    tracing::Span::current().record("plugworker.algorithm", algorithm.as_str());
    let resolver = context.dispatcher.resolver();
    if resolver.snapshot().instances(&algorithm).is_empty()
        && !context.settings.runner_wait.is_zero()
    {
        // Waiting for a runner to appear: without a run slot, so jobs whose runners are
        // up are not held up behind it; bounded by its own permits. A body fetched from
        // S3 keeps its slot, so the bodies in memory stay within --max-in-flight ×
        // --max-job-bytes (an inline one is at most the queue's message size).
        if let Ok(waiting) = context.waiting_for_runner.clone().try_acquire_owned() {
            if delivery.stored.is_none() {
                *slot = None;
            }
            if context
                .dispatcher
                .wait_for_runner(&algorithm, context.settings.runner_wait)
                .await
            {
                tracing::info!(%algorithm, "a runner appeared for a waiting job");
            }
            drop(waiting);
        }
    }
    context.hold_slot(slot).await;
    if resolver.snapshot().instances(&algorithm).is_empty() {
        let error = ErrorInfo::transient(
            codes::NO_RUNNER,
            format!("no healthy runner serves {algorithm:?} yet"),
        );
        let verdict = Verdict::Transient(error, None);
        return Ran::new(Some(algorithm), id, verdict, started.elapsed());
    }
    let limit = context.algorithm_limit(&algorithm);
    let _running = limit.acquire_owned().await.expect("never closed");
    let queued = started.elapsed();
    let verdict = Verdict::from(
        context
            .dispatcher
            .run(&algorithm, payload, context.dispatcher.job_timeout())
            .await,
    );
    Ran::new(Some(algorithm), id, verdict, queued)
}

/// Marks `span` failed with `error` (`error.type` = `<class>/<code>`).
pub(crate) fn record_error(span: &tracing::Span, error: &ErrorInfo) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", error.message.as_str());
    span.record(
        "error.type",
        format!("{}/{}", class_name(error.class), error.code).as_str(),
    );
}

fn class_name(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::Permanent => "permanent",
        ErrorClass::Transient => "transient",
    }
}

/// A transient failure with attempts left: visible again after a backoff.
async fn retry(context: &Context, delivery: &Delivery, result: &JobResult) -> Option<Outcome> {
    let error = result.error.as_ref()?;
    let delay = context.settings.retry_backoff().delay(delivery.attempt());
    tracing::info!(message_id = %delivery.message_id, attempt = delivery.attempt(), code = %error.code, error = %error.message, retry_in = ?delay, "job failed transiently; it will be redelivered");
    if let Err(error) = context.queue.retry_later(delivery, delay).await {
        tracing::warn!(%error, message_id = %delivery.message_id, "could not set the redelivery delay; the visibility timeout applies");
    }
    Some(Outcome::TransientError)
}

/// Publishes the final result (or, if the queue refuses it, an error result saying why),
/// then copies failed jobs to the DLQ and deletes the message.
///
/// A result that cannot be published is kept (with the job's run slot) and published
/// again after `--retry-base × 2^n` (n: the failures so far, across re-queued copies; at
/// most 15 min), the message kept invisible meanwhile, so an outage of the results queue
/// costs no extra runs. After [`MAX_HOLD`] (standard queues), near SQS's 12 h ceiling
/// (FIFO), or at shutdown, the job is re-queued carrying n, and its next copy backs off
/// from there. A result is published only while its message is known invisible
/// ([`Lease`]): once it may be visible again it is dropped, and the redelivery makes it.
/// A request in flight then is awaited. A redelivery received here while a result is
/// being delivered waits until it is published (then finds the final instead of running
/// the job again) or dropped.
async fn deliver(
    context: &Context,
    delivery: &Delivery,
    lease: &Lease,
    result: JobResult,
) -> Outcome {
    let message_id = &delivery.message_id;
    let hold_until = lease.hold_until(delivery.group_id.is_some(), Instant::now());
    let mut failures = 0u32;
    // Until the final is recorded and the message finished, or the result dropped.
    let _delivering = context.delivering(message_id);
    let result = loop {
        if !lease.holds() {
            tracing::warn!(%message_id, "the message may be visible again (its visibility could not be extended): the result is dropped, the redelivery makes it");
            return Outcome::Unpublished;
        }
        // Under the heartbeat, until half a margin before the lease ends; no attempt
        // starts after that (the sink makes one per call), and the one in flight is
        // awaited below.
        let mut publishing = std::pin::pin!(publish(context, delivery, result.clone()));
        let error = match heartbeat(context, delivery, lease, publishing.as_mut(), true).await {
            Some(Ok(published)) => break published,
            Some(Err(error)) => error,
            None => {
                // The request in flight may still land, and its answer says whether it
                // did: wait for it (no other attempt starts: the sink does not retry), so
                // a redelivery received here meanwhile finds the final instead of running
                // the job again.
                match tokio::time::timeout(lease.visibility, publishing).await {
                    Ok(Ok(published)) => {
                        tracing::warn!(%message_id, "the result was published as its message may have become visible again; a redelivery here finishes it without running it");
                        break published;
                    }
                    _ => {
                        tracing::warn!(%message_id, "the message may be visible again before the result was published: the publish is abandoned, the redelivery makes the result");
                        return Outcome::Unpublished;
                    }
                }
            }
        };
        context.metrics.unpublishable(&error);
        failures += 1;
        let delay = context
            .settings
            .retry_backoff()
            .delay(delivery.unpublished.saturating_add(failures))
            .min(MAX_REQUEUE_DELAY);
        let give_up = *context.give_up.borrow();
        if give_up || Instant::now() + delay > hold_until {
            // Keep the message, and its receives: deleting it would lose the job, letting
            // the redrive policy take it would dead-letter it without a result.
            if !lease.holds() {
                // A copy of a message that may be received elsewhere would be a second job.
                tracing::error!(%error, %message_id, "result could not be published; the message may be visible again, so the redelivery runs the job");
                return Outcome::Unpublished;
            }
            tracing::error!(%error, %message_id, retry_in = ?delay, "result could not be published; the job is put back and will run again");
            if let Err(error) = context
                .queue
                .requeue(delivery, carried(delivery, failures), delay)
                .await
            {
                tracing::warn!(%error, %message_id, "could not put the job back; it reappears after its visibility timeout");
            }
            return Outcome::Unpublished;
        }
        tracing::error!(%error, %message_id, retry_in = ?delay, "result could not be published; keeping it to publish again");
        let mut stop = context.give_up.clone();
        keep_invisible_while(context, delivery, lease, async {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|g| *g) => {}
            }
        })
        .await;
    };
    let state = Final {
        failed: result.error.is_some(),
        dead_letter: result.error,
    };
    context.finals.record(message_id, state.clone());
    finish(context, delivery, state).await
}

/// Publishes the result, or, if the queue refuses it (too large, content), a small error
/// result saying so (the job then goes to the DLQ for a redrive once the cause is fixed).
async fn publish(
    context: &Context,
    delivery: &Delivery,
    result: JobResult,
) -> Result<JobResult, PublishError> {
    let refused = match context.sink.publish(&result, delivery).await {
        Ok(()) => return Ok(result),
        Err(refused @ (PublishError::TooLarge { .. } | PublishError::Rejected(_))) => refused,
        Err(error) => return Err(error),
    };
    let code = match refused {
        PublishError::TooLarge { .. } => codes::RESULT_TOO_LARGE,
        _ => codes::RESULT_UNPUBLISHABLE,
    };
    tracing::warn!(message_id = %delivery.message_id, error = %refused, "the results queue refuses this result; publishing an error result instead");
    let replacement = JobResult {
        status: Status::Error,
        result: None,
        error: Some(ErrorInfo::permanent(
            code,
            format!(
                "the job ran ({}), but its result could not be published: {refused}",
                match &result.error {
                    None => "ok".to_string(),
                    Some(error) => format!("error {}", error.code),
                }
            ),
        )),
        ..result
    };
    context.sink.publish(&replacement, delivery).await?;
    Ok(replacement)
}

/// After the final result is out: the DLQ copy (for failed jobs), then the delete, then
/// (for jobs that succeeded: a DLQ copy refers to it) the job's body in S3.
async fn finish(context: &Context, delivery: &Delivery, state: Final) -> Outcome {
    let message_id = &delivery.message_id;
    let failed = state.failed;
    if let Some(error) = &state.dead_letter {
        tracing::info!(%message_id, code = %error.code, error = %error.message, "job failed; copying it to the dead-letter queue");
        match context.queue.dead_letter(delivery, error).await {
            Ok(copied) => {
                context.finals.record(
                    message_id,
                    Final {
                        failed,
                        dead_letter: None,
                    },
                );
                if copied {
                    context.metrics.dlq_move(match error.class {
                        ErrorClass::Permanent => "permanent_error",
                        ErrorClass::Transient => "max_receives",
                    });
                }
            }
            Err(dlq_error) => {
                // The result is out; the redelivery will try the copy again (and not
                // publish again).
                tracing::warn!(error = %dlq_error, %message_id, "could not copy the job to the dead-letter queue; it will be redelivered for that");
                let delay = context
                    .settings
                    .retry_backoff()
                    .delay(delivery.receive_count);
                if let Err(error) = context.queue.retry_later(delivery, delay).await {
                    tracing::warn!(%error, %message_id, "could not set the redelivery delay");
                }
                return Outcome::DeadLetterPending;
            }
        }
    }
    match context.queue.complete(delivery).await {
        Ok(()) => {
            context.metrics.deletes.inc();
            if !failed {
                context.queue.release_payload(delivery).await;
            }
        }
        Err(error) => {
            tracing::warn!(%error, %message_id, "result delivered but the job could not be deleted; if it is received again it is deleted without running (here) or may run again (elsewhere, same message id)");
        }
    }
    if failed {
        Outcome::PermanentError
    } else {
        Outcome::Ok
    }
}

/// Runs `work`, extending the message's visibility a `visibility × heartbeat_fraction`
/// after each extension (a failed one is tried again a quarter period later) until it
/// finishes, so a job longer than the visibility timeout is not delivered twice. Once the
/// lease is lost, `work` runs on unextended (its result will be dropped).
async fn keep_invisible_while<T>(
    context: &Context,
    delivery: &Delivery,
    lease: &Lease,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    match heartbeat(context, delivery, lease, work.as_mut(), false).await {
        Some(output) => output,
        None => work.await,
    }
}

/// Polls `work`, extending the lease when due; `None` if the lease is lost first or,
/// with `abandon`, if it is about to run out ([`Lease::publish_deadline`]): `work` is
/// then dropped (`abandon`) or left to the caller.
async fn heartbeat<T>(
    context: &Context,
    delivery: &Delivery,
    lease: &Lease,
    mut work: std::pin::Pin<&mut impl Future<Output = T>>,
    abandon: bool,
) -> Option<T> {
    if lease.period.is_zero() {
        return Some(work.await);
    }
    let mut next = lease.renewal_due();
    // An extension in progress, polled beside `work` and the deadline: one that SQS is
    // slow to answer (the SDK retrying it) must hold up neither.
    let mut extending: Option<std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>>> = None;
    loop {
        let deadline = lease.publish_deadline();
        tokio::select! {
            output = &mut work => return Some(output),
            () = tokio::time::sleep_until(deadline), if abandon => return None,
            extended = async { extending.as_mut().expect("guarded").await }, if extending.is_some() => {
                extending = None;
                if extended {
                    context.metrics.visibility_extensions.inc();
                    tracing::debug!(message_id = %delivery.message_id, visibility = ?lease.visibility, "visibility extended");
                    next = lease.renewal_due();
                } else if lease.is_lost() {
                    return None;
                } else {
                    next = tokio::time::Instant::now() + lease.period / 4;
                }
            }
            () = tokio::time::sleep_until(next), if extending.is_none() => {
                extending = Some(Box::pin(lease.extend(context, delivery)));
            }
        }
    }
}

/// A result being delivered (`Context::delivering`), until this is dropped.
struct Delivering<'a> {
    context: &'a Context,
    message_id: String,
    _settled: watch::Sender<()>,
    waiting: watch::Receiver<()>,
}

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        let mut delivering = lock(&self.context.delivering);
        if delivering
            .get(&self.message_id)
            .is_some_and(|waiting| waiting.same_channel(&self.waiting))
        {
            delivering.remove(&self.message_id);
        }
    }
}

impl Context {
    fn delivering(&self, message_id: &str) -> Delivering<'_> {
        let (settled, waiting) = watch::channel(());
        lock(&self.delivering).insert(message_id.to_string(), waiting.clone());
        Delivering {
            context: self,
            message_id: message_id.to_string(),
            _settled: settled,
            waiting,
        }
    }

    /// Takes the job's run slot again if it gave it up (to wait for a runner).
    pub(crate) async fn hold_slot(&self, slot: &mut Option<OwnedSemaphorePermit>) {
        if slot.is_none() {
            let permit = self.run_slots.clone().acquire_owned().await;
            *slot = Some(permit.expect("never closed"));
        }
    }

    /// The limit of an algorithm runners announce (the caller checked the resolver).
    pub(crate) fn algorithm_limit(&self, algorithm: &str) -> Arc<Semaphore> {
        let mut limits = lock(&self.per_algorithm);
        if let Some(limit) = limits.get(algorithm) {
            return limit.clone();
        }
        limits
            .entry(algorithm.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.per_algorithm_limit().max(1))))
            .clone()
    }

    /// Queues a job behind the last job of its FIFO group received here.
    fn take_turn(&self, group: String) -> GroupTurn {
        let (done, receiver) = oneshot::channel();
        let mut groups = lock(&self.groups);
        groups.next_seq += 1;
        let seq = groups.next_seq;
        let previous = groups
            .last
            .insert(group.clone(), (seq, receiver))
            .map(|(_, previous)| previous);
        GroupTurn {
            group,
            seq,
            previous,
            done,
        }
    }

    /// Forgets the group if this job was its last one here.
    fn leave_group(&self, group: &str, seq: u64) {
        let mut groups = lock(&self.groups);
        if groups.last.get(group).is_some_and(|(last, _)| *last == seq) {
            groups.last.remove(group);
        }
    }
}

pub(crate) fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_back_off_from_retry_base_up_to_retry_max() {
        let settings = Settings {
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(10),
            ..Settings::default()
        };
        let backoff = settings.retry_backoff();
        assert_eq!(backoff.ceiling(1), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(3), Duration::from_secs(4));
        assert_eq!(backoff.ceiling(30), Duration::from_secs(10));
        assert!(
            backoff.delay(30) <= Duration::from_secs(10),
            "jitter never exceeds the cap"
        );
    }

    #[tokio::test]
    async fn made_up_algorithm_names_cost_no_limiter_and_each_gets_one_final_result() {
        use crate::memory::{ChannelSink, MemoryQueue};
        // An empty registry: Consul answers, and no runner serves anything.
        let registry =
            plugworker_embedded_consul::Registry::spawn("127.0.0.1:0", Default::default())
                .await
                .unwrap();
        let consul =
            plugworker_consul_client::ConsulClient::new(plugworker_consul_client::ConsulConfig {
                address: registry.url(),
                ..Default::default()
            })
            .unwrap();
        let resolver = Arc::new(plugworker_discovery::Resolver::start(
            consul,
            Duration::from_secs(1),
        ));
        let queue = Arc::new(MemoryQueue::new(
            Duration::from_millis(50),
            Duration::from_secs(30),
            1,
        ));
        let jobs = 500;
        for i in 0..jobs {
            queue.send(format!(
                r#"{{"algorithm": "made-up-{i}-{}", "payload": {{}}}}"#,
                "x".repeat(200)
            ));
        }
        let (sink, mut results) = tokio::sync::mpsc::unbounded_channel();
        let settings = Settings {
            runner_wait: Duration::ZERO,
            ..Settings::default()
        };
        let dispatcher = Arc::new(Dispatcher::new(resolver, 4, Duration::from_secs(5)));
        let controller = Controller::new(
            queue.clone(),
            Arc::new(ChannelSink(sink)),
            dispatcher,
            settings,
        );
        let context = controller.context.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(controller.run(async {
            let _ = stopped.await;
        }));
        let mut seen = std::collections::HashSet::new();
        while seen.len() < jobs {
            let result = results.recv().await.unwrap();
            assert_eq!(result.error.as_ref().unwrap().code, codes::NO_RUNNER);
            assert!(seen.insert(result.message_id), "one final result per job");
        }
        let _ = stop.send(());
        running.await.unwrap();
        assert!(
            lock(&context.per_algorithm).is_empty(),
            "no limiter for unannounced names"
        );
        assert!(lock(&context.groups).last.is_empty());
        assert_eq!(
            queue.dead_letters().len(),
            jobs,
            "each copied to the DLQ with its error"
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn a_lease_holds_until_its_margin_and_bounds_the_hold() {
        let received = Instant::now();
        let lease = Lease::new(received, Duration::from_secs(30), 0.5);
        assert_eq!(lease.margin(), Duration::from_millis(7500));
        assert_eq!(
            Lease::new(received, Duration::from_secs(30), 0.9).margin(),
            Duration::from_millis(1500),
            "renewed late, a smaller margin"
        );
        assert!(lease.holds());
        // Extended late: known invisible only until then.
        *lock(&lease.until) = Instant::now() + Duration::from_secs(5);
        assert!(!lease.holds(), "within the margin of its end");
        *lock(&lease.until) = Instant::now() + Duration::from_secs(30);
        assert!(lease.holds());
        lease.lost.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(!lease.holds(), "a stale receipt ends it, for good");
        *lock(&lease.until) = Instant::now() + Duration::from_secs(60);
        assert!(!lease.holds());
        let ceiling = received + MAX_INVISIBLE - lease.margin();
        assert_eq!(lease.ceiling(), ceiling);
        let now = received + Duration::from_secs(60);
        assert_eq!(lease.hold_until(false, now), now + MAX_HOLD);
        assert_eq!(lease.hold_until(true, now), ceiling, "FIFO holds on");
        let late = received + Duration::from_secs(11 * 3600 + 1800);
        assert_eq!(lease.hold_until(false, late), ceiling, "never past 12 h");
        assert_eq!(
            Lease::new(received, Duration::from_secs(3600), 0.5).margin(),
            MAX_LEASE_MARGIN
        );
    }

    #[test]
    fn finals_are_remembered_up_to_a_bound() {
        let finals = Finals::new(FINALS_REMEMBERED);
        let done = |failed| Final {
            failed,
            dead_letter: None,
        };
        finals.record(
            "a",
            Final {
                failed: true,
                dead_letter: Some(ErrorInfo::permanent("x", "y")),
            },
        );
        assert!(
            finals.get("a").unwrap().dead_letter.is_some(),
            "DLQ copy pending"
        );
        finals.record("a", done(true));
        assert_eq!(finals.get("a"), Some(done(true)));
        for i in 0..FINALS_REMEMBERED {
            finals.record(&i.to_string(), done(false));
        }
        assert!(finals.get("a").is_none(), "the oldest is forgotten");
        assert!(finals.get("1").is_some());
    }
}
