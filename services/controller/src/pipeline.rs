//! Running a pipeline job: its steps scheduled as soon as their inputs exist, each
//! dispatched like a job of its own, and one verdict for the whole job
//! (docs/delivery.md, "Pipelines").
//!
//! - Resolution: an inline pipeline is parsed here; a named one is the revision the
//!   [`StoredPipelines`](crate::stored_pipelines::StoredPipelines) watch holds when the job
//!   starts. A graph that does not check out is a permanent `invalid_pipeline`.
//! - Scheduling: every step whose dependencies have finished starts at once, in the
//!   pipeline's order; independent steps run in parallel. A step holds a run slot while
//!   it calls ([`Slots`]): the job's own covers one call; each further one takes a slot
//!   with `try_acquire` (one that gets none waits for the job's own), so a job never
//!   waits for a slot while holding one. A step waiting for a runner holds none, and when
//!   every running step of the job waits for a runner, the job gives its own slot back
//!   (under a `--max-waiting-for-runner` permit, as a single-algorithm job does). Each
//!   call also holds its algorithm's limit, as a single-algorithm job does.
//! - Failures: a transient one (`no_runner` included) is retried within this delivery
//!   after `--retry-base × 2^n`, on whichever instance the dispatcher picks, until the
//!   job's `--job-timeout` (counted from when the job starts running) has passed (the
//!   heartbeat keeps the message invisible); then the job's verdict is transient, and its
//!   redelivery runs the pipeline from the start. A permanent one ends the job (running
//!   steps are cancelled, none starts), unless the step is optional: it then yields
//!   `null` and the job goes on.
//! - Revisions: a stored pipeline's job runs the revision the watch holds when its first
//!   delivery here starts; a redelivery to this controller (or a re-queued copy, which
//!   keeps the message id) runs that revision again while the store still keeps it
//!   ([`StoredPipelines::revision`](crate::stored_pipelines::StoredPipelines::revision)).

use crate::controller::{Context, Ran, Verdict, millis, record_error};
use crate::dispatch::Failure;
use crate::queue::Delivery;
use crate::stored_pipelines::{Lookup, Stored};
use futures::stream::{FuturesUnordered, StreamExt};
use plugworker_jobs::pipeline::{INLINE, KV_PREFIX, Pipeline, Step};
use plugworker_jobs::{
    ErrorClass, ErrorInfo, PipelineInfo, PipelineRef, StepReport, StepTimings, codes,
};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::Instrument;

/// Runs a pipeline job. `slot` is the job's run slot (held again when this returns);
/// `started` when the delivery's handling began, which the result's timings count from.
/// `--job-timeout` counts from now: the body's fetch and a wait behind the job's FIFO
/// group are not the pipeline's time.
pub(crate) async fn run(
    context: &Context,
    delivery: &Delivery,
    reference: PipelineRef,
    job_id: Option<String>,
    payload: &RawValue,
    slot: &mut Option<OwnedSemaphorePermit>,
    started: Instant,
) -> Ran {
    let deadline = Instant::now() + context.settings.job_timeout;
    let (info, pipeline) = resolve(context, &delivery.message_id, reference).await;
    tracing::Span::current().record("plugworker.pipeline", info.name.as_str());
    let pipeline = match pipeline {
        Ok(pipeline) => pipeline,
        Err(error) => {
            let verdict = Verdict::failed(error, None);
            return Ran {
                pipeline: Some(info),
                ..Ran::new(None, job_id, verdict, Duration::ZERO)
            };
        }
    };
    context.hold_slot(slot).await;
    let schedule = Schedule {
        context,
        pipeline: &pipeline,
        payload,
        started,
        deadline,
        attempt: delivery.attempt(),
        // A body fetched from S3 keeps the job's slot (bodies in memory stay within
        // --max-in-flight × --max-job-bytes), as for a single-algorithm job.
        slots: Slots::new(context, slot.take(), delivery.stored.is_some()),
    };
    let (verdict, steps, first_call) = schedule.run().await;
    *slot = schedule.slots.into_own();
    context.hold_slot(slot).await;
    Ran {
        pipeline: Some(info),
        steps: Some(steps),
        ..Ran::new(None, job_id, verdict, first_call.unwrap_or_default())
    }
}

/// The pipeline a job names and what it is called in its result.
async fn resolve(
    context: &Context,
    message_id: &str,
    reference: PipelineRef,
) -> (PipelineInfo, Result<Arc<Pipeline>, ErrorInfo>) {
    let invalid = |message: String| ErrorInfo::permanent(codes::INVALID_PIPELINE, message);
    match reference {
        PipelineRef::Inline(raw) => (
            PipelineInfo {
                name: INLINE.to_string(),
                revision: None,
            },
            Pipeline::parse(raw.get())
                .map(Arc::new)
                .map_err(|e| invalid(e.to_string())),
        ),
        PipelineRef::Named(name) => {
            let key = format!("{KV_PREFIX}{name}");
            // A redelivery runs the revision its first delivery here ran, while kept.
            let earlier = context
                .revisions
                .get(message_id)
                .filter(|(ran, _)| *ran == name)
                .and_then(|(_, revision)| context.pipelines.revision(&name, revision));
            let lookup = match earlier {
                Some(stored) => Lookup::Found(stored),
                None => context.pipelines.get(&name).await,
            };
            let (revision, pipeline) = match lookup {
                Lookup::Found(Stored { revision, pipeline }) => {
                    if pipeline.is_ok() {
                        context
                            .revisions
                            .record(message_id, (name.clone(), revision));
                    }
                    (
                        Some(revision),
                        pipeline.map_err(|error| {
                            invalid(format!(
                                "the pipeline stored at {key} (revision {revision}) is invalid: {error}"
                            ))
                        }),
                    )
                }
                Lookup::Unknown => (
                    None,
                    Err(invalid(format!(
                        "no stored pipeline named {name:?} (no key {key} in Consul's KV store)"
                    ))),
                ),
                Lookup::NotYet => (
                    None,
                    Err(ErrorInfo::transient(
                        codes::PIPELINE_UNAVAILABLE,
                        format!(
                            "the stored pipelines have not been read from Consul yet, so {name:?} cannot be looked up (the controller's token needs read on {KV_PREFIX})"
                        ),
                    )),
                ),
            };
            (PipelineInfo { name, revision }, pipeline)
        }
    }
}

/// The run slots of one pipeline job: the job's own (which covers one call at a time)
/// and extra ones taken with `try_acquire` for calls made at the same time. A step holds
/// one only while it calls. When every running step waits for a runner, the job's own
/// slot is given back under a `--max-waiting-for-runner` permit (unless `keep`: the
/// job's body came from S3), and taken again before the next call.
struct Slots<'a> {
    context: &'a Context,
    keep: bool,
    inner: Mutex<SlotsInner>,
    /// Signalled when the job's own slot is free again (or the job holds none).
    freed: Notify,
}

struct SlotsInner {
    /// The job's own slot; `None` while given back (or before it is taken again).
    own: Option<OwnedSemaphorePermit>,
    /// A step is calling under the job's own slot.
    own_in_use: bool,
    /// Held while the job's own slot is given back.
    waiting_permit: Option<OwnedSemaphorePermit>,
    /// Steps started and not ended.
    running: usize,
    /// Of those, the ones waiting for a runner.
    waiting: usize,
}

/// The slot a calling step holds.
enum Held {
    Own,
    /// One more, released when the call ends (only dropped, never read).
    Extra(#[allow(dead_code)] OwnedSemaphorePermit),
}

impl<'a> Slots<'a> {
    fn new(context: &'a Context, own: Option<OwnedSemaphorePermit>, keep: bool) -> Self {
        Self {
            context,
            keep,
            inner: Mutex::new(SlotsInner {
                own,
                own_in_use: false,
                waiting_permit: None,
                running: 0,
                waiting: 0,
            }),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The job's own slot, if it holds it (returned to the caller at the end).
    fn into_own(self) -> Option<OwnedSemaphorePermit> {
        self.inner
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .own
    }

    /// A slot for one call: the job's own if free, else an extra one if free, else waits
    /// for the job's own to be free. Only a job that holds no slot (it gave its own
    /// back) waits on the controller's slots.
    async fn acquire(&self) -> Held {
        loop {
            let notified = self.freed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let holds_own = {
                let mut inner = self.lock();
                if inner.own.is_some() && !inner.own_in_use {
                    inner.own_in_use = true;
                    return Held::Own;
                }
                if let Ok(extra) = self.context.run_slots.clone().try_acquire_owned() {
                    return Held::Extra(extra);
                }
                inner.own.is_some()
            };
            if holds_own {
                notified.await;
                continue;
            }
            let slots = self.context.run_slots.clone();
            tokio::select! {
                permit = slots.acquire_owned() => {
                    let permit = permit.expect("never closed");
                    let mut inner = self.lock();
                    if inner.own.is_none() {
                        inner.own = Some(permit);
                        inner.own_in_use = true;
                        inner.waiting_permit = None;
                        return Held::Own;
                    }
                    return Held::Extra(permit);
                }
                () = notified => {}
            }
        }
    }

    fn release(&self, held: Held) {
        if matches!(held, Held::Own) {
            self.lock().own_in_use = false;
        }
        drop(held);
        self.freed.notify_waiters();
    }

    fn step_started(&self) {
        self.lock().running += 1;
    }

    fn step_ended(&self) {
        let mut inner = self.lock();
        inner.running -= 1;
        self.give_back_if_all_wait(inner);
    }

    /// A step (holding no slot) begins waiting for a runner.
    fn waiting_for_runner(&self) {
        let mut inner = self.lock();
        inner.waiting += 1;
        self.give_back_if_all_wait(inner);
    }

    /// If every running step waits for a runner, the job's own slot goes back to the
    /// controller, as a single-algorithm job's does while it waits.
    fn give_back_if_all_wait(&self, mut inner: std::sync::MutexGuard<'_, SlotsInner>) {
        if self.keep
            || inner.running == 0
            || inner.waiting < inner.running
            || inner.own_in_use
            || inner.own.is_none()
        {
            return;
        }
        if let Ok(permit) = self.context.waiting_for_runner.clone().try_acquire_owned() {
            tracing::debug!(
                "every running step waits for a runner; the job gives its run slot back"
            );
            inner.own = None;
            inner.waiting_permit = Some(permit);
            drop(inner);
            self.freed.notify_waiters();
        }
    }

    fn done_waiting(&self) {
        self.lock().waiting -= 1;
    }
}

/// One run of a pipeline's steps.
struct Schedule<'a> {
    context: &'a Context,
    pipeline: &'a Pipeline,
    payload: &'a RawValue,
    /// When the delivery's handling began: the steps' timings count from it.
    started: Instant,
    /// When `--job-timeout` has passed.
    deadline: Instant,
    /// The delivery count, reported per step.
    attempt: u32,
    slots: Slots<'a>,
}

/// A step that ended: its report, its output (or error), and when its first call began.
struct Ended<'a> {
    step: &'a Step,
    report: StepReport,
    first_call: Option<Duration>,
    output: Result<Box<RawValue>, ErrorInfo>,
}

impl<'a> Schedule<'a> {
    /// Runs the steps to the end (or to the first failure that ends the job): the verdict,
    /// the report of every step that ended, and when the first call began.
    async fn run(&self) -> (Verdict, BTreeMap<String, StepReport>, Option<Duration>) {
        let mut outputs: HashMap<String, Box<RawValue>> = HashMap::new();
        let mut reports = BTreeMap::new();
        let mut waiting: Vec<&Step> = self.pipeline.steps().iter().collect();
        let mut running = FuturesUnordered::new();
        // Queued: until the first call began (steps never called do not count).
        let mut first_call: Option<Duration> = None;
        loop {
            // Start every step whose inputs exist; each takes a slot for its calls.
            waiting.retain(|step| {
                let ready = step
                    .dependencies()
                    .iter()
                    .all(|name| outputs.contains_key(*name));
                if ready {
                    let ready_ms = millis(self.started.elapsed());
                    let input = self.input(step, &outputs);
                    running.push(self.step(step, input, ready_ms));
                }
                !ready
            });
            let Some(ended) = running.next().await else {
                break;
            };
            let Ended {
                step,
                report,
                first_call: began,
                output,
            } = ended;
            if let Some(began) = began {
                first_call = Some(first_call.map_or(began, |first| first.min(began)));
            }
            let output = match output {
                Ok(output) => output,
                Err(error) if step.optional && error.class == ErrorClass::Permanent => {
                    tracing::info!(step = %step.name, code = %error.code, error = %error.message, "an optional step failed; it yields null and the job goes on");
                    null()
                }
                Err(error) => {
                    reports.insert(step.name.clone(), report);
                    // Dropping the running steps cancels their calls.
                    let error = error.at_step(&step.name);
                    return (Verdict::failed(error, None), reports, first_call);
                }
            };
            outputs.insert(step.name.clone(), output);
            reports.insert(step.name.clone(), report);
        }
        debug_assert!(waiting.is_empty(), "an acyclic graph runs every step");
        (
            Verdict::Pipeline(self.result(&outputs)),
            reports,
            first_call,
        )
    }

    /// The job's result: each step's output by name, in the pipeline's order.
    fn result(&self, outputs: &HashMap<String, Box<RawValue>>) -> Box<RawValue> {
        let mut text = String::from("{");
        for (i, step) in self.pipeline.steps().iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&serde_json::to_string(&step.name).expect("a string serializes"));
            text.push(':');
            text.push_str(outputs.get(&step.name).map_or("null", |o| o.get()));
        }
        text.push('}');
        RawValue::from_string(text).expect("JSON values joined in an object are JSON")
    }

    /// The step's input from the payload and the outputs so far: a pointer that selects
    /// nothing, or an input larger than a runner accepts, is the step's permanent error.
    fn input(
        &self,
        step: &Step,
        outputs: &HashMap<String, Box<RawValue>>,
    ) -> Result<Box<RawValue>, ErrorInfo> {
        let input = step
            .build_input(self.payload, outputs)
            .map_err(|e| ErrorInfo::permanent(codes::INPUT_NOT_FOUND, e.to_string()))?;
        let limit = self.context.settings.max_job_bytes;
        if input.get().len() > limit {
            return Err(ErrorInfo::permanent(
                codes::PAYLOAD_TOO_LARGE,
                format!(
                    "step {:?}: its input is {} bytes; runners accept at most {limit} (--max-job-bytes)",
                    step.name,
                    input.get().len()
                ),
            ));
        }
        Ok(input)
    }

    /// Runs one step under its own span (`step <name>`, a child of the job's), the
    /// dispatcher's `Run` span beneath it.
    async fn step(
        &self,
        step: &'a Step,
        input: Result<Box<RawValue>, ErrorInfo>,
        ready_ms: f64,
    ) -> Ended<'a> {
        let span = tracing::info_span!(
            "step",
            otel.name = %format!("step {}", step.name),
            otel.kind = "internal",
            plugworker.step = %step.name,
            plugworker.algorithm = %step.algorithm,
            plugworker.attempt = self.attempt,
            plugworker.calls = tracing::field::Empty,
            plugworker.instance_id = tracing::field::Empty,
            plugworker.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        let mut report = StepReport {
            algorithm: step.algorithm.clone(),
            runner: None,
            algorithm_version: None,
            attempt: self.attempt,
            calls: 0,
            timings: StepTimings {
                ready_ms,
                ..StepTimings::default()
            },
            result: None,
            error: None,
        };
        let mut first_call = None;
        let began = Instant::now();
        let output = match input {
            Ok(input) => {
                self.slots.step_started();
                let output = self
                    .call(step, &input, &mut report, &mut first_call)
                    .instrument(span.clone())
                    .await;
                self.slots.step_ended();
                output
            }
            Err(error) => Err(error),
        };
        report.timings.finished_ms = millis(self.started.elapsed());
        span.record("plugworker.calls", report.calls);
        if let Some(runner) = &report.runner {
            span.record("plugworker.instance_id", runner.instance_id.as_str());
        }
        let status = match &output {
            Ok(output) => {
                report.result = Some(output.clone());
                "ok"
            }
            Err(error) => {
                // The error only: an optional step's `null` is in the job's `result`.
                record_error(&span, error);
                report.error = Some(error.clone().at_step(&step.name));
                match error.class {
                    ErrorClass::Permanent => "permanent_error",
                    ErrorClass::Transient => "transient_error",
                }
            }
        };
        span.record("plugworker.outcome", status);
        self.context.metrics.step_finished(
            &step.algorithm,
            &self.context.dispatcher.resolver().snapshot(),
            status,
            began.elapsed(),
        );
        Ended {
            step,
            report,
            first_call,
            output,
        }
    }

    /// Calls the step's algorithm until it answers, fails permanently, or the job's
    /// deadline passes; transient failures wait `--retry-base × 2^n` (or, for `no_runner`,
    /// until a runner appears, at most that long, holding no run slot). Past the deadline
    /// no call is made: the last error (or a transient `timeout` saying so) is the step's.
    async fn call(
        &self,
        step: &Step,
        input: &RawValue,
        report: &mut StepReport,
        first_call: &mut Option<Duration>,
    ) -> Result<Box<RawValue>, ErrorInfo> {
        let context = self.context;
        let dispatcher = &context.dispatcher;
        let backoff = context.settings.retry_backoff();
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let mut last_error: Option<ErrorInfo> = None;
        let past_deadline = |last_error: Option<ErrorInfo>| {
            last_error.unwrap_or_else(|| {
                ErrorInfo::transient(
                    codes::TIMEOUT,
                    format!(
                        "step {:?}: the job's deadline (--job-timeout {:?}) passed before the step could be called",
                        step.name, context.settings.job_timeout
                    ),
                )
            })
        };
        loop {
            if Instant::now() >= self.deadline {
                return Err(past_deadline(last_error));
            }
            let Ok(held) = tokio::time::timeout_at(deadline, self.slots.acquire()).await else {
                return Err(past_deadline(last_error));
            };
            // Announced algorithms only: a made-up name costs no limiter.
            let announced = !dispatcher
                .resolver()
                .snapshot()
                .instances(&step.algorithm)
                .is_empty();
            let limit = match announced {
                true => {
                    let limit = context.algorithm_limit(&step.algorithm).acquire_owned();
                    match tokio::time::timeout_at(deadline, limit).await {
                        Ok(permit) => Some(permit.expect("never closed")),
                        Err(_) => {
                            self.slots.release(held);
                            return Err(past_deadline(last_error));
                        }
                    }
                }
                false => None,
            };
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.slots.release(held);
                return Err(past_deadline(last_error));
            }
            let timeout = step.timeout.map_or(left, |timeout| timeout.min(left));
            report.calls += 1;
            let call_began = self.started.elapsed();
            first_call.get_or_insert(call_began);
            report.timings.started_ms = millis(call_began);
            let outcome = dispatcher.run(&step.algorithm, input, timeout).await;
            drop(limit);
            self.slots.release(held);
            let error = match outcome {
                Ok(success) => {
                    report.runner = Some(success.runner);
                    report.algorithm_version = Some(success.algorithm_version);
                    report.timings.run_ms = success.run_micros as f64 / 1000.0;
                    return Ok(success.result);
                }
                Err(Failure { error, runner }) => {
                    report.runner = runner;
                    error
                }
            };
            let left = self.deadline.saturating_duration_since(Instant::now());
            if error.class == ErrorClass::Permanent || left.is_zero() {
                return Err(error);
            }
            let delay = backoff.delay(report.calls).min(left);
            tracing::info!(step = %step.name, calls = report.calls, code = %error.code, error = %error.message, retry_in = ?delay, "step failed transiently; retrying it within this delivery");
            let no_instance = dispatcher
                .resolver()
                .snapshot()
                .instances(&step.algorithm)
                .is_empty();
            if no_instance {
                // Without a slot, as a single-algorithm job waits for its runner.
                self.slots.waiting_for_runner();
                dispatcher.wait_for_runner(&step.algorithm, delay).await;
                self.slots.done_waiting();
            } else {
                tokio::time::sleep(delay).await;
            }
            last_error = Some(error);
        }
    }
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_string()).expect("null is JSON")
}
