//! The job and result contracts (docs/architecture.md §3).
//!
//! A **job** is the body of a message on the jobs queue:
//! `{"id": "optional client id", "algorithm": "ocr", "payload": {...}}`, or, with
//! `"pipeline"` in place of `"algorithm"`, several algorithms run as one job
//! ([`pipeline`]).
//! A **result** is what the controller publishes for every job, successful or not.
//! Error codes are stable strings; each belongs to one [`ErrorClass`].

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub mod pipeline;
pub mod text;

/// Longest client-chosen job id accepted.
pub const MAX_JOB_ID_CHARS: usize = 256;
/// Longest algorithm name accepted. Algorithm names are Consul tags chosen by runner
/// authors; a longer name cannot be one, and echoing it (in the result, its attributes,
/// logs and spans) would make every one of those as large as the job.
pub const MAX_ALGORITHM_CHARS: usize = 256;
/// Longest error message put in a result; longer ones (a runner's, an SDK's) are cut.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 4096;

/// A job, as submitted.
#[derive(Clone, Debug)]
pub struct Job {
    /// Client-chosen id, echoed in the result.
    pub id: Option<String>,
    /// What to run on the payload.
    pub work: Work,
    /// The algorithm's (or the pipeline's first steps') input, as the JSON text it
    /// arrived in: forwarded to the runner byte for byte (no re-encoding of large inline
    /// images), validated there against the algorithm's schema.
    pub payload: Box<RawValue>,
}

/// What a job runs: one algorithm, or a pipeline of them.
#[derive(Clone, Debug)]
pub enum Work {
    /// Algorithm name (a runner tag in Consul).
    Algorithm(String),
    /// A pipeline: written in the job, or named (stored in Consul's KV store).
    Pipeline(PipelineRef),
}

/// The `pipeline` field of a job, checked only for its shape here: the graph itself is
/// checked by [`pipeline::Pipeline::parse`] when the job runs (an `invalid_pipeline`
/// result names what is wrong with it).
#[derive(Clone, Debug)]
pub enum PipelineRef {
    /// `"pipeline": {...}`: the steps, unparsed.
    Inline(Box<RawValue>),
    /// `"pipeline": "meme_report"`: the key `plugworker/pipelines/meme_report`.
    Named(String),
}

/// Why a message body is not a job. Always permanent: redelivery cannot fix it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JobError {
    #[error("message body is not valid JSON: {0}")]
    NotJson(String),
    #[error("message body must be a JSON object with \"algorithm\" and \"payload\"")]
    NotAnObject,
    #[error(
        "job has no \"algorithm\" (a non-empty string naming the algorithm to run) and no \"pipeline\""
    )]
    MissingAlgorithm,
    #[error(
        "job has both \"algorithm\" and \"pipeline\"; a job runs one algorithm or one pipeline"
    )]
    AlgorithmAndPipeline,
    #[error(
        "job \"pipeline\" must be an object of named steps or the name of a stored pipeline ([a-z][a-z0-9_-]{{0,127}})"
    )]
    BadPipeline,
    #[error(
        "job \"algorithm\" is {chars} characters long; algorithm names have at most {MAX_ALGORITHM_CHARS}"
    )]
    AlgorithmTooLong { chars: usize },
    #[error("job has no \"payload\" (the algorithm's input)")]
    MissingPayload,
    #[error("job \"id\" must be a string of at most {MAX_JOB_ID_CHARS} characters")]
    BadId,
}

impl JobError {
    /// The stable error code published in the result.
    pub fn code(&self) -> &'static str {
        match self {
            JobError::NotJson(_) => codes::BAD_JSON,
            JobError::MissingAlgorithm => codes::MISSING_ALGORITHM,
            JobError::BadPipeline => codes::INVALID_PIPELINE,
            _ => codes::INVALID_JOB,
        }
    }
}

/// Parses a message body into a job, or says exactly what is wrong with it.
pub fn parse_job(body: &str) -> Result<Job, JobError> {
    // Top-level fields only; the payload stays unparsed text.
    let mut fields: std::collections::HashMap<String, Box<RawValue>> =
        match serde_json::from_str(body) {
            Ok(fields) => fields,
            Err(error) => {
                return Err(match serde_json::from_str::<serde::de::IgnoredAny>(body) {
                    Ok(_) => JobError::NotAnObject,
                    Err(_) => JobError::NotJson(error.to_string()),
                });
            }
        };
    let field = |raw: Box<RawValue>| serde_json::from_str::<Value>(raw.get()).ok();
    // A `null` field is an absent one: `{"algorithm": "ocr", "pipeline": null}` is an
    // algorithm job.
    let mut present = |name: &str| fields.remove(name).filter(|raw| raw.get().trim() != "null");
    let work = match (present("algorithm"), present("pipeline")) {
        (Some(_), Some(_)) => return Err(JobError::AlgorithmAndPipeline),
        (None, Some(pipeline)) => Work::Pipeline(parse_pipeline_ref(pipeline)?),
        (algorithm, None) => {
            let algorithm = match algorithm.and_then(field) {
                Some(Value::String(name)) if !name.trim().is_empty() => name,
                _ => return Err(JobError::MissingAlgorithm),
            };
            let chars = algorithm.chars().count();
            if chars > MAX_ALGORITHM_CHARS {
                return Err(JobError::AlgorithmTooLong { chars });
            }
            Work::Algorithm(algorithm)
        }
    };
    let payload = fields.remove("payload").ok_or(JobError::MissingPayload)?;
    let id = parse_id(fields.remove("id"))?;
    Ok(Job { id, work, payload })
}

/// A `pipeline` field: an object (kept unparsed), or a stored pipeline's name.
fn parse_pipeline_ref(raw: Box<RawValue>) -> Result<PipelineRef, JobError> {
    let text = raw.get().trim_start();
    if text.starts_with('{') {
        return Ok(PipelineRef::Inline(raw));
    }
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::String(name)) if pipeline::valid_pipeline_name(&name) => {
            Ok(PipelineRef::Named(name))
        }
        _ => Err(JobError::BadPipeline),
    }
}

/// The `id` field: absent or `null`, or a string of at most [`MAX_JOB_ID_CHARS`].
fn parse_id(raw: Option<Box<RawValue>>) -> Result<Option<String>, JobError> {
    match raw.map(|raw| serde_json::from_str::<Value>(raw.get()).ok()) {
        None | Some(Some(Value::Null)) => Ok(None),
        Some(Some(Value::String(id))) if id.chars().count() <= MAX_JOB_ID_CHARS => Ok(Some(id)),
        Some(_) => Err(JobError::BadId),
    }
}

/// The pipeline a job names when its body is a JSON object with a well-formed
/// `pipeline` field, whatever else is wrong with it (`{"name": "inline"}` for an object,
/// the stored pipeline's name, without revision, for a name): an error result for a job
/// [`parse_job`] refuses still says which pipeline it was for, as it echoes the `id`.
pub fn job_pipeline(body: &str) -> Option<PipelineInfo> {
    let mut fields: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_str(body).ok()?;
    let name = match parse_pipeline_ref(fields.remove("pipeline")?).ok()? {
        PipelineRef::Inline(_) => pipeline::INLINE.to_string(),
        PipelineRef::Named(name) => name,
    };
    Some(PipelineInfo {
        name,
        revision: None,
    })
}

/// The job's `id` when the body is a JSON object whose `id` is valid, whatever else is
/// wrong with it: an error result for a job [`parse_job`] refuses still names the job, so
/// a consumer matching results on ids can tell which one failed.
pub fn job_id(body: &str) -> Option<String> {
    let mut fields: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_str(body).ok()?;
    parse_id(fields.remove("id")).ok().flatten()
}

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The job itself is wrong: error result, message to the DLQ, never retried.
    Permanent,
    /// Something around the job is wrong for now: redelivered with backoff.
    Transient,
}

/// Stable error codes.
pub mod codes {
    pub const BAD_JSON: &str = "bad_json";
    pub const MISSING_ALGORITHM: &str = "missing_algorithm";
    pub const INVALID_JOB: &str = "invalid_job";
    /// A pipeline whose graph is wrong (a cycle, a dangling reference, too many steps…),
    /// or a name no stored pipeline has.
    pub const INVALID_PIPELINE: &str = "invalid_pipeline";
    /// A pointer in a step's `input` selects nothing in the output it points into.
    pub const INPUT_NOT_FOUND: &str = "input_not_found";
    /// A named pipeline while the controller has not read the stored pipelines yet
    /// (transient: the name may exist).
    pub const PIPELINE_UNAVAILABLE: &str = "pipeline_unavailable";
    pub const INVALID_PAYLOAD: &str = "invalid_payload";
    pub const UNPROCESSABLE: &str = "unprocessable";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const NO_RUNNER: &str = "no_runner";
    pub const ALGORITHM_NOT_SERVED: &str = "algorithm_not_served";
    pub const RUNNER_UNAVAILABLE: &str = "runner_unavailable";
    pub const RUNNER_BUSY: &str = "runner_busy";
    pub const TIMEOUT: &str = "timeout";
    pub const RUNNER_ERROR: &str = "runner_error";
    /// The result is larger than the results queue accepts (and no payload bucket is
    /// configured to carry it).
    pub const RESULT_TOO_LARGE: &str = "result_too_large";
    /// The results queue refused the result for another reason than its size.
    pub const RESULT_UNPUBLISHABLE: &str = "result_unpublishable";
    /// The job's body is a claim-check pointer (S3) that cannot be read.
    pub const PAYLOAD_UNAVAILABLE: &str = "payload_unavailable";
}

/// The error part of a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    pub class: ErrorClass,
    /// The pipeline step that failed, in a pipeline job's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

impl ErrorInfo {
    /// An error whose message is capped at [`MAX_ERROR_MESSAGE_CHARS`]: messages can
    /// quote what a producer or a runner sent, so their size is not ours to choose.
    pub fn new(code: &str, class: ErrorClass, message: impl AsRef<str>) -> Self {
        Self {
            code: code.to_string(),
            message: text::cap(message.as_ref(), MAX_ERROR_MESSAGE_CHARS).into_owned(),
            class,
            step: None,
        }
    }

    /// The same error, attributed to a pipeline step.
    pub fn at_step(mut self, step: &str) -> Self {
        self.step = Some(step.to_string());
        self
    }

    pub fn permanent(code: &str, message: impl AsRef<str>) -> Self {
        Self::new(code, ErrorClass::Permanent, message)
    }

    pub fn transient(code: &str, message: impl AsRef<str>) -> Self {
        Self::new(code, ErrorClass::Transient, message)
    }
}

/// Caps `value` in place at `max` characters (see [`text::cap`]).
fn cap_in_place(value: &mut String, max: usize) {
    if let std::borrow::Cow::Owned(capped) = text::cap(value, max) {
        *value = capped;
    }
}

/// Longest runner service name, instance id or address put in a result.
const MAX_RUNNER_FIELD_CHARS: usize = 256;
/// Longest algorithm version put in a result.
const MAX_VERSION_CHARS: usize = 128;
/// Longest step name put in a result (a valid one has at most 64).
const MAX_STEP_NAME_CHARS: usize = 64;
/// Longest pipeline name put in a result (a valid one has at most 128).
const MAX_PIPELINE_NAME_CHARS: usize = 128;

impl ErrorInfo {
    fn cap(&mut self) {
        cap_in_place(&mut self.code, 64);
        cap_in_place(&mut self.message, MAX_ERROR_MESSAGE_CHARS);
        if let Some(step) = &mut self.step {
            cap_in_place(step, MAX_STEP_NAME_CHARS);
        }
    }
}

impl RunnerInfo {
    fn cap(&mut self) {
        cap_in_place(&mut self.service, MAX_RUNNER_FIELD_CHARS);
        cap_in_place(&mut self.instance_id, MAX_RUNNER_FIELD_CHARS);
        cap_in_place(&mut self.address, MAX_RUNNER_FIELD_CHARS);
    }
}

/// `ok` or `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Error,
}

/// The runner instance that ran a job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunnerInfo {
    pub service: String,
    pub instance_id: String,
    pub address: String,
}

/// Where the time went, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// When the controller received the message (RFC 3339, UTC).
    pub received_at: String,
    /// Waiting inside the controller for a run slot and a runner.
    pub queued_ms: f64,
    /// The runner's own run time.
    pub run_ms: f64,
    /// From receipt to result.
    pub total_ms: f64,
}

/// A result document, as published on the results queue.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobResult {
    /// The client's job id, if the job had one.
    pub job_id: Option<String>,
    /// The queue's message id (stable across redeliveries: duplicates share it).
    pub message_id: String,
    /// The algorithm, if the job named one (`null` for a pipeline job).
    pub algorithm: Option<String>,
    /// The pipeline, for a pipeline job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineInfo>,
    pub status: Status,
    /// The algorithm's output, embedded verbatim as the runner produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<RunnerInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm_version: Option<String>,
    /// W3C trace id of the job's trace, when tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Which delivery of the message this is (1 for the first).
    pub attempt: u32,
    pub timings: Timings,
    /// A pipeline job's steps, by name: what each ran and came to (finished steps only,
    /// when the job failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<std::collections::BTreeMap<String, StepReport>>,
}

/// Which pipeline a pipeline job ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineInfo {
    /// The stored pipeline's name, or `"inline"` for one written in the job.
    pub name: String,
    /// A stored pipeline's revision: its KV `ModifyIndex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// One step of a pipeline job, in its result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepReport {
    pub algorithm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<RunnerInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm_version: Option<String>,
    /// The delivery count, as the job's `attempt` (1 for the first delivery).
    pub attempt: u32,
    /// Calls made for this step in this delivery (1 unless a transient failure was
    /// retried; 0 for a step whose input could not be built).
    pub calls: u32,
    pub timings: StepTimings,
    /// The step's output; absent for a step that failed (its `error` says why; an
    /// optional one's `null` is in the job's `result`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// Where a step's time went, in milliseconds from the job's receipt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTimings {
    /// When the step's inputs were all there.
    pub ready_ms: f64,
    /// When its last call started (after waiting for a run slot and a runner).
    pub started_ms: f64,
    /// The runner's own run time of the last call.
    pub run_ms: f64,
    /// When the step finished.
    pub finished_ms: f64,
}

impl JobResult {
    /// Caps every field that echoes something a producer, a runner or Consul chose, so a
    /// result's size is bounded by its `result` alone.
    pub fn capped(mut self) -> Self {
        let cap = cap_in_place;
        if let Some(id) = &mut self.job_id {
            cap(id, MAX_JOB_ID_CHARS);
        }
        if let Some(algorithm) = &mut self.algorithm {
            cap(algorithm, MAX_ALGORITHM_CHARS);
        }
        cap(&mut self.message_id, 128);
        if let Some(error) = &mut self.error {
            error.cap();
        }
        if let Some(runner) = &mut self.runner {
            runner.cap();
        }
        if let Some(version) = &mut self.algorithm_version {
            cap(version, MAX_VERSION_CHARS);
        }
        if let Some(pipeline) = &mut self.pipeline {
            cap(&mut pipeline.name, MAX_PIPELINE_NAME_CHARS);
        }
        if let Some(steps) = self.steps.take() {
            // The controller reports at most one entry per step of a checked pipeline;
            // the bound holds even if a caller passes more. Names are capped before they
            // become keys and a capped name already taken is skipped: no report silently
            // replaces another's, and the count stays at most MAX_STEPS.
            let mut capped = std::collections::BTreeMap::new();
            for (name, mut step) in steps {
                if capped.len() == pipeline::MAX_STEPS {
                    break;
                }
                let name = text::cap(&name, MAX_STEP_NAME_CHARS).into_owned();
                if capped.contains_key(&name) {
                    continue;
                }
                cap(&mut step.algorithm, MAX_ALGORITHM_CHARS);
                if let Some(runner) = &mut step.runner {
                    runner.cap();
                }
                if let Some(version) = &mut step.algorithm_version {
                    cap(version, MAX_VERSION_CHARS);
                }
                if let Some(error) = &mut step.error {
                    error.cap();
                }
                capped.insert(name, step);
            }
            self.steps = Some(capped);
        }
        self
    }

    /// The message body: JSON whose every character SQS accepts (see
    /// [`text::escape_json_for_sqs`]).
    pub fn to_body(&self) -> Result<String, serde_json::Error> {
        let json = serde_json::to_string(self)?;
        Ok(match text::escape_json_for_sqs(&json) {
            std::borrow::Cow::Borrowed(_) => json,
            std::borrow::Cow::Owned(escaped) => escaped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_job_and_names_each_defect() {
        let job = parse_job(r#"{"id": "j1", "algorithm": "ocr", "payload": {"image_url": "x"}}"#)
            .unwrap();
        assert_eq!(job.id.as_deref(), Some("j1"));
        assert!(matches!(&job.work, Work::Algorithm(a) if a == "ocr"));
        assert_eq!(
            job.payload.get(),
            r#"{"image_url": "x"}"#,
            "forwarded verbatim"
        );
        let anonymous = parse_job(r#"{"algorithm": "ocr", "payload": 1}"#).unwrap();
        assert!(anonymous.id.is_none());

        let error = |body: &str| parse_job(body).unwrap_err();
        assert!(matches!(error("{not json"), JobError::NotJson(_)));
        assert_eq!(error("[1]"), JobError::NotAnObject);
        assert_eq!(error("\"text\""), JobError::NotAnObject);
        assert_eq!(error(r#"{"payload": {}}"#), JobError::MissingAlgorithm);
        assert_eq!(
            error(r#"{"algorithm": " ", "payload": {}}"#),
            JobError::MissingAlgorithm
        );
        assert_eq!(
            error(r#"{"algorithm": 3, "payload": {}}"#),
            JobError::MissingAlgorithm
        );
        assert_eq!(error(r#"{"algorithm": "ocr"}"#), JobError::MissingPayload);
        assert_eq!(
            error(r#"{"id": 5, "algorithm": "ocr", "payload": {}}"#),
            JobError::BadId
        );
        assert_eq!(error("{}").code(), codes::MISSING_ALGORITHM);
        let long = format!(
            r#"{{"algorithm": "{}", "payload": {{}}}}"#,
            "a".repeat(131_072)
        );
        let too_long = error(&long);
        assert_eq!(too_long, JobError::AlgorithmTooLong { chars: 131_072 });
        assert_eq!(too_long.code(), codes::INVALID_JOB);
        assert!(too_long.to_string().len() < 200, "the name is not echoed");
        assert_eq!(error("nope").code(), codes::BAD_JSON);
    }

    #[test]
    fn a_malformed_pipeline_is_invalid_pipeline_and_null_fields_are_absent() {
        for pipeline in ["[]", "5", r#""Meme Report""#, r#""""#, "true"] {
            let body = format!(r#"{{"pipeline": {pipeline}, "payload": {{}}}}"#);
            let error = parse_job(&body).unwrap_err();
            assert_eq!(error, JobError::BadPipeline, "{body}");
            assert_eq!(error.code(), codes::INVALID_PIPELINE, "{body}");
        }
        let job = parse_job(r#"{"algorithm": "ocr", "pipeline": null, "payload": {}}"#).unwrap();
        assert!(matches!(&job.work, Work::Algorithm(a) if a == "ocr"));
        let job =
            parse_job(r#"{"algorithm": null, "pipeline": "meme_report", "payload": {}}"#).unwrap();
        assert!(matches!(&job.work, Work::Pipeline(PipelineRef::Named(n)) if n == "meme_report"));
        assert_eq!(
            parse_job(r#"{"algorithm": null, "pipeline": null, "payload": {}}"#).unwrap_err(),
            JobError::MissingAlgorithm
        );
        assert_eq!(
            parse_job(r#"{"algorithm": "ocr", "pipeline": "p", "payload": {}}"#).unwrap_err(),
            JobError::AlgorithmAndPipeline
        );
    }

    #[test]
    fn a_refused_job_still_names_its_pipeline() {
        let pipeline = |body: &str| {
            assert!(parse_job(body).is_err(), "{body} is refused");
            job_pipeline(body).map(|p| (p.name, p.revision))
        };
        assert_eq!(
            pipeline(r#"{"pipeline": "meme_report"}"#),
            Some(("meme_report".to_string(), None))
        );
        assert_eq!(
            pipeline(r#"{"pipeline": {"a": {"algorithm": "x"}}, "id": 5, "payload": {}}"#),
            Some((pipeline::INLINE.to_string(), None))
        );
        assert_eq!(pipeline(r#"{"pipeline": "Bad Name", "payload": {}}"#), None);
        assert_eq!(pipeline(r#"{"algorithm": "ocr"}"#), None);
        assert_eq!(pipeline("{not json"), None);
    }

    #[test]
    fn a_refused_job_still_names_its_valid_id() {
        let named = |body: &str| {
            assert!(parse_job(body).is_err(), "{body} is refused");
            job_id(body)
        };
        let long_name = format!(
            r#"{{"id": "j7", "algorithm": "{}", "payload": {{}}}}"#,
            "a".repeat(300)
        );
        assert_eq!(named(&long_name).as_deref(), Some("j7"));
        assert_eq!(
            named(r#"{"id": "j8", "payload": {}}"#).as_deref(),
            Some("j8")
        );
        assert_eq!(
            named(r#"{"id": "j9", "algorithm": "ocr"}"#).as_deref(),
            Some("j9")
        );
        assert_eq!(
            named(r#"{"id": "j10", "algorithm": 3, "payload": {}}"#).as_deref(),
            Some("j10")
        );
        // Nothing to echo: no object, no id, or an id that is itself invalid.
        assert_eq!(named("{not json"), None);
        assert_eq!(named(r#"["j11"]"#), None);
        assert_eq!(named(r#"{"payload": {}}"#), None);
        assert_eq!(
            named(r#"{"id": 5, "algorithm": "ocr", "payload": {}}"#),
            None
        );
        let long_id = format!(r#"{{"id": "{}", "payload": {{}}}}"#, "i".repeat(300));
        assert_eq!(named(&long_id), None);
    }

    #[test]
    fn results_serialise_per_the_contract() {
        let result = JobResult {
            job_id: Some("j1".into()),
            message_id: "m1".into(),
            algorithm: Some("ocr".into()),
            status: Status::Error,
            result: None,
            error: Some(ErrorInfo {
                code: codes::INVALID_PAYLOAD.into(),
                message: "bad".into(),
                class: ErrorClass::Permanent,
                step: None,
            }),
            runner: None,
            algorithm_version: None,
            trace_id: None,
            attempt: 1,
            timings: Timings::default(),
            pipeline: None,
            steps: None,
        };
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["status"], "error");
        assert_eq!(json["error"]["class"], "permanent");
        assert!(json.get("result").is_none());
        let text = serde_json::to_string(&result).unwrap();
        let back: JobResult = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);

        let ok = JobResult {
            status: Status::Ok,
            error: None,
            result: Some(RawValue::from_string(r#"{"sum": 3}"#.into()).unwrap()),
            ..result
        };
        let text = serde_json::to_string(&ok).unwrap();
        assert!(
            text.contains(r#""result":{"sum": 3}"#),
            "embedded verbatim: {text}"
        );
    }

    #[test]
    fn capped_results_are_bounded_and_their_bodies_are_sqs_text() {
        let result = JobResult {
            job_id: Some("j".repeat(1000)),
            message_id: "m1".into(),
            algorithm: Some("a".repeat(200_000)),
            status: Status::Error,
            result: None,
            error: Some(ErrorInfo {
                code: codes::RUNNER_ERROR.into(),
                message: format!("bad \u{FFFF} {}", "x".repeat(1_000_000)),
                class: ErrorClass::Transient,
                step: None,
            }),
            runner: None,
            algorithm_version: None,
            trace_id: None,
            attempt: 1,
            timings: Timings::default(),
            pipeline: None,
            steps: None,
        }
        .capped();
        let body = result.to_body().unwrap();
        assert!(body.len() < 16_000, "{} bytes", body.len());
        assert!(body.chars().all(text::sqs_allows), "{body}");
        assert!(body.contains("\\uffff"), "escaped, not dropped: {body}");
        let back: JobResult = serde_json::from_str(&body).unwrap();
        assert!(back.error.unwrap().message.starts_with("bad \u{FFFF} "));
    }

    #[test]
    fn capped_pipeline_results_bound_every_step_field() {
        let huge = |c: &str| c.repeat(200_000);
        let error = ErrorInfo::permanent(codes::RUNNER_ERROR, "x").at_step(&huge("s"));
        let error = ErrorInfo {
            message: huge("m"),
            code: huge("c"),
            ..error
        };
        let runner = RunnerInfo {
            service: huge("r"),
            instance_id: huge("i"),
            address: huge("a"),
        };
        let step = StepReport {
            algorithm: huge("a"),
            runner: Some(runner.clone()),
            algorithm_version: Some(huge("v")),
            attempt: 1,
            calls: 1,
            timings: StepTimings::default(),
            result: None,
            error: Some(error.clone()),
        };
        let steps = (0..100)
            .map(|i| (format!("{i}{}", huge("n")), step.clone()))
            .collect();
        let result = JobResult {
            pipeline: Some(PipelineInfo {
                name: huge("p"),
                revision: Some(7),
            }),
            status: Status::Error,
            error: Some(error),
            runner: Some(runner),
            ..pipeline_result(steps)
        }
        .capped();
        let body = result.to_body().unwrap();
        // 16 steps of at most ~5 KiB each (the error message dominates), plus the job's.
        assert!(body.len() < 120_000, "{} bytes", body.len());
        assert_eq!(result.steps.unwrap().len(), pipeline::MAX_STEPS);
    }

    /// An `ok` result of a pipeline job with `steps`.
    fn pipeline_result(steps: std::collections::BTreeMap<String, StepReport>) -> JobResult {
        JobResult {
            job_id: None,
            message_id: "m1".into(),
            algorithm: None,
            pipeline: None,
            status: Status::Ok,
            result: None,
            error: None,
            runner: None,
            algorithm_version: None,
            trace_id: None,
            attempt: 1,
            timings: Timings::default(),
            steps: Some(steps),
        }
    }

    #[test]
    fn capped_step_names_never_replace_one_another() {
        let step = |algorithm: &str| StepReport {
            algorithm: algorithm.to_string(),
            runner: None,
            algorithm_version: None,
            attempt: 1,
            calls: 1,
            timings: StepTimings::default(),
            result: None,
            error: None,
        };
        // Two names that cap to the same text (same first 64 characters, same length),
        // and one that caps to a distinct text.
        let long = |last: char| format!("{}{last}", "s".repeat(100));
        let steps = [
            (long('a'), step("first")),
            (long('b'), step("second")),
            ("s".repeat(120), step("third")),
            ("short".to_string(), step("fourth")),
        ]
        .into_iter()
        .collect();
        let result = pipeline_result(steps).capped();
        let steps = result.steps.unwrap();
        assert_eq!(steps.len(), 3, "{steps:?}");
        let algorithms: Vec<&str> = steps.values().map(|s| s.algorithm.as_str()).collect();
        assert!(
            algorithms.contains(&"first"),
            "the first kept: {algorithms:?}"
        );
        assert!(algorithms.contains(&"third") && algorithms.contains(&"fourth"));
        assert!(steps.keys().all(|name| name.chars().count() < 100));
    }
}
