//! Running a pipeline job: its steps scheduled as soon as their inputs exist, each
//! dispatched like a job of its own, and one verdict for the whole job
//! (docs/delivery.md, "Pipelines").
//!
//! - Resolution: an inline pipeline is parsed here; a named one is the revision the
//!   [`StoredPipelines`](crate::stored_pipelines::StoredPipelines) watch holds when the job
//!   starts. A graph that does not check out is a permanent `invalid_pipeline`.
//! - Scheduling: every step whose dependencies have finished starts at once, in the
//!   pipeline's order; independent steps run in parallel. The job's own run slot covers
//!   one running step; each further one takes a slot with `try_acquire` (a step that gets
//!   none waits for the job's own), so a job never waits for a slot while holding one.
//!   Each call also holds its algorithm's limit, as a single-algorithm job does.
//! - Failures: a transient one (`no_runner` included) is retried within this delivery
//!   after `--retry-base × 2^n`, on whichever instance the dispatcher picks, until the
//!   job's `--job-timeout` has passed (the heartbeat keeps the message invisible); then
//!   the job's verdict is transient, and its redelivery runs the pipeline from the start.
//!   A permanent one ends the job (running steps are cancelled, none starts), unless the
//!   step is optional: it then yields `null` and the job goes on.

use crate::controller::{Context, Ran, Verdict, millis, record_error};
use crate::dispatch::Failure;
use crate::stored_pipelines::Lookup;
use futures::stream::{FuturesUnordered, StreamExt};
use plugworker_jobs::pipeline::{Pipeline, Step};
use plugworker_jobs::{
    ErrorClass, ErrorInfo, PipelineInfo, PipelineRef, StepReport, StepTimings, codes,
};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

/// The pipeline label of jobs whose pipeline is not a stored one.
pub const INLINE: &str = "inline";

/// Runs a pipeline job. `slot` is the job's run slot (held again when this returns);
/// `started` when the delivery's handling began, which `--job-timeout` counts from.
pub(crate) async fn run(
    context: &Context,
    reference: PipelineRef,
    job_id: Option<String>,
    payload: &RawValue,
    slot: &mut Option<OwnedSemaphorePermit>,
    started: Instant,
) -> Ran {
    let (info, pipeline) = resolve(context, reference).await;
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
        deadline: started + context.settings.job_timeout,
    };
    let (verdict, steps) = schedule.run().await;
    // Queued: until the first call started.
    let queued = steps
        .values()
        .map(|s| Duration::from_secs_f64(s.timings.started_ms / 1000.0))
        .min()
        .unwrap_or_default();
    Ran {
        pipeline: Some(info),
        steps: Some(steps),
        ..Ran::new(None, job_id, verdict, queued)
    }
}

/// The pipeline a job names and what it is called in its result.
async fn resolve(
    context: &Context,
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
            let key = format!("{}{name}", plugworker_jobs::pipeline::KV_PREFIX);
            let (revision, pipeline) = match context.pipelines.get(&name).await {
                Lookup::Found(stored) => (
                    Some(stored.revision),
                    stored.pipeline.map_err(|error| {
                        invalid(format!(
                            "the pipeline stored at {key} (revision {}) is invalid: {error}",
                            stored.revision
                        ))
                    }),
                ),
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
                            "the stored pipelines have not been read from Consul yet, so {name:?} cannot be looked up (the controller's token needs read on {})",
                            plugworker_jobs::pipeline::KV_PREFIX
                        ),
                    )),
                ),
            };
            (PipelineInfo { name, revision }, pipeline)
        }
    }
}

/// One run of a pipeline's steps.
struct Schedule<'a> {
    context: &'a Context,
    pipeline: &'a Pipeline,
    payload: &'a RawValue,
    started: Instant,
    deadline: Instant,
}

/// Which run slot a running step holds.
enum StepSlot {
    /// The job's own.
    Own,
    /// One more, released when the step's end is handled (the permit is only dropped,
    /// never read).
    Extra(#[allow(dead_code)] OwnedSemaphorePermit),
}

/// A step that ended: its report and its output (or error).
struct Ended<'a> {
    step: &'a Step,
    slot: StepSlot,
    report: StepReport,
    output: Result<Box<RawValue>, ErrorInfo>,
}

impl<'a> Schedule<'a> {
    /// Runs the steps to the end (or to the first failure that ends the job): the verdict
    /// and the report of every step that ended.
    async fn run(&self) -> (Verdict, BTreeMap<String, StepReport>) {
        let mut outputs: HashMap<String, Box<RawValue>> = HashMap::new();
        let mut reports = BTreeMap::new();
        let mut waiting: Vec<&Step> = self.pipeline.steps().iter().collect();
        let mut ready_at: HashMap<&str, f64> = HashMap::new();
        let mut running = FuturesUnordered::new();
        let mut own_slot_free = true;
        loop {
            // Start every step whose inputs exist, while slots last.
            let mut index = 0;
            while index < waiting.len() {
                let step = waiting[index];
                if !step
                    .dependencies()
                    .iter()
                    .all(|name| outputs.contains_key(*name))
                {
                    index += 1;
                    continue;
                }
                let ready_ms = *ready_at
                    .entry(step.name.as_str())
                    .or_insert_with(|| millis(self.started.elapsed()));
                let slot = if own_slot_free {
                    own_slot_free = false;
                    StepSlot::Own
                } else if let Ok(permit) = self.context.run_slots.clone().try_acquire_owned() {
                    StepSlot::Extra(permit)
                } else {
                    // The next step to start waits for the job's own slot.
                    break;
                };
                waiting.remove(index);
                let input = self.input(step, &outputs);
                running.push(self.step(step, input, ready_ms, slot));
            }
            let Some(ended) = running.next().await else {
                break;
            };
            let Ended {
                step,
                slot,
                report,
                output,
            } = ended;
            if matches!(slot, StepSlot::Own) {
                own_slot_free = true;
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
                    return (Verdict::failed(error, None), reports);
                }
            };
            outputs.insert(step.name.clone(), output);
            reports.insert(step.name.clone(), report);
        }
        debug_assert!(waiting.is_empty(), "an acyclic graph runs every step");
        (Verdict::Pipeline(self.result(&outputs)), reports)
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
        slot: StepSlot,
    ) -> Ended<'a> {
        let span = tracing::info_span!(
            "step",
            otel.name = %format!("step {}", step.name),
            otel.kind = "internal",
            plugworker.step = %step.name,
            plugworker.algorithm = %step.algorithm,
            plugworker.attempt = tracing::field::Empty,
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
            attempt: 0,
            timings: StepTimings {
                ready_ms,
                ..StepTimings::default()
            },
            result: None,
            error: None,
        };
        let began = Instant::now();
        let output = match input {
            Ok(input) => {
                self.call(step, &input, &mut report)
                    .instrument(span.clone())
                    .await
            }
            Err(error) => Err(error),
        };
        report.timings.finished_ms = millis(self.started.elapsed());
        span.record("plugworker.attempt", report.attempt);
        if let Some(runner) = &report.runner {
            span.record("plugworker.instance_id", runner.instance_id.as_str());
        }
        let status = match &output {
            Ok(output) => {
                report.result = Some(output.clone());
                "ok"
            }
            Err(error) => {
                record_error(&span, error);
                report.error = Some(error.clone().at_step(&step.name));
                if step.optional && error.class == ErrorClass::Permanent {
                    report.result = Some(null());
                }
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
            slot,
            report,
            output,
        }
    }

    /// Calls the step's algorithm until it answers, fails permanently, or the job's
    /// deadline passes; transient failures wait `--retry-base × 2^n` (or, for `no_runner`,
    /// until a runner appears, at most that long).
    async fn call(
        &self,
        step: &Step,
        input: &RawValue,
        report: &mut StepReport,
    ) -> Result<Box<RawValue>, ErrorInfo> {
        let context = self.context;
        let dispatcher = &context.dispatcher;
        let backoff = context.settings.retry_backoff();
        loop {
            report.attempt += 1;
            let left = self.deadline.saturating_duration_since(Instant::now());
            let timeout = step.timeout.map_or(left, |timeout| timeout.min(left));
            // Announced algorithms only: a made-up name costs no limiter.
            let announced = !dispatcher
                .resolver()
                .snapshot()
                .instances(&step.algorithm)
                .is_empty();
            let limit = match announced {
                true => Some(
                    context
                        .algorithm_limit(&step.algorithm)
                        .acquire_owned()
                        .await
                        .expect("never closed"),
                ),
                false => None,
            };
            report.timings.started_ms = millis(self.started.elapsed());
            let outcome = dispatcher.run(&step.algorithm, input, timeout).await;
            drop(limit);
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
            let delay = backoff.delay(report.attempt).min(left);
            tracing::info!(step = %step.name, attempt = report.attempt, code = %error.code, error = %error.message, retry_in = ?delay, "step failed transiently; retrying it within this delivery");
            let no_instance = dispatcher
                .resolver()
                .snapshot()
                .instances(&step.algorithm)
                .is_empty();
            if no_instance {
                dispatcher.wait_for_runner(&step.algorithm, delay).await;
            } else {
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_string()).expect("null is JSON")
}
