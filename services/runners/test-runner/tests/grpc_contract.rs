//! The `Runner` gRPC contract, on a real test-runner process: discovery of algorithm
//! modules, published schemas, validation, error codes, deadlines, bounded concurrency,
//! health and reflection.

use crate::common;

use common::{algorithm_modules, start_unregistered};
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_rpc::runner::v1::{ListAlgorithmsRequest, RunRequest};
use plugworker_testkit::runner_client;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request};

async fn started(extra_args: &[&str]) -> (plugworker_testkit::Process, RunnerClient<Channel>) {
    let (process, _address, client) = started_at(extra_args).await;
    (process, client)
}

/// A serving test-runner, with its address for clients other than tonic's.
async fn started_at(
    extra_args: &[&str],
) -> (plugworker_testkit::Process, String, RunnerClient<Channel>) {
    let (process, address) = start_unregistered("test-runner", extra_args, &[]).await;
    let client = runner_client(&address, Duration::from_secs(15)).await;
    wait_until_serving(&address).await;
    (process, address, client)
}

async fn wait_until_serving(address: &str) {
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    plugworker_testkit::eventually(Duration::from_secs(15), "SERVING", || {
        let mut health = health.clone();
        async move {
            let response = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?;
            (response.into_inner().status()
                == tonic_health::pb::health_check_response::ServingStatus::Serving)
                .then_some(())
        }
    })
    .await;
    let runner_status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: plugworker_rpc::RUNNER_SERVICE_NAME.into(),
        })
        .await
        .unwrap();
    assert_eq!(
        runner_status.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

fn run(algorithm: &str, payload: &[u8]) -> RunRequest {
    RunRequest {
        algorithm: algorithm.into(),
        payload: payload.to_vec(),
    }
}

#[tokio::test]
async fn list_algorithms_publishes_every_module_with_valid_json_schemas() {
    let (_runner, mut client) = started(&[]).await;
    let response = client
        .list_algorithms(ListAlgorithmsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = response.algorithms.iter().map(|a| a.name.clone()).collect();
    assert_eq!(names, algorithm_modules("."));
    assert_eq!(response.service_name, "test-runner");
    assert!(response.instance_id.starts_with("test-runner-"));
    for algorithm in &response.algorithms {
        assert!(!algorithm.version.is_empty() && !algorithm.description.is_empty());
        for schema in [&algorithm.input_schema, &algorithm.output_schema] {
            let schema: serde_json::Value = serde_json::from_str(schema).unwrap();
            jsonschema::meta::validate(&schema)
                .unwrap_or_else(|e| panic!("{} publishes an invalid schema: {e}", algorithm.name));
        }
    }
    let add = response
        .algorithms
        .iter()
        .find(|a| a.name == "add")
        .unwrap();
    let input: serde_json::Value = serde_json::from_str(&add.input_schema).unwrap();
    assert_eq!(input["required"], serde_json::json!(["numbers"]));
    assert_eq!(input["properties"]["numbers"]["type"], "array");
}

#[tokio::test]
async fn a_valid_run_returns_the_result_with_version_instance_and_timings() {
    let (_runner, mut client) = started(&[]).await;
    let response = client
        .run(run("add", br#"{"numbers": [1, 2.5, -0.5]}"#))
        .await
        .unwrap()
        .into_inner();
    let result: serde_json::Value = serde_json::from_slice(&response.result).unwrap();
    assert_eq!(result, serde_json::json!({"sum": 3.0}));
    assert_eq!(response.algorithm_version, "1.0.0");
    assert!(response.instance_id.starts_with("test-runner-"));

    let response = client
        .run(run("echo", br#"{"message": "hi", "delay_ms": 50}"#))
        .await
        .unwrap()
        .into_inner();
    assert!(
        response.run_micros >= 50_000,
        "run time measured: {}",
        response.run_micros
    );
}

#[tokio::test]
async fn schema_violations_are_invalid_argument_naming_each_field() {
    let (_runner, mut client) = started(&[]).await;
    let cases: [(&[u8], &[&str]); 4] = [
        (br#"{"numbers": "twelve"}"#, &["/numbers", "array"]),
        (br#"{"numbers": [1, "two", 3]}"#, &["/numbers/1", "number"]),
        (br#"{}"#, &["\"numbers\"", "required"]),
        (br#"{"numbers": [1], "extra": true}"#, &["extra"]),
    ];
    for (payload, expected) in cases {
        let status = client.run(run("add", payload)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        for fragment in expected {
            assert!(
                status.message().contains(fragment),
                "{:?} lacks {fragment:?}",
                status.message()
            );
        }
        assert!(
            status
                .message()
                .starts_with("payload violates the input schema of add")
        );
    }
    // Two violations at once are both listed.
    let status = client
        .run(run("echo", br#"{"message": 5, "delay_ms": -1}"#))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("/message") && status.message().contains("/delay_ms"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_runner_keeps_serving() {
    let (mut runner, mut client) = started(&[]).await;

    let status = client
        .run(run("add", b"this is not json"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("payload is not valid JSON"),
        "{}",
        status.message()
    );

    let status = client
        .run(run("add", &[0xff, 0xfe, 0x00]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = client.run(run("translate", b"{}")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("\"translate\"") && status.message().contains("add, burn, echo"),
        "{}",
        status.message()
    );

    let status = client.run(run("", b"{}")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // 10 MB of payload: within the message limit, rejected by the schema, not a crash.
    let big = format!(
        r#"{{"message": 1, "padding": "{}"}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    let status = client.run(run("echo", big.as_bytes())).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().len() < 4096,
        "the error does not echo the payload"
    );

    // Beyond the message limit: refused by the transport with a clear code.
    let huge = vec![b' '; 17 * 1024 * 1024];
    let status = client.run(run("echo", &huge)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    let ok = client
        .run(run("add", br#"{"numbers": [2, 2]}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&ok.result).unwrap()["sum"],
        4.0
    );
    assert!(runner.is_running());
}

#[tokio::test]
async fn the_callers_deadline_is_honoured() {
    let (_runner, mut client) = started(&[]).await;
    let mut request = Request::new(run("echo", br#"{"message": "slow", "delay_ms": 5000}"#));
    // Set only the header, so the deadline the server sees is what is being tested.
    request
        .metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let started = std::time::Instant::now();
    let status = client.run(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn runs_beyond_the_concurrency_and_queue_bounds_are_refused_not_crashed() {
    let (mut runner, client) =
        started(&["--max-concurrent-runs", "1", "--max-queued-runs", "1"]).await;
    let calls = (0..3).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .run(run("echo", br#"{"message": "m", "delay_ms": 600}"#))
                .await
        }
    });
    let outcomes = futures::future::join_all(calls).await;
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    let exhausted: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(ok, 2, "one running and one queued complete: {outcomes:?}");
    assert_eq!(exhausted.len(), 1);
    assert_eq!(exhausted[0].code(), Code::ResourceExhausted);
    assert!(runner.is_running());
}

#[tokio::test]
async fn server_reflection_lists_the_runner_and_health_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (process, address) = start_unregistered("test-runner", &[], &[]).await;
    let _ = runner_client(&address, Duration::from_secs(15)).await;
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&plugworker_rpc::RUNNER_SERVICE_NAME.to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    drop(process);
}

/// `test-runner --health-probe`, as a container HEALTHCHECK runs it.
fn probe(listen: &str) -> std::process::Output {
    std::process::Command::new(plugworker_testkit::bin_path("test-runner"))
        .args([
            "--health-probe",
            "--insecure-plaintext",
            "--listen",
            listen,
            "--check-timeout",
            "2s",
        ])
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_health_probe_fails_without_a_runner_and_passes_once_it_serves() {
    let (process, address) = start_unregistered("test-runner", &[], &[]).await;
    let port = address.rsplit_once(':').unwrap().1.to_string();
    let closed = plugworker_testkit::ClosedPort::new();
    let absent = probe(&closed.address());
    assert!(!absent.status.success());
    assert!(
        String::from_utf8_lossy(&absent.stderr).contains("no runner answers at 127.0.0.1:"),
        "{absent:?}"
    );

    let _ = runner_client(&address, Duration::from_secs(15)).await;
    wait_until_serving(&address).await;
    // Given the all-interfaces listen address, as in the images, it probes loopback.
    let serving = probe(&format!("0.0.0.0:{port}"));
    assert!(serving.status.success(), "{serving:?}");
    assert_eq!(
        String::from_utf8_lossy(&serving.stdout).trim(),
        format!("runner at 127.0.0.1:{port} is SERVING")
    );
    drop(process);
}

/// One `Run` call over a raw HTTP/2 stream whose body (the whole request message) is sent
/// `body_delay` after its headers, as a large image arriving slowly would be. Returns the
/// call's status, and the decoded response when it is OK.
async fn run_with_late_body(
    address: &str,
    request: RunRequest,
    body_delay: Duration,
) -> (
    tonic::Status,
    Option<plugworker_rpc::runner::v1::RunResponse>,
) {
    use prost::Message;
    let (status, data) = raw_call(
        address,
        "/plugworker.runner.v1.Runner/Run",
        &[],
        RequestBody::Late(body_delay, request.encode_to_vec()),
    )
    .await;
    let decoded = (status.code() == Code::Ok).then(|| {
        // One uncompressed message, framed as above.
        assert_eq!(data.first(), Some(&0), "an uncompressed message");
        assert_eq!(
            data.get(1..5)
                .map(|length| u32::from_be_bytes(length.try_into().unwrap())),
            Some(u32::try_from(data.len() - 5).unwrap()),
            "one whole message"
        );
        plugworker_rpc::runner::v1::RunResponse::decode(&data[5..]).expect("a RunResponse")
    });
    (status, decoded)
}

/// The request body of a [`raw_call`].
enum RequestBody {
    /// None: the headers end the stream.
    Empty,
    /// One message, sent this long after the headers.
    Late(Duration, Vec<u8>),
    /// Never sent: the stream stays open.
    Never,
}

/// A raw HTTP/2 connection to `address`, ready to send requests.
async fn h2_connection(address: &str) -> h2::client::SendRequest<prost::bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.ready().await.unwrap()
}

/// The head of a gRPC call to `path`.
fn grpc_head(address: &str, path: &str) -> http::request::Builder {
    http::Request::post(format!("http://{address}{path}"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}

/// One gRPC call over a raw HTTP/2 stream, for what tonic's client will not send: a path
/// of any service, extra headers, a body sent late or never. Returns the call's status
/// (from its trailers, or its headers for a trailers-only answer) and the response's data
/// frames.
async fn raw_call(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: RequestBody,
) -> (tonic::Status, Vec<u8>) {
    let mut sender = h2_connection(address).await;
    let mut head = grpc_head(address, path);
    for (name, value) in headers {
        head = head.header(*name, *value);
    }
    let end_of_stream = matches!(body, RequestBody::Empty);
    let (response, mut request_body) = sender
        .send_request(head.body(()).unwrap(), end_of_stream)
        .unwrap();
    if let RequestBody::Late(delay, message) = body {
        tokio::time::sleep(delay).await;
        // gRPC framing: uncompressed flag, 4-byte big-endian length, the message.
        let mut frame = vec![0];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&message);
        request_body
            .send_data(prost::bytes::Bytes::from(frame), true)
            .unwrap();
    }

    let (head, mut answer) = response.await.unwrap().into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = answer.data().await {
        let chunk = chunk.unwrap();
        let _ = answer.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = answer.trailers().await.unwrap().unwrap_or_default();
    drop(request_body);
    // A trailers-only answer (an error before any message) carries the status in its headers.
    let status = tonic::Status::from_header_map(&trailers)
        .or_else(|| tonic::Status::from_header_map(&head.headers))
        .expect("a grpc-status");
    (status, data)
}

/// The caller's `grpc-timeout` counts from the call's headers, not only in the handler: a
/// call whose body never comes is answered `CANCELLED` when it passes (as tonic's own
/// server does), instead of holding its stream open until the caller gives up.
#[tokio::test]
async fn a_call_whose_body_never_arrives_is_cancelled_at_its_grpc_timeout() {
    let (_runner, address, _client) = started_at(&[]).await;
    let started = std::time::Instant::now();
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(10),
        raw_call(
            &address,
            "/plugworker.runner.v1.Runner/Run",
            &[("grpc-timeout", "300m")],
            RequestBody::Never,
        ),
    )
    .await
    .expect("answered before the test gave up");
    let elapsed = started.elapsed();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Cancelled, "Timeout expired"),
        "CANCELLED"
    );
    assert!(
        elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(5),
        "answered at the timeout: {elapsed:?}"
    );
}

/// The runner caps the streams of one connection at its run slots plus their queue plus
/// 16 (unless --max-concurrent-streams says otherwise): every call admission could take
/// gets a stream, and some beyond, so admission stays the run slots' job
/// (`RESOURCE_EXHAUSTED`, see the test above), and one connection cannot open more.
#[tokio::test]
async fn the_stream_cap_is_the_run_slots_plus_their_queue_plus_room() {
    let (_runner, address, _client) =
        started_at(&["--max-concurrent-runs", "3", "--max-queued-runs", "20"]).await;
    let mut sender = h2_connection(&address).await;
    let request = grpc_head(&address, "/grpc.health.v1.Health/Check")
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(request, true).unwrap();
    // The server's SETTINGS come before any response on the connection, so once one has
    // arrived the client's limit is the server's (h2 assumes no limit until then).
    response.await.unwrap();
    assert_eq!(sender.current_max_send_streams(), 3 + 20 + 16);
}

/// A service or method the runner does not serve is `UNIMPLEMENTED`, with a message naming
/// it; the runner keeps serving.
#[tokio::test]
async fn unknown_services_and_methods_are_unimplemented() {
    let (_runner, address, mut client) = started_at(&[]).await;
    for path in [
        "/plugworker.runner.v1.Nope/Run",
        "/plugworker.runner.v1.Runner/Nope",
        "/not-grpc",
    ] {
        let (status, data) = raw_call(&address, path, &[], RequestBody::Empty).await;
        assert_eq!(status.code(), Code::Unimplemented, "{path}: {status:?}");
        let message = status.message();
        assert!(data.is_empty(), "{path}: no message");
        if path == "/plugworker.runner.v1.Nope/Run" {
            assert!(
                message.contains("plugworker.runner.v1.Nope"),
                "names the service: {message:?}"
            );
        }
    }
    client
        .list_algorithms(ListAlgorithmsRequest {})
        .await
        .expect("still serving");
}

/// The kit stamps a call's arrival as its router hands it the call, when the headers
/// are in and before the body is read: the time a slow body takes to arrive is queue
/// time. (The caller's `grpc-timeout` is measured from the same stamp, so it too counts
/// from the headers, as the gRPC spec has it.) This goes through the real server; the
/// stamp's unit test in the kit wraps a plain service.
#[tokio::test]
async fn a_call_is_timed_from_its_headers_not_from_its_late_body() {
    let (_runner, address, _client) = started_at(&[]).await;

    let body_delay = Duration::from_millis(400);
    let (status, response) =
        run_with_late_body(&address, run("echo", br#"{"message": "late"}"#), body_delay).await;
    assert_eq!(
        status.code(),
        Code::Ok,
        "the late call succeeds: {status:?}"
    );
    let response = response.unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&response.result).unwrap()["message"],
        "late"
    );
    // Stamped in the handler, once tonic has read the body, this would be well under a
    // millisecond. Half the delay leaves room for a loaded machine to deliver the headers
    // late.
    assert!(
        response.queued_micros >= 200_000,
        "the body's 400 ms count as queued: {} µs",
        response.queued_micros
    );
}
