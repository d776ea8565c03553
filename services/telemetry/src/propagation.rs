//! W3C trace context across process boundaries: SQS message attributes and gRPC metadata.
//!
//! A job's trace starts in the producer (`plugworker submit` writes `traceparent` as an
//! SQS message attribute), continues in the controller's consumer span, crosses to the
//! runner in the gRPC call's metadata, and ends in the runner's spans: one trace per job.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use std::collections::HashMap;
use std::sync::LazyLock;
use tonic::metadata::{Ascii, MetadataKey};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header names (also used as SQS message attribute names).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// `traceparent` (and `tracestate`, if any) for `span`; empty when tracing is off.
pub fn context_headers(span: &tracing::Span) -> HashMap<String, String> {
    let mut headers = HashMap::new();
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut headers)
    });
    // An empty `tracestate` says nothing, and SQS refuses empty attribute values.
    headers.retain(|_, value| !value.is_empty());
    headers
}

/// Makes `span` a child of the remote span described by `headers` (no-op without one).
pub fn continue_from<'a>(
    span: &tracing::Span,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let map: HashMap<String, String> = headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    if !map.contains_key(TRACEPARENT) {
        return;
    }
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&map));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s context into gRPC request metadata.
pub fn inject_metadata(span: &tracing::Span, metadata: &mut tonic::metadata::MetadataMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata))
    });
}

/// Makes `span` a child of the caller's span named in gRPC request metadata. A no-op
/// when this process exports no spans (without the OpenTelemetry layer a parent has
/// nowhere to go; "exports" as [`crate::init`] set it up, the only place this crate
/// installs that layer) or the caller sent no `traceparent`.
///
/// A runner calls this on every call, so those cases are kept cheap: the header is not
/// even looked up without an exporter; the key is built once (a `&str` key is validated
/// and lowercased at each lookup); and without a `traceparent` the propagator (a global
/// lock and a context clone) is not asked at all.
pub fn continue_from_metadata(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    static TRACEPARENT_KEY: LazyLock<MetadataKey<Ascii>> =
        LazyLock::new(|| MetadataKey::from_static(TRACEPARENT));
    if !crate::traces_exported() || metadata.get(&*TRACEPARENT_KEY).is_none() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(metadata))
    });
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace id of `span` in hex, when it is being traced.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
