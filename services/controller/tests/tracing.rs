//! One trace per job across processes: `plugworker submit` (producer) → SQS (moto) →
//! `plugworker controller` (consumer, gRPC client) → `nlp-runner` (gRPC server), all
//! exporting OTLP to an in-process receiver.

use crate::common;

use common::Stack;
use plugworker_testkit::otlp::{
    KIND_CLIENT, KIND_CONSUMER, KIND_PRODUCER, KIND_SERVER, OtlpReceiver, ReceivedSpan,
    STATUS_ERROR,
};
use plugworker_testkit::sqs::AWS_ENV;
use plugworker_testkit::{bin_path, eventually};
use std::time::Duration;

fn refs(envs: &[(String, String)]) -> Vec<(&str, &str)> {
    envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `plugworker submit` as a user runs it, exporting its producer span. Async, so the
/// in-process receiver keeps answering while it runs.
async fn submit(stack: &Stack, receiver: &OtlpReceiver, input: &[&str]) -> String {
    let mut args = vec![
        "submit",
        "--jobs-queue-url",
        &stack.queues.jobs,
        "--sqs-endpoint",
        &stack.sqs.endpoint,
        "--algorithm",
        "language_detection",
    ];
    args.extend_from_slice(input);
    let output = tokio::process::Command::new(bin_path("plugworker"))
        .args(&args)
        .envs(AWS_ENV)
        .envs(receiver.env("plugworker-submit"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("flushing spans failed"), "{stderr}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn one(spans: &[ReceivedSpan], kind: i32, service: &str) -> ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == kind && s.service == service)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one span of kind {kind} from {service}: {spans:#?}"
    );
    found[0].clone()
}

/// Waits for the trace to hold a span from every process.
async fn whole_trace(receiver: &OtlpReceiver, trace_id: &str) -> Vec<ReceivedSpan> {
    eventually(
        Duration::from_secs(20),
        "spans from all three processes",
        || async {
            let spans = receiver.trace(trace_id);
            let has = |kind| spans.iter().any(|s: &ReceivedSpan| s.kind == kind);
            (has(KIND_PRODUCER) && has(KIND_CONSUMER) && has(KIND_CLIENT) && has(KIND_SERVER))
                .then_some(spans)
        },
    )
    .await
}

#[tokio::test]
async fn a_submitted_job_is_one_trace_across_producer_controller_and_runner() {
    let receiver = OtlpReceiver::start().await;
    let stack = Stack::start(Duration::from_secs(30), 3).await;
    let (_runner, _) = stack
        .runner("nlp-runner", &refs(&receiver.env("nlp-runner")))
        .await;
    let (_controller, _) = stack
        .controller_with_env(&[], &refs(&receiver.env("plugworker-controller")))
        .await;

    let ok_id = submit(
        &stack,
        &receiver,
        &[
            "--text",
            "The weather is lovely today and we are going for a long walk.",
        ],
    )
    .await;
    let bad_id = submit(&stack, &receiver, &["--payload", r#"{"text": 42}"#]).await;
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 2, Duration::from_secs(60))
        .await;
    assert_eq!(results.len(), 2, "{results:#?}");
    let result_of = |id: &str| {
        results
            .iter()
            .find(|r| r["message_id"] == id)
            .unwrap()
            .clone()
    };

    // The successful job.
    let ok = result_of(&ok_id);
    assert_eq!(ok["status"], "ok", "{ok}");
    let trace_id = ok["trace_id"]
        .as_str()
        .expect("the result names its trace")
        .to_string();
    let spans = whole_trace(&receiver, &trace_id).await;
    let producer = one(&spans, KIND_PRODUCER, "plugworker-submit");
    let consumer = one(&spans, KIND_CONSUMER, "plugworker-controller");
    let client = one(&spans, KIND_CLIENT, "plugworker-controller");
    let server = one(&spans, KIND_SERVER, "nlp-runner");
    assert!(
        producer.parent_span_id.is_empty(),
        "the producer span is the root"
    );
    assert_eq!(
        consumer.parent_span_id, producer.span_id,
        "consumer ← producer (via the SQS attribute)"
    );
    assert_eq!(client.parent_span_id, consumer.span_id, "client ← consumer");
    assert_eq!(
        server.parent_span_id, client.span_id,
        "server ← client (via gRPC metadata)"
    );
    assert_eq!(consumer.attributes["messaging.message.id"], ok_id);
    assert_eq!(
        consumer.attributes["plugworker.algorithm"],
        "language_detection"
    );
    assert_eq!(consumer.attributes["plugworker.receive_count"], "1");
    assert_eq!(consumer.attributes["plugworker.outcome"], "ok");
    assert_eq!(
        server.attributes["plugworker.algorithm"],
        "language_detection"
    );
    assert_ne!(consumer.status_code, STATUS_ERROR);
    // Exactly one trace for the job: every span about its message is in this trace.
    let about_job: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| {
            s.attributes
                .get("messaging.message.id")
                .is_some_and(|m| *m == ok_id)
        })
        .collect();
    assert!(
        about_job.len() >= 2 && about_job.iter().all(|s| s.trace_id == trace_id),
        "{about_job:#?}"
    );

    check_dashboard_trace_queries(&receiver.trace(&trace_id));

    // The failed job: its trace carries the error, classified.
    let bad = result_of(&bad_id);
    assert_eq!(bad["status"], "error", "{bad}");
    let bad_trace = bad["trace_id"].as_str().unwrap();
    assert_ne!(bad_trace, trace_id);
    let spans = whole_trace(&receiver, bad_trace).await;
    let consumer = one(&spans, KIND_CONSUMER, "plugworker-controller");
    assert_eq!(consumer.status_code, STATUS_ERROR, "{consumer:#?}");
    assert!(
        consumer
            .status_message
            .contains("violates the input schema"),
        "{consumer:#?}"
    );
    assert_eq!(
        consumer.attributes["error.type"],
        "permanent/invalid_payload"
    );
    assert_eq!(consumer.attributes["plugworker.outcome"], "permanent_error");
    let server = one(&spans, KIND_SERVER, "nlp-runner");
    assert_eq!(server.status_code, STATUS_ERROR);
    assert_eq!(server.attributes["rpc.grpc.status_code"], "3");
}

/// Every TraceQL query of the Grafana dashboard refers to services and span attributes
/// that the job's trace really carries.
fn check_dashboard_trace_queries(spans: &[ReceivedSpan]) {
    let dashboard = plugworker_testkit::dashboard::load();
    let queries = plugworker_testkit::dashboard::queries(&dashboard, "tempo");
    assert!(!queries.is_empty());
    for query in &queries {
        for attribute in plugworker_testkit::dashboard::identifiers(query, "span.") {
            let name = attribute.trim_start_matches("span.");
            assert!(
                spans.iter().any(|s| s.attributes.contains_key(name)),
                "span attribute {name} (in {query}) is never emitted"
            );
        }
        for attribute in plugworker_testkit::dashboard::identifiers(query, "resource.") {
            assert_eq!(
                attribute, "resource.service.name",
                "only service names are queried: {query}"
            );
        }
        // Each quoted service name is one of ours.
        for service in query
            .split("resource.service.name = \"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
        {
            assert!(
                spans.iter().any(|s| s.service == service),
                "service {service} (in {query}) sends no spans"
            );
        }
    }
}
