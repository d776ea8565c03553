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

mod schema;

use crate::{MAX_ALGORITHM_CHARS, text};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Most steps a pipeline may have.
pub const MAX_STEPS: usize = 16;
/// The reserved first pointer segment naming the job's payload.
pub const PAYLOAD: &str = "payload";
/// Where named pipelines are stored in Consul's KV store: `<prefix><name>`.
pub const KV_PREFIX: &str = "plugworker/pipelines/";
/// The name a pipeline written in the job goes by in its result and metrics.
pub const INLINE: &str = "inline";

/// Whether `name` can name a stored pipeline: `[a-z][a-z0-9_-]{0,127}` (a KV key segment
/// that needs no escaping).
pub fn valid_pipeline_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 128
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

/// The stored pipeline a KV key holds: the name after [`KV_PREFIX`], if it is one a job
/// can give ([`valid_pipeline_name`]; keys nested below a further `/` are not). The
/// controller's watch and `plugworker pipeline list` both read keys through this, so the
/// CLI lists exactly the pipelines jobs can run.
pub fn pipeline_name_of_key(key: &str) -> Option<&str> {
    key.strip_prefix(KV_PREFIX)
        .filter(|name| valid_pipeline_name(name))
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
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(json) else {
            return Err(PipelineError::NotAnObject);
        };
        if object.is_empty() {
            return Err(PipelineError::Empty);
        }
        if object.len() > MAX_STEPS {
            return Err(PipelineError::TooManySteps {
                count: object.len(),
            });
        }
        let mut steps = BTreeMap::new();
        for (name, spec) in object {
            if !valid_step_name(&name) {
                return Err(PipelineError::BadStepName { name });
            }
            let step = Step::parse(name.clone(), spec)?;
            steps.insert(name, step);
        }
        for step in steps.values() {
            for (field, source) in step.input.iter().flatten() {
                if let Source::Pointer { from, pointer } = source
                    && from != PAYLOAD
                    && !steps.contains_key(from)
                {
                    return Err(PipelineError::DanglingReference {
                        step: step.name.clone(),
                        field: field.clone(),
                        pointer: format!("/{from}{pointer}"),
                        target: from.clone(),
                    });
                }
            }
        }
        Ok(Self {
            steps: topological_order(steps)?,
        })
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

/// Kahn's algorithm over steps keyed by name; a `BTreeSet` of ready steps makes ties go
/// in name order, so the same pipeline always runs (and reports) in the same order.
fn topological_order(mut steps: BTreeMap<String, Step>) -> Result<Vec<Step>, PipelineError> {
    let mut waiting: BTreeMap<String, BTreeSet<String>> = steps
        .values()
        .map(|step| {
            let deps = step.dependencies().into_iter().map(str::to_string);
            (step.name.clone(), deps.collect())
        })
        .collect();
    let mut order = Vec::with_capacity(steps.len());
    loop {
        let ready: Vec<String> = waiting
            .iter()
            .filter(|(_, deps)| deps.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        let Some(next) = ready.into_iter().next() else {
            break;
        };
        waiting.remove(&next);
        for deps in waiting.values_mut() {
            deps.remove(&next);
        }
        order.extend(steps.remove(&next));
    }
    if waiting.is_empty() {
        return Ok(order);
    }
    // Every step left waits on another step left, so following those edges from any of
    // them must come back to a step already seen: that loop is the cycle to name.
    let mut path: Vec<String> = vec![waiting.keys().next().cloned().unwrap_or_default()];
    loop {
        let last = &path[path.len() - 1];
        let Some(next) = waiting.get(last).and_then(|deps| deps.iter().next()) else {
            break;
        };
        if let Some(start) = path.iter().position(|seen| seen == next) {
            let mut cycle = path.split_off(start);
            // Start at the least name so the message does not depend on where we began.
            let least = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
            cycle.rotate_left(least);
            return Err(PipelineError::Cycle { steps: cycle });
        }
        path.push(next.clone());
    }
    Err(PipelineError::Cycle { steps: path })
}

impl Step {
    /// One step's object: `algorithm`, and optionally `input`, `optional`, `timeout`.
    fn parse(name: String, spec: Value) -> Result<Self, PipelineError> {
        let bad = |reason: String| PipelineError::BadStep {
            step: name.clone(),
            reason,
        };
        let Value::Object(fields) = spec else {
            return Err(bad(
                "a step is an object with \"algorithm\" (and optionally \"input\", \"optional\", \"timeout\")".into(),
            ));
        };
        let mut algorithm = None;
        let mut input = None;
        let mut optional = false;
        let mut timeout = None;
        for (field, value) in fields {
            match field.as_str() {
                "algorithm" => match value {
                    Value::String(a) if !a.trim().is_empty() => {
                        let chars = a.chars().count();
                        if chars > MAX_ALGORITHM_CHARS {
                            return Err(bad(format!(
                                "\"algorithm\" is {chars} characters long; algorithm names have at most {MAX_ALGORITHM_CHARS}"
                            )));
                        }
                        algorithm = Some(a);
                    }
                    _ => {
                        return Err(bad(
                            "\"algorithm\" must be a non-empty string naming the algorithm to run"
                                .into(),
                        ));
                    }
                },
                "input" => input = Some(parse_input(value).map_err(bad)?),
                "optional" => match value {
                    Value::Bool(b) => optional = b,
                    _ => return Err(bad("\"optional\" must be true or false".into())),
                },
                "timeout" => timeout = Some(parse_timeout(&value).map_err(bad)?),
                _ => {
                    return Err(bad(format!(
                        "unknown field {:?} (a step has \"algorithm\", \"input\", \"optional\" and \"timeout\")",
                        text::cap(&field, 64)
                    )));
                }
            }
        }
        let Some(algorithm) = algorithm else {
            return Err(bad(
                "no \"algorithm\" (a non-empty string naming the algorithm to run)".into(),
            ));
        };
        Ok(Self {
            name,
            algorithm,
            input,
            optional,
            timeout,
        })
    }

    /// The steps this one reads from (without [`PAYLOAD`]), each once.
    pub fn dependencies(&self) -> Vec<&str> {
        let mut deps: Vec<&str> = Vec::new();
        for (_, source) in self.input.iter().flatten() {
            if let Source::Pointer { from, .. } = source
                && from != PAYLOAD
                && !deps.contains(&from.as_str())
            {
                deps.push(from);
            }
        }
        deps
    }

    /// The step's input: the job's payload as it arrived (no `input`), or the object its
    /// `input` builds from `payload` and `outputs` (by step name; `null` for an optional
    /// step that failed).
    pub fn build_input(
        &self,
        payload: &RawValue,
        outputs: &HashMap<String, Box<RawValue>>,
    ) -> Result<Box<RawValue>, InputError> {
        let Some(input) = &self.input else {
            return Ok(payload.to_owned());
        };
        // Each source document is parsed once, however many fields point into it.
        let mut parsed: HashMap<&str, Option<Value>> = HashMap::new();
        let mut built = serde_json::Map::with_capacity(input.len());
        for (field, source) in input {
            let value = match source {
                Source::Literal(value) => value.clone(),
                Source::Pointer { from, pointer } => {
                    let document = parsed.entry(from).or_insert_with(|| {
                        let raw = if from == PAYLOAD {
                            Some(payload)
                        } else {
                            outputs.get(from).map(|raw| &**raw)
                        };
                        raw.and_then(|raw| serde_json::from_str(raw.get()).ok())
                    });
                    match document.as_ref().and_then(|doc| doc.pointer(pointer)) {
                        Some(value) => value.clone(),
                        None => {
                            return Err(InputError::NothingSelected {
                                step: self.name.clone(),
                                field: field.clone(),
                                pointer: format!("/{from}{pointer}"),
                            });
                        }
                    }
                }
            };
            built.insert(field.clone(), value);
        }
        let json = serde_json::to_string(&built).expect("a JSON object serialises");
        Ok(RawValue::from_string(json).expect("serde_json wrote valid JSON"))
    }
}

/// A step's `input`: an object whose fields each become a [`Source`].
fn parse_input(value: Value) -> Result<Vec<(String, Source)>, String> {
    let Value::Object(fields) = value else {
        return Err("\"input\" must be an object (the fields of the step's payload)".into());
    };
    let mut input = Vec::with_capacity(fields.len());
    for (field, value) in fields {
        let source = match value {
            Value::String(text) if text.starts_with('/') => {
                parse_pointer(&text).map_err(|reason| {
                    format!(
                        "input {field:?}: pointer {:?} {reason}",
                        text::cap(&text, 256)
                    )
                })?
            }
            Value::Object(mut object) if object.contains_key(LITERAL) => {
                if object.len() != 1 {
                    return Err(format!(
                        "input {field:?}: an object with {LITERAL:?} stands for its value and has no other fields"
                    ));
                }
                Source::Literal(object.remove(LITERAL).unwrap_or(Value::Null))
            }
            other => Source::Literal(other),
        };
        input.push((field, source));
    }
    Ok(input)
}

/// The key of `{"$literal": v}`, which stands for `v` as it is (a string starting with
/// `/`, say, that is not a pointer).
pub const LITERAL: &str = "$literal";

/// `"/text/text"` → from `text`, pointer `/text`. The first segment must be a step name
/// or `payload` (neither has `~` or `/`, so it needs no unescaping); the rest must be a
/// valid RFC 6901 pointer (`~` only in `~0` and `~1`).
fn parse_pointer(text: &str) -> Result<Source, String> {
    let rest = &text[1..];
    let (from, pointer) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err("has a '~' that is not \"~0\" or \"~1\" (RFC 6901)".into());
        }
    }
    Ok(Source::Pointer {
        from: from.to_string(),
        pointer: pointer.to_string(),
    })
}

/// A step's `timeout`: `"30s"`, `"500ms"`, `"1m 30s"` (humantime), or milliseconds.
fn parse_timeout(value: &Value) -> Result<Duration, String> {
    const WHAT: &str =
        "\"timeout\" must be a duration such as \"30s\" or \"500ms\", or a number of milliseconds";
    let timeout = match value {
        Value::String(text) => humantime::parse_duration(text.trim())
            .map_err(|error| format!("{WHAT}: {:?}: {error}", text::cap(text, 64)))?,
        Value::Number(number) => match number.as_u64() {
            Some(ms) => Duration::from_millis(ms),
            None => return Err(format!("{WHAT} (a whole number, not {number})")),
        },
        _ => return Err(WHAT.into()),
    };
    if timeout.is_zero() {
        return Err(format!("{WHAT}, greater than zero"));
    }
    Ok(timeout)
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
    schema::check(pipeline, schemas)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `message` says `part`, showing the message when it does not.
    #[track_caller]
    pub(super) fn says(message: &str, part: &str) {
        assert!(message.contains(part), "{message:?} does not say {part:?}");
    }

    fn parse(json: &str) -> Result<Pipeline, PipelineError> {
        Pipeline::parse(json)
    }

    /// The fault's message, which must name what is wrong.
    fn fault(json: &str) -> String {
        parse(json).unwrap_err().to_string()
    }

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    #[test]
    fn only_keys_a_job_can_name_are_pipelines() {
        let name = pipeline_name_of_key;
        assert_eq!(
            name("plugworker/pipelines/meme_report"),
            Some("meme_report")
        );
        assert_eq!(name("plugworker/pipelines/a-1"), Some("a-1"));
        assert_eq!(name("plugworker/pipelines/"), None, "the prefix's own key");
        assert_eq!(name("plugworker/pipelines/nested/deeper"), None);
        assert_eq!(name("plugworker/pipelines/Meme Report"), None);
        assert_eq!(name("plugworker/galleries/meme"), None);
    }

    fn names(pipeline: &Pipeline) -> Vec<&str> {
        pipeline.steps().iter().map(|s| s.name.as_str()).collect()
    }

    const MEME: &str = r#"{
        "label": {"algorithm": "meme_classifier"},
        "text":  {"algorithm": "ocr"},
        "lang":  {"algorithm": "language_detection", "input": {"text": "/text/text"}}}"#;

    #[test]
    fn parses_the_issue_example_in_dependency_order() {
        let pipeline = parse(MEME).unwrap();
        // `label` and `text` have no inputs (name order); `lang` reads `text`.
        assert_eq!(names(&pipeline), ["label", "text", "lang"]);
        let lang = pipeline.step("lang").unwrap();
        assert_eq!(lang.algorithm, "language_detection");
        assert_eq!(lang.dependencies(), ["text"]);
        assert_eq!(
            lang.input.as_deref().unwrap(),
            [(
                "text".to_string(),
                Source::Pointer {
                    from: "text".into(),
                    pointer: "/text".into()
                }
            )]
        );
        assert!(!lang.optional);
        assert_eq!(lang.timeout, None);
        assert!(pipeline.step("label").unwrap().input.is_none());
        assert!(pipeline.step("label").unwrap().dependencies().is_empty());
        assert!(pipeline.step("nope").is_none());
    }

    #[test]
    fn ties_go_in_name_order_and_each_step_after_its_inputs() {
        let pipeline = parse(
            r#"{"z": {"algorithm": "a"},
                "d": {"algorithm": "a", "input": {"x": "/z", "y": "/b/k", "p": "/payload/q"}},
                "b": {"algorithm": "a", "input": {"x": "/z/1", "again": "/z"}},
                "c": {"algorithm": "a"}}"#,
        )
        .unwrap();
        assert_eq!(names(&pipeline), ["c", "z", "b", "d"]);
        let d = pipeline.step("d").unwrap();
        let mut deps = d.dependencies();
        deps.sort();
        assert_eq!(deps, ["b", "z"], "payload is not a step");
        assert_eq!(pipeline.step("b").unwrap().dependencies(), ["z"], "once");
    }

    #[test]
    fn refuses_what_is_not_an_object_of_steps() {
        assert_eq!(parse("[1]"), Err(PipelineError::NotAnObject));
        assert_eq!(parse("{nope"), Err(PipelineError::NotAnObject));
        assert!(fault("\"x\"").contains("JSON object of named steps"));
        assert_eq!(parse("{}"), Err(PipelineError::Empty));
        assert!(fault("{}").contains("at least one step"));
    }

    #[test]
    fn refuses_more_than_sixteen_steps() {
        let steps = |n: usize| {
            let steps: Vec<String> = (0..n)
                .map(|i| format!(r#""s{i}": {{"algorithm": "a"}}"#))
                .collect();
            format!("{{{}}}", steps.join(","))
        };
        assert_eq!(parse(&steps(MAX_STEPS)).unwrap().steps().len(), MAX_STEPS);
        assert_eq!(
            parse(&steps(MAX_STEPS + 1)),
            Err(PipelineError::TooManySteps { count: 17 })
        );
        assert!(fault(&steps(17)).contains("17 steps; at most 16"));
    }

    #[test]
    fn refuses_bad_step_names_and_the_reserved_payload() {
        for name in ["payload", "Label", "1st", "a-b", "", &"a".repeat(65)] {
            let json = format!(r#"{{"{name}": {{"algorithm": "a"}}}}"#);
            assert_eq!(
                parse(&json),
                Err(PipelineError::BadStepName {
                    name: name.to_string()
                }),
                "{name}"
            );
            assert!(
                fault(&json).contains("is not [a-z][a-z0-9_]{0,63}"),
                "{name}"
            );
        }
        assert!(fault(r#"{"payload": {"algorithm": "a"}}"#).contains("\"payload\" is reserved"));
        assert!(
            parse(&format!(
                r#"{{"{}": {{"algorithm": "a"}}}}"#,
                "a".repeat(64)
            ))
            .is_ok()
        );
    }

    #[test]
    fn refuses_a_step_that_is_not_an_object() {
        let message = fault(r#"{"a": "ocr"}"#);
        assert!(
            message.starts_with("step \"a\": a step is an object"),
            "{message}"
        );
    }

    #[test]
    fn refuses_a_missing_or_empty_or_overlong_algorithm() {
        let message = fault(r#"{"a": {"input": {}}}"#);
        says(&message, "step \"a\": no \"algorithm\"");
        for bad in [r#""""#, r#"" ""#, "3", "null"] {
            let message = fault(&format!(r#"{{"a": {{"algorithm": {bad}}}}}"#));
            says(
                &message,
                "step \"a\": \"algorithm\" must be a non-empty string",
            );
        }
        let long = format!(r#"{{"a": {{"algorithm": "{}"}}}}"#, "x".repeat(100_000));
        let message = fault(&long);
        assert!(message.contains("100000 characters long; algorithm names have at most 256"));
        assert!(message.len() < 300, "the name is not echoed");
    }

    #[test]
    fn refuses_unknown_step_fields() {
        let message = fault(r#"{"a": {"algorithm": "x", "inputs": {}}}"#);
        says(&message, "step \"a\": unknown field \"inputs\"");
    }

    #[test]
    fn refuses_an_input_that_is_not_an_object() {
        let message = fault(r#"{"a": {"algorithm": "x", "input": "/payload"}}"#);
        says(&message, "step \"a\": \"input\" must be an object");
    }

    #[test]
    fn refuses_a_literal_with_other_fields() {
        let message =
            fault(r#"{"a": {"algorithm": "x", "input": {"f": {"$literal": 1, "b": 2}}}}"#);
        says(&message, "step \"a\": input \"f\"");
        says(&message, "no other fields");
    }

    #[test]
    fn refuses_a_pointer_with_a_bad_escape() {
        let message = fault(r#"{"a": {"algorithm": "x", "input": {"f": "/payload/a~2b"}}}"#);
        says(
            &message,
            "step \"a\": input \"f\": pointer \"/payload/a~2b\" has a '~'",
        );
        assert!(
            fault(r#"{"a": {"algorithm": "x", "input": {"f": "/payload/a~"}}}"#).contains("~0")
        );
    }

    #[test]
    fn refuses_a_non_boolean_optional() {
        let message = fault(r#"{"a": {"algorithm": "x", "optional": "yes"}}"#);
        says(&message, "step \"a\": \"optional\" must be true or false");
        let optional = parse(r#"{"a": {"algorithm": "x", "optional": true}}"#).unwrap();
        assert!(optional.step("a").unwrap().optional);
    }

    #[test]
    fn timeouts_are_durations_or_milliseconds() {
        let timeout = |t: &str| {
            parse(&format!(r#"{{"a": {{"algorithm": "x", "timeout": {t}}}}}"#))
                .map(|p| p.step("a").unwrap().timeout.unwrap())
        };
        assert_eq!(timeout(r#""30s""#), Ok(Duration::from_secs(30)));
        assert_eq!(timeout(r#""500ms""#), Ok(Duration::from_millis(500)));
        assert_eq!(timeout(r#""1m 30s""#), Ok(Duration::from_secs(90)));
        assert_eq!(timeout("2500"), Ok(Duration::from_millis(2500)));
        for bad in [r#""soon""#, r#""30""#, "-1", "1.5", "true", "0", r#""0s""#] {
            let message = timeout(bad).unwrap_err().to_string();
            assert!(
                message.starts_with("step \"a\": \"timeout\" must be a duration"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn refuses_a_dangling_reference() {
        let error = parse(
            r#"{"text": {"algorithm": "ocr"},
                "lang": {"algorithm": "l", "input": {"text": "/txt/text"}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            error,
            PipelineError::DanglingReference {
                step: "lang".into(),
                field: "text".into(),
                pointer: "/txt/text".into(),
                target: "txt".into()
            }
        );
        assert_eq!(
            error.to_string(),
            "step \"lang\": input \"text\" points at \"/txt/text\", but the pipeline has no step \"txt\""
        );
        // A pointer whose first segment is empty names no step either.
        let message = fault(r#"{"a": {"algorithm": "x", "input": {"f": "/"}}}"#);
        says(&message, "has no step \"\"");
    }

    #[test]
    fn refuses_a_cycle_naming_its_steps() {
        let error = parse(
            r#"{"a": {"algorithm": "x", "input": {"f": "/c/out"}},
                "b": {"algorithm": "x", "input": {"f": "/a"}},
                "c": {"algorithm": "x", "input": {"f": "/b", "g": "/payload"}},
                "d": {"algorithm": "x", "input": {"f": "/c"}},
                "e": {"algorithm": "x"}}"#,
        )
        .unwrap_err();
        // a reads c, c reads b, b reads a; d only waits on the cycle and is not in it.
        assert_eq!(
            error,
            PipelineError::Cycle {
                steps: vec!["a".into(), "c".into(), "b".into()]
            }
        );
        assert_eq!(
            error.to_string(),
            "the steps [\"a\", \"c\", \"b\"] form a cycle (each reads from the next)"
        );
        let itself = parse(r#"{"a": {"algorithm": "x", "input": {"f": "/a/x"}}}"#);
        assert_eq!(
            itself,
            Err(PipelineError::Cycle {
                steps: vec!["a".into()]
            })
        );
    }

    #[test]
    fn a_step_without_input_gets_the_payload_verbatim() {
        let pipeline = parse(MEME).unwrap();
        let payload = raw(r#"{ "image_base64" : "AAAA" }"#);
        let input = pipeline
            .step("label")
            .unwrap()
            .build_input(&payload, &HashMap::new())
            .unwrap();
        assert_eq!(input.get(), payload.get(), "byte for byte");
    }

    #[test]
    fn builds_inputs_from_pointers_and_literals() {
        let pipeline = parse(
            r#"{"text": {"algorithm": "ocr"},
                "next": {"algorithm": "x", "input": {
                    "text": "/text/text",
                    "first": "/text/words/0",
                    "slash": "/text/a~1b",
                    "tilde": "/text/m~0n",
                    "whole": "/text",
                    "from_payload": "/payload/lang",
                    "literal_path": {"$literal": "/not/a/pointer"},
                    "plain": "hello",
                    "nested": {"deep": "/text/text"},
                    "number": 3}}}"#,
        )
        .unwrap();
        let outputs = HashMap::from([(
            "text".to_string(),
            raw(r#"{"text": "hi", "words": ["hi"], "a/b": 1, "m~n": 2}"#),
        )]);
        let input = pipeline
            .step("next")
            .unwrap()
            .build_input(&raw(r#"{"lang": "en"}"#), &outputs)
            .unwrap();
        let input: Value = serde_json::from_str(input.get()).unwrap();
        assert_eq!(
            input,
            serde_json::json!({
                "text": "hi", "first": "hi", "slash": 1, "tilde": 2,
                "whole": {"text": "hi", "words": ["hi"], "a/b": 1, "m~n": 2},
                "from_payload": "en",
                "literal_path": "/not/a/pointer",
                "plain": "hello",
                "nested": {"deep": "/text/text"},
                "number": 3})
        );
    }

    #[test]
    fn a_pointer_that_selects_nothing_names_step_field_and_pointer() {
        let pipeline = parse(
            r#"{"text": {"algorithm": "ocr", "optional": true},
                "lang": {"algorithm": "l", "input": {"text": "/text/text"}},
                "all": {"algorithm": "l", "input": {"text": "/text"}},
                "pay": {"algorithm": "l", "input": {"q": "/payload/missing"}}}"#,
        )
        .unwrap();
        let build = |step: &str, output: &str| {
            let outputs = HashMap::from([("text".to_string(), raw(output))]);
            pipeline
                .step(step)
                .unwrap()
                .build_input(&raw(r#"{"x": 1}"#), &outputs)
        };
        let error = build("lang", r#"{"words": []}"#).unwrap_err();
        assert_eq!(
            error,
            InputError::NothingSelected {
                step: "lang".into(),
                field: "text".into(),
                pointer: "/text/text".into()
            }
        );
        assert_eq!(
            error.to_string(),
            "step \"lang\": input \"text\": the pointer \"/text/text\" selects nothing"
        );
        // An optional step that failed is `null`: a pointer into it selects nothing, the
        // whole output is `null` itself.
        assert!(matches!(
            build("lang", "null"),
            Err(InputError::NothingSelected { .. })
        ));
        assert_eq!(build("all", "null").unwrap().get(), r#"{"text":null}"#);
        let message = build("pay", "{}").unwrap_err().to_string();
        says(&message, "\"/payload/missing\" selects nothing");
        // Array indexes are RFC 6901's: no leading zeros, no `-`.
        let list = parse(
            r#"{"a": {"algorithm": "l", "input": {"q": "/payload/x/01", "r": "/payload/x/-"}}}"#,
        )
        .unwrap();
        let a = list.step("a").unwrap();
        assert!(
            a.build_input(&raw(r#"{"x": [1, 2]}"#), &HashMap::new())
                .is_err()
        );
    }
}
