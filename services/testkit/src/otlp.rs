//! An in-process OTLP/gRPC trace receiver: what the OpenTelemetry Collector would get,
//! kept in memory for assertions.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// Span kinds as OTLP numbers them.
pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;
pub const KIND_PRODUCER: i32 = 4;
pub const KIND_CONSUMER: i32 = 5;
/// Status code ERROR.
pub const STATUS_ERROR: i32 = 2;

/// One received span, flattened.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub status_code: i32,
    pub status_message: String,
    pub attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Count only (benchmarks): keeping hundreds of thousands of spans would make the
    /// receiver, not the exporters, the cost being measured.
    count_only: bool,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        if self.count_only {
            let spans: usize = request
                .get_ref()
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            self.count
                .fetch_add(spans, std::sync::atomic::Ordering::Relaxed);
            return Ok(Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }));
        }
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let status = span.status.unwrap_or_default();
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        status_code: status.code,
                        status_message: status.message,
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        self.count
            .fetch_add(received.len(), std::sync::atomic::Ordering::Relaxed);
        self.spans.lock().unwrap().extend(received);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A receiver listening on a free loopback port.
pub struct OtlpReceiver {
    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    collector: Collector,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        Self::start_with(false, "127.0.0.1:0").await
    }

    /// A receiver that only counts spans (see [`OtlpReceiver::count`]).
    pub async fn start_counting() -> Self {
        Self::start_with(true, "127.0.0.1:0").await
    }

    /// A counting receiver on a given address.
    pub async fn start_counting_on(address: &str) -> Self {
        Self::start_with(true, address).await
    }

    async fn start_with(count_only: bool, address: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let collector = Collector {
            count_only,
            ..Collector::default()
        };
        let service = TraceServiceServer::new(collector.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Self {
            endpoint,
            collector,
            task,
        }
    }

    /// How many spans arrived.
    pub fn count(&self) -> usize {
        self.collector
            .count
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Everything received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector.spans.lock().unwrap().clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Environment for a process that should export here quickly.
    pub fn env(&self, service_name: &str) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.endpoint.clone()),
            ("OTEL_SERVICE_NAME".into(), service_name.into()),
            ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()),
        ]
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
