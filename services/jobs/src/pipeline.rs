//! Pipelines: several algorithms run as one job, each step's input built from the job's
//! payload and earlier steps' outputs (docs/pipelines.md).
//!
//! ```json
//! {"label": {"algorithm": "meme_classifier"},
//!  "text":  {"algorithm": "ocr"},
//!  "lang":  {"algorithm": "language_detection", "input": {"text": "/text/text"}}}
//! ```
//!
//! A step without `input` receives the job's payload as it arrived. In `input`, each
//! top-level string value that starts with `/` is an RFC 6901 JSON pointer whose first
//! segment names an earlier step (its output) or `payload` (the job's payload);
//! `{"$literal": v}` stands for `v` as it is; every other value, and anything nested, is a
//! literal. Steps run as soon as their inputs exist.
//!
//! This module checks the graph and builds step inputs; running steps is the
//! controller's, storing named pipelines the CLI's.

use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Most steps a pipeline may have.
pub const MAX_STEPS: usize = 16;
/// The reserved first pointer segment naming the job's payload.
pub const PAYLOAD: &str = "payload";
/// Where named pipelines are stored in Consul's KV store: `<prefix><name>`.
pub const KV_PREFIX: &str = "plugworker/pipelines/";

/// Whether `name` can name a stored pipeline: `[a-z][a-z0-9_-]{0,127}` (a KV key segment
/// that needs no escaping).
pub fn valid_pipeline_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 128
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// Whether `name` can name a step: `[a-z][a-z0-9_]{0,63}`, and not `payload`.
pub fn valid_step_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 64
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name != PAYLOAD
}

/// A checked pipeline: a graph of steps without cycles or dangling references.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// The steps in a topological order (each after every step it reads from); ties in
    /// name order, so the order is stable.
    steps: Vec<Step>,
}

/// One step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub name: String,
    pub algorithm: String,
    /// `None`: the step receives the job's payload as it arrived.
    pub input: Option<Vec<(String, Source)>>,
    /// A permanent failure of an optional step yields `null` and the job goes on.
    pub optional: bool,
    /// Bounds each call of the step (within the job's own `--job-timeout`).
    pub timeout: Option<Duration>,
}

/// Where one field of a step's input comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// `"/text/text"`: `from` is a step name or [`PAYLOAD`]; `pointer` the RFC 6901 rest
    /// (`"/text"`; empty for the whole output).
    Pointer { from: String, pointer: String },
    /// A value used as it is.
    Literal(Value),
}

/// What is wrong with a pipeline: each names the fault (the step, the field, the pointer),
/// so the producer can fix it from the message alone.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PipelineError {
    #[error("a pipeline is a JSON object of named steps")]
    NotAnObject,
    #[error("a pipeline has at least one step")]
    Empty,
    #[error("the pipeline has {count} steps; at most {MAX_STEPS} are allowed")]
    TooManySteps { count: usize },
    #[error("step name {name:?} is not [a-z][a-z0-9_]{{0,63}} (and \"payload\" is reserved)")]
    BadStepName { name: String },
    #[error("step {step:?}: {reason}")]
    BadStep { step: String, reason: String },
    #[error(
        "step {step:?}: input {field:?} points at {pointer:?}, but the pipeline has no step {target:?}"
    )]
    DanglingReference {
        step: String,
        field: String,
        pointer: String,
        target: String,
    },
    #[error("the steps {steps:?} form a cycle (each reads from the next)")]
    Cycle { steps: Vec<String> },
}

/// Why a step's input could not be built from the outputs at hand.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error("step {step:?}: input {field:?}: the pointer {pointer:?} selects nothing")]
    NothingSelected {
        step: String,
        field: String,
        pointer: String,
    },
}

impl Pipeline {
    /// Parses and checks a pipeline (a job's `pipeline` object, or a stored one).
    pub fn parse(json: &str) -> Result<Self, PipelineError> {
        let _ = json;
        todo!("helper: parse, check names, references, cycles and the step count")
    }

    /// The steps, each after every step it reads from.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The step called `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

impl Step {
    /// The steps this one reads from (without [`PAYLOAD`]), each once.
    pub fn dependencies(&self) -> Vec<&str> {
        todo!("helper")
    }

    /// The step's input: the job's payload as it arrived (no `input`), or the object its
    /// `input` builds from `payload` and `outputs` (by step name; `null` for an optional
    /// step that failed).
    pub fn build_input(
        &self,
        payload: &RawValue,
        outputs: &HashMap<String, Box<RawValue>>,
    ) -> Result<Box<RawValue>, InputError> {
        let _ = (payload, outputs);
        todo!("helper")
    }
}

/// The mismatches between a pipeline and the schemas of the algorithms it uses, one
/// message per mismatch: pointers into a step's output the algorithm's output schema
/// does not have, and built inputs that do not fit the next algorithm's input schema
/// (missing required fields, types that differ). `schemas` gives an announced
/// algorithm's (input, output) JSON Schemas; steps whose algorithm it does not know are
/// not checked.
pub fn check_schemas(
    pipeline: &Pipeline,
    schemas: &BTreeMap<String, (Value, Value)>,
) -> Vec<String> {
    let _ = (pipeline, schemas);
    todo!("helper")
}
