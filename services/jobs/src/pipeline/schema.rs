//! Checking a pipeline against the JSON Schemas its algorithms announce (as `schemars`
//! writes them: `properties`, `required`, `items`, `$ref` into `$defs`/`definitions`,
//! `anyOf`/`oneOf`/`allOf`), so `plugworker pipeline put` can refuse a pipeline whose
//! pointers or inputs cannot fit before any job runs it.
//!
//! Only what the schemas state is judged: a pointer is a mismatch when the schema shows
//! the selected field cannot exist; a type is a mismatch when both types are known and
//! none of the source's fits the target's. Anything else (a payload field, a schema
//! without types, `additionalProperties` open to anything) passes.

use super::{PAYLOAD, Pipeline, Source, Step};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// See [`super::check_schemas`].
pub(super) fn check(
    pipeline: &Pipeline,
    schemas: &BTreeMap<String, (Value, Value)>,
) -> Vec<String> {
    let mut mismatches = Vec::new();
    for step in pipeline.steps() {
        let Some(input) = &step.input else {
            continue; // The job's payload, as it arrives: nothing known to check.
        };
        let target = schemas.get(&step.algorithm).map(|(input, _)| input);
        for (field, source) in input {
            let source_types = match source {
                Source::Literal(value) => {
                    Some((literal_type(value), format!("the literal {}", short(value))))
                }
                Source::Pointer { from, pointer } => {
                    match pointed_types(pipeline, schemas, step, field, from, pointer) {
                        Ok(types) => types.map(|types| (types, format!("\"/{from}{pointer}\""))),
                        Err(mismatch) => {
                            mismatches.push(mismatch);
                            None
                        }
                    }
                }
            };
            let Some(target) = target else { continue };
            // An input's unknown field is a mismatch only where the algorithm refuses
            // them (`deny_unknown_fields`); serde ignores it elsewhere.
            let closed =
                resolve(target, target).get("additionalProperties") == Some(&Value::Bool(false));
            match property(target, target, field) {
                Walk::Absent(_) if !closed => {}
                Walk::Absent(_) => mismatches.push(format!(
                    "step {:?}: input {field:?}: {:?}'s input has no field {field:?}{}",
                    step.name,
                    step.algorithm,
                    fields_hint(target)
                )),
                Walk::Unknown => {}
                Walk::Found(property) => {
                    let (Some((from_types, what)), Some(to_types)) =
                        (source_types, types(target, property))
                    else {
                        continue;
                    };
                    if !fits(&from_types, &to_types) {
                        mismatches.push(format!(
                            "step {:?}: input {field:?}: {what} is {}, but {:?}'s input {field:?} is {}",
                            step.name,
                            describe(&from_types),
                            step.algorithm,
                            describe(&to_types)
                        ));
                    }
                }
            }
        }
        if let Some(target) = target {
            let has = |name: &String| input.iter().any(|(field, _)| field == name);
            for required in required(target, target) {
                if !has(&required) {
                    mismatches.push(format!(
                        "step {:?}: input has no {required:?}, which {:?} requires",
                        step.name, step.algorithm
                    ));
                }
            }
            // "One of these fields" (an image's url, base64 or S3 object): schemars
            // writes a `oneOf` of branches that each only require theirs.
            let root = resolve(target, target);
            let choices = root.get("oneOf").or_else(|| root.get("anyOf"));
            let options: Vec<Vec<String>> = choices
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|branch| required(target, branch))
                .collect();
            if !options.is_empty()
                && options.iter().all(|option| !option.is_empty())
                && !options.iter().any(|option| option.iter().all(has))
            {
                let listed: Vec<String> = options
                    .iter()
                    .map(|option| {
                        let names: Vec<String> = option.iter().map(|n| format!("{n:?}")).collect();
                        names.join(" and ")
                    })
                    .collect();
                mismatches.push(format!(
                    "step {:?}: input has none of {}, one of which {:?} requires",
                    step.name,
                    listed.join(", "),
                    step.algorithm
                ));
            }
        }
    }
    mismatches
}

/// The JSON types a pointer into a step's output can select: `Ok(None)` when unknown,
/// `Err` (the message) when the output schema shows it selects nothing.
fn pointed_types(
    pipeline: &Pipeline,
    schemas: &BTreeMap<String, (Value, Value)>,
    step: &Step,
    field: &str,
    from: &str,
    pointer: &str,
) -> Result<Option<BTreeSet<&'static str>>, String> {
    if from == PAYLOAD {
        return Ok(None);
    }
    let Some(source) = pipeline.step(from) else {
        return Ok(None);
    };
    let Some((_, output)) = schemas.get(&source.algorithm) else {
        return Ok(None);
    };
    let mut schema = output;
    let mut walked = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        match child(output, schema, &segment) {
            Walk::Found(next) => schema = next,
            Walk::Unknown => return Ok(None),
            Walk::Absent(what) => {
                return Err(format!(
                    "step {:?}: input {field:?}: the pointer \"/{from}{pointer}\" selects nothing: {:?}'s output{} {what}",
                    step.name,
                    source.algorithm,
                    if walked.is_empty() {
                        String::new()
                    } else {
                        format!(" at {walked:?}")
                    }
                ));
            }
        }
        walked.push('/');
        walked.push_str(&segment.replace('~', "~0").replace('/', "~1"));
    }
    let types = types(output, schema);
    // An optional step that failed yields `null` in place of its output.
    Ok(types.map(|mut types| {
        if source.optional {
            types.insert("null");
        }
        types
    }))
}

/// What one step of a walk through a schema found.
enum Walk<'a> {
    Found(&'a Value),
    /// The schema does not say (no types, open additional properties, …).
    Unknown,
    /// The schema says there is none; the text says why (`has no "txt"`).
    Absent(String),
}

/// `schema` with its `$ref` followed (within `root`), up to a few levels.
fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            break;
        };
        match reference.strip_prefix('#').and_then(|p| root.pointer(p)) {
            Some(target) => schema = target,
            None => break,
        }
    }
    schema
}

/// The branches of `anyOf`, `oneOf` and `allOf`.
fn branches(schema: &Value) -> impl Iterator<Item = &Value> {
    ["anyOf", "oneOf", "allOf"]
        .into_iter()
        .filter_map(|key| schema.get(key).and_then(Value::as_array))
        .flatten()
}

/// The child `segment` of a value `schema` describes: an object's property or an
/// array's item.
fn child<'a>(root: &'a Value, schema: &'a Value, segment: &str) -> Walk<'a> {
    let schema = resolve(root, schema);
    let types = types(root, schema);
    let is = |t: &str| types.as_ref().is_some_and(|types| types.contains(t));
    if is("array") && segment.parse::<usize>().is_ok() && segment_is_index(segment) {
        let index: usize = segment.parse().unwrap_or(usize::MAX);
        if let Some(item) = schema
            .get("prefixItems")
            .and_then(Value::as_array)
            .and_then(|items| items.get(index))
        {
            return Walk::Found(item);
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && index as u64 >= max
        {
            return Walk::Absent(format!("has at most {max} items, so no item {index}"));
        }
        return match schema.get("items") {
            Some(items) if items.is_object() => Walk::Found(items),
            _ => Walk::Unknown,
        };
    }
    if is("object") || schema.get("properties").is_some() {
        return property(root, schema, segment);
    }
    if branches(schema).next().is_some() {
        // `Option<Struct>` is `anyOf: [{"$ref": …}, {"type": "null"}]`.
        let mut unknown = false;
        for branch in branches(schema) {
            match child(root, branch, segment) {
                Walk::Found(found) => return Walk::Found(found),
                Walk::Unknown => unknown = true,
                Walk::Absent(_) => {}
            }
        }
        if !unknown {
            return Walk::Absent(format!("has no {segment:?}"));
        }
        return Walk::Unknown;
    }
    match types {
        Some(types) => Walk::Absent(format!("is {}, which has no {segment:?}", describe(&types))),
        None => Walk::Unknown,
    }
}

fn segment_is_index(segment: &str) -> bool {
    segment == "0" || !segment.starts_with('0')
}

/// Property `name` of the object `schema` describes.
fn property<'a>(root: &'a Value, schema: &'a Value, name: &str) -> Walk<'a> {
    let schema = resolve(root, schema);
    if let Some(types) = types(root, schema)
        && !types.contains("object")
    {
        return Walk::Absent(format!("is {}, which has no {name:?}", describe(&types)));
    }
    if let Some(found) = schema.get("properties").and_then(|p| p.get(name)) {
        return Walk::Found(found);
    }
    if schema.get("patternProperties").is_some() {
        return Walk::Unknown;
    }
    let absent = || Walk::Absent(format!("has no {name:?}"));
    if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
        return absent();
    }
    if branches(schema).next().is_some() {
        // Branches that only list `required` (how schemars writes "one of these
        // fields") say nothing of other properties; one that has the property decides.
        let walks = branches(schema).map(|branch| property(root, branch, name));
        let mut unknown = false;
        for walk in walks {
            match walk {
                Walk::Found(found) => return Walk::Found(found),
                Walk::Unknown => unknown = true,
                Walk::Absent(_) => {}
            }
        }
        if schema.get("properties").is_none() {
            return if unknown { Walk::Unknown } else { absent() };
        }
    }
    match schema.get("additionalProperties") {
        // schemars writes no `additionalProperties` for a struct: its fields are all.
        None if schema.get("properties").is_some() => absent(),
        Some(more @ Value::Object(fields)) if !fields.is_empty() => Walk::Found(more),
        _ => Walk::Unknown,
    }
}

/// The JSON types `schema` allows, if it says (`type`, or every branch's).
fn types(root: &Value, schema: &Value) -> Option<BTreeSet<&'static str>> {
    let schema = resolve(root, schema);
    const ALL: [&str; 7] = [
        "null", "boolean", "object", "array", "number", "string", "integer",
    ];
    let known = |name: &str| ALL.iter().copied().find(|t| *t == name);
    match schema.get("type") {
        Some(Value::String(t)) => return known(t).map(|t| BTreeSet::from([t])),
        Some(Value::Array(list)) => {
            return list.iter().map(|t| t.as_str().and_then(known)).collect();
        }
        _ => {}
    }
    if schema.get("properties").is_some() {
        return Some(BTreeSet::from(["object"]));
    }
    if let Some(Value::Array(values)) = schema.get("enum") {
        return Some(values.iter().map(literal_type_one).collect());
    }
    if let Some(value) = schema.get("const") {
        return Some(BTreeSet::from([literal_type_one(value)]));
    }
    let mut union = BTreeSet::new();
    let mut any = false;
    for key in ["anyOf", "oneOf"] {
        for branch in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            union.extend(types(root, branch)?);
            any = true;
        }
    }
    any.then_some(union)
}

fn literal_type(value: &Value) -> BTreeSet<&'static str> {
    BTreeSet::from([literal_type_one(value)])
}

fn literal_type_one(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether some type of `from` is one of `to` (an integer is a number).
fn fits(from: &BTreeSet<&str>, to: &BTreeSet<&str>) -> bool {
    from.iter()
        .any(|t| to.contains(t) || (*t == "integer" && to.contains("number")))
}

/// `a string`, `an integer or null`.
fn describe(types: &BTreeSet<&str>) -> String {
    let named: Vec<String> = types
        .iter()
        .map(|t| match *t {
            "null" => "null".to_string(),
            "integer" | "object" | "array" => format!("an {t}"),
            other => format!("a {other}"),
        })
        .collect();
    named.join(" or ")
}

/// The fields `schema` (within `root`) requires.
fn required(root: &Value, schema: &Value) -> Vec<String> {
    let schema = resolve(root, schema);
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|name| name.as_str().map(str::to_string))
        .collect()
}

/// ` (it has "a", "b")`, when the schema lists its fields.
fn fields_hint(schema: &Value) -> String {
    let schema = resolve(schema, schema);
    match schema.get("properties").and_then(Value::as_object) {
        Some(properties) if !properties.is_empty() => {
            let names: Vec<String> = properties.keys().map(|k| format!("{k:?}")).collect();
            format!(" (it has {})", names.join(", "))
        }
        _ => String::new(),
    }
}

/// A literal as it appears in a message, cut short.
fn short(value: &Value) -> String {
    crate::text::cap(&value.to_string(), 40).into_owned()
}

#[cfg(test)]
mod tests {
    use super::super::tests::says;
    use super::super::{Pipeline, check_schemas};
    use serde_json::Value;
    use std::collections::BTreeMap;

    /// The runners' own schemas, as `ListAlgorithms` answers them (captured with
    /// `plugworker algorithms --json`; descriptions and titles removed): add, echo
    /// (test-runner), language_detection (nlp-runner), ocr and meme_classifier
    /// (image-runner).
    fn schemas() -> BTreeMap<String, (Value, Value)> {
        let all: BTreeMap<String, Value> =
            serde_json::from_str(include_str!("testdata/schemas.json")).unwrap();
        all.into_iter()
            .map(|(name, s)| (name, (s["input"].clone(), s["output"].clone())))
            .collect()
    }

    fn check(pipeline: &str) -> Vec<String> {
        check_schemas(&Pipeline::parse(pipeline).unwrap(), &schemas())
    }

    /// The single mismatch `pipeline` has.
    fn one(pipeline: &str) -> String {
        let mismatches = check(pipeline);
        assert_eq!(mismatches.len(), 1, "{mismatches:#?}");
        mismatches.into_iter().next().unwrap()
    }

    #[test]
    fn the_meme_pipeline_fits() {
        let meme = r#"{
            "label": {"algorithm": "meme_classifier"},
            "text":  {"algorithm": "ocr"},
            "lang":  {"algorithm": "language_detection", "input": {"text": "/text/text"}},
            "first": {"algorithm": "language_detection", "input": {"text": "/text/lines/0/text"}},
            "again": {"algorithm": "ocr", "input": {"image_base64": "/payload/image_base64"}},
            "best":  {"algorithm": "echo", "input": {
                "message": "/label/candidates/0/template", "delay_ms": {"$literal": 5}}}}"#;
        assert_eq!(check(meme), Vec::<String>::new());
    }

    #[test]
    fn a_pointer_to_a_field_the_output_has_not() {
        let message = one(r#"{"text": {"algorithm": "ocr"},
                "lang": {"algorithm": "language_detection", "input": {"text": "/text/txt"}}}"#);
        assert_eq!(
            message,
            "step \"lang\": input \"text\": the pointer \"/text/txt\" selects nothing: \"ocr\"'s output has no \"txt\""
        );
        // Through an array's items and a `$ref` into `$defs`.
        let message = one(r#"{"text": {"algorithm": "ocr"},
                "lang": {"algorithm": "language_detection", "input": {"text": "/text/lines/0/words"}}}"#);
        assert!(
            message.ends_with("\"ocr\"'s output at \"/lines/0\" has no \"words\""),
            "{message}"
        );
        // Into a scalar, and past a fixed-size array.
        let message = one(r#"{"a": {"algorithm": "add", "input": {"numbers": [1]}},
                "b": {"algorithm": "echo", "input": {"message": "/a/sum/x"}}}"#);
        says(
            &message,
            "\"/a/sum/x\" selects nothing: \"add\"'s output at \"/sum\" is a number, which has no \"x\"",
        );
        let message = one(r#"{"t": {"algorithm": "ocr"},
                "b": {"algorithm": "add", "input": {"numbers": "/t/lines/0/box/4"}}}"#);
        says(&message, "has at most 4 items, so no item 4");
    }

    #[test]
    fn a_pointer_whose_type_the_next_input_refuses() {
        let message = one(r#"{"label": {"algorithm": "meme_classifier"},
                "lang": {"algorithm": "language_detection", "input": {"text": "/label/score"}}}"#);
        assert_eq!(
            message,
            "step \"lang\": input \"text\": \"/label/score\" is a number, but \"language_detection\"'s input \"text\" is a string"
        );
        // An integer is no array; the same types fit.
        let message = one(r#"{"e": {"algorithm": "echo", "input": {"message": "x"}},
                "a": {"algorithm": "add", "input": {"numbers": "/e/delayed_ms"}}}"#);
        says(
            &message,
            "is an integer, but \"add\"'s input \"numbers\" is an array",
        );
        assert_eq!(
            check(
                r#"{"e": {"algorithm": "echo", "input": {"message": "x"}},
                    "f": {"algorithm": "echo", "input": {"message": "/e/message", "delay_ms": "/e/delayed_ms"}}}"#
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_literal_whose_type_the_input_refuses() {
        let message = one(r#"{"a": {"algorithm": "add", "input": {"numbers": "1, 2"}}}"#);
        assert_eq!(
            message,
            "step \"a\": input \"numbers\": the literal \"1, 2\" is a string, but \"add\"'s input \"numbers\" is an array"
        );
        let message = one(
            r#"{"e": {"algorithm": "echo", "input": {"message": "hi", "delay_ms": {"$literal": 1.5}}}}"#,
        );
        says(
            &message,
            "the literal 1.5 is a number, but \"echo\"'s input \"delay_ms\" is an integer",
        );
    }

    #[test]
    fn a_field_the_next_input_does_not_have() {
        let message = one(r#"{"text": {"algorithm": "ocr"},
                "lang": {"algorithm": "language_detection", "input": {"text": "/text/text", "lang": "en"}}}"#);
        assert_eq!(
            message,
            "step \"lang\": input \"lang\": \"language_detection\"'s input has no field \"lang\" (it has \"text\")"
        );
        // ocr's input allows other fields (no `additionalProperties: false`).
        assert_eq!(
            check(
                r#"{"o": {"algorithm": "ocr", "input": {"image_url": "/payload/u", "hint": 1}}}"#
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_required_field_the_input_lacks() {
        let message = one(r#"{"lang": {"algorithm": "language_detection", "input": {}}}"#);
        assert_eq!(
            message,
            "step \"lang\": input has no \"text\", which \"language_detection\" requires"
        );
        let message = one(r#"{"o": {"algorithm": "ocr", "input": {"url": "/payload/u"}}}"#);
        says(
            &message,
            "input has none of \"image_url\", \"image_base64\", \"image_s3\", one of which \"ocr\" requires",
        );
    }

    #[test]
    fn every_mismatch_is_reported_and_unknown_algorithms_are_not_checked() {
        let mismatches = check(
            r#"{"label": {"algorithm": "meme_classifier"},
                "lang": {"algorithm": "language_detection", "input": {"txt": "/label/nope"}},
                "new": {"algorithm": "translation", "input": {"text": "/label/label"}},
                "newer": {"algorithm": "echo", "input": {"message": "/new/anything"}}}"#,
        );
        assert_eq!(mismatches.len(), 3, "{mismatches:#?}");
        assert!(mismatches[0].contains("\"/label/nope\" selects nothing"));
        assert!(mismatches[1].contains("has no field \"txt\""));
        assert!(mismatches[2].contains("has no \"text\", which \"language_detection\" requires"));
    }

    #[test]
    fn open_maps_let_any_field_through_and_draft_7_refs_are_followed() {
        // Small hand-written schemas for what the runners' do not use: a map output
        // (`additionalProperties` a schema, or `true`), `$ref` into `definitions`.
        let schemas = BTreeMap::from([
            (
                "scores".to_string(),
                (
                    serde_json::json!({"type": "object"}),
                    serde_json::json!({"type": "object", "properties": {
                        "by_label": {"type": "object", "additionalProperties": {"type": "number"}},
                        "extra": {"type": "object", "additionalProperties": true},
                        "best": {"$ref": "#/definitions/Best"}},
                        "definitions": {"Best": {"type": "object", "properties": {
                            "label": {"type": "string"}}}}}),
                ),
            ),
            (
                "words".to_string(),
                (
                    serde_json::json!({"type": "object", "properties": {
                        "text": {"type": "string"}}}),
                    serde_json::json!({}),
                ),
            ),
        ]);
        let check = |input: &str| {
            let pipeline = Pipeline::parse(&format!(
                r#"{{"s": {{"algorithm": "scores"}}, "w": {{"algorithm": "words", "input": {input}}}}}"#
            ))
            .unwrap();
            check_schemas(&pipeline, &schemas)
        };
        assert_eq!(check(r#"{"text": "/s/best/label"}"#), Vec::<String>::new());
        assert_eq!(
            check(r#"{"text": "/s/extra/anything"}"#),
            Vec::<String>::new()
        );
        let mismatches = check(r#"{"text": "/s/by_label/cat"}"#);
        assert_eq!(mismatches.len(), 1, "{mismatches:?}");
        says(
            &mismatches[0],
            "\"/s/by_label/cat\" is a number, but \"words\"'s input \"text\" is a string",
        );
        let mismatches = check(r#"{"text": "/s/best/score"}"#);
        assert_eq!(mismatches.len(), 1, "{mismatches:?}");
        says(
            &mismatches[0],
            "\"scores\"'s output at \"/best\" has no \"score\"",
        );
    }

    #[test]
    fn an_optional_source_may_be_null() {
        // `lang` reads an optional step: null is one of the types it may get, and a
        // string fits; the pointer still has to exist.
        assert_eq!(
            check(
                r#"{"text": {"algorithm": "ocr", "optional": true},
                    "lang": {"algorithm": "language_detection", "input": {"text": "/text/text"}}}"#
            ),
            Vec::<String>::new()
        );
    }
}
