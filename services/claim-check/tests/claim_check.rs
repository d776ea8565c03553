//! The claim-check against real moto (SQS and S3 on one port), and against AWS's own SQS
//! Extended Client for Python (`amazon-sqs-extended-client` from PyPI, driven by the
//! scripts in tests/py/) in both directions: through the library and through
//! `plugworker submit` / `plugworker results`.

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use base64::Engine;
use plugworker_claim_check::{
    ClaimCheck, ClaimCheckConfig, Error, Pointer, RESERVED_ATTRIBUTE, queue_threshold,
};
use plugworker_testkit::s3::S3;
use plugworker_testkit::sqs::{AWS_ENV, Sqs, moto_server};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

const BUCKET: &str = "plugworker-payloads";

struct Moto {
    sqs: Sqs,
    s3: S3,
}

async fn moto() -> Moto {
    let sqs = Sqs::start().await;
    let s3 = S3::on(&sqs);
    s3.create_bucket(BUCKET).await;
    Moto { sqs, s3 }
}

impl Moto {
    async fn queue(&self, name: &str, max_message_size: Option<usize>) -> String {
        let mut request = self.sqs.client.create_queue().queue_name(name);
        if let Some(max) = max_message_size {
            request = request.attributes(QueueAttributeName::MaximumMessageSize, max.to_string());
        }
        request
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_string()
    }

    async fn claim_check(&self, queue: &str, delete_after_use: bool) -> ClaimCheck {
        ClaimCheck::new(
            self.s3.client.clone(),
            ClaimCheckConfig {
                bucket: Some(BUCKET.to_string()),
                threshold: queue_threshold(&self.sqs.client, queue).await.unwrap(),
                key_prefix: "payloads/".to_string(),
                delete_after_use,
            },
        )
    }

    /// Sends `body` with `attributes` through `claim_check`, as the controller does.
    async fn send(
        &self,
        claim_check: &ClaimCheck,
        queue: &str,
        body: String,
        attributes: HashMap<String, MessageAttributeValue>,
    ) -> Option<Pointer> {
        let outgoing = claim_check.offload(body, &attributes).await.unwrap();
        let mut request = outgoing.apply(self.sqs.client.send_message().queue_url(queue));
        for (name, value) in attributes {
            request = request.message_attributes(name, value);
        }
        request.send().await.unwrap();
        outgoing.pointer
    }

    /// Receives the one message on `queue`: (body, attributes).
    async fn receive(&self, queue: &str) -> (String, HashMap<String, MessageAttributeValue>) {
        let messages = self.sqs.drain(queue).await;
        assert_eq!(messages.len(), 1, "one message on {queue}");
        (
            messages[0].body().unwrap().to_string(),
            messages[0]
                .message_attributes()
                .cloned()
                .unwrap_or_default(),
        )
    }
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap()
}

/// A body of `bytes` UTF-8 bytes mixing 1-, 2- and 4-byte characters, so that sizes
/// counted in characters instead of bytes would show.
fn text(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes);
    let pattern = ['a', 'é', '😀', '\n', '"'];
    let mut i = 0;
    while text.len() + 4 <= bytes {
        text.push(pattern[i % pattern.len()]);
        i += 1;
    }
    while text.len() < bytes {
        text.push('z');
    }
    text
}

#[tokio::test]
async fn large_bodies_round_trip_through_s3_and_small_ones_stay_inline() {
    let moto = moto().await;
    let queue = moto.queue("round-trip", None).await;
    let claim_check = moto.claim_check(&queue, true).await;
    // moto's default MaximumMessageSize is SQS's: 1 MiB.
    assert_eq!(claim_check.threshold(), 1_048_576 - 1024);

    // Small: untouched, nothing stored.
    let small = r#"{"algorithm":"echo","payload":{"message":"hi"}}"#.to_string();
    let outgoing = claim_check
        .offload(small.clone(), &HashMap::new())
        .await
        .unwrap();
    assert_eq!(outgoing.body, small);
    assert!(outgoing.attributes.is_empty() && outgoing.pointer.is_none());
    assert!(moto.s3.keys(BUCKET).await.is_empty());

    // Large (2 MB, multi-byte): stored under the prefix, the message carries the pointer.
    let body = text(2_000_000);
    let attributes =
        HashMap::from([("traceparent".to_string(), string_attribute("00-abc-def-01"))]);
    let pointer = moto
        .send(&claim_check, &queue, body.clone(), attributes)
        .await
        .expect("a 2 MB body goes through S3");
    assert_eq!(pointer.bucket, BUCKET);
    assert!(pointer.key.starts_with("payloads/"), "{}", pointer.key);
    assert_eq!(moto.s3.keys(BUCKET).await, vec![pointer.key.clone()]);
    assert_eq!(
        moto.s3.get(BUCKET, &pointer.key).await.unwrap(),
        body.as_bytes()
    );

    let (received, attributes) = moto.receive(&queue).await;
    assert_eq!(received, pointer.to_body());
    assert_eq!(
        attributes[RESERVED_ATTRIBUTE].string_value(),
        Some("2000000"),
        "ExtendedPayloadSize is the size in bytes"
    );
    assert_eq!(attributes[RESERVED_ATTRIBUTE].data_type(), "Number");
    assert_eq!(
        attributes["traceparent"].string_value(),
        Some("00-abc-def-01")
    );

    let incoming = claim_check.resolve(&received, &attributes).await.unwrap();
    assert_eq!(incoming.body, body);
    assert_eq!(incoming.pointer.as_ref(), Some(&pointer));
    claim_check.release(&pointer).await.unwrap();
    assert!(
        moto.s3.keys(BUCKET).await.is_empty(),
        "released objects are deleted"
    );

    // Kept when configured so (the bucket's lifecycle rule expires them).
    let keeping = moto.claim_check(&queue, false).await;
    let pointer = moto
        .send(&keeping, &queue, body.clone(), HashMap::new())
        .await
        .unwrap();
    let (received, attributes) = moto.receive(&queue).await;
    let incoming = keeping.resolve(&received, &attributes).await.unwrap();
    assert_eq!(incoming.body, body);
    keeping.release(&pointer).await.unwrap();
    assert_eq!(moto.s3.keys(BUCKET).await, vec![pointer.key.clone()]);
    // An unsent message's object goes whatever the setting.
    keeping.discard(&pointer).await.unwrap();
    assert!(moto.s3.keys(BUCKET).await.is_empty());
}

#[tokio::test]
async fn a_queue_of_1024_bytes_forces_offload_counting_attributes() {
    let moto = moto().await;
    let queue = moto.queue("tiny", Some(1024)).await;
    let claim_check = moto.claim_check(&queue, true).await;
    assert_eq!(claim_check.threshold(), 1024 - 128);

    // The queue itself refuses the body (ASCII: moto counts characters, SQS bytes)...
    let body = "x".repeat(1500);
    let refused = moto
        .sqs
        .client
        .send_message()
        .queue_url(&queue)
        .message_body(&body)
        .send()
        .await;
    assert!(refused.is_err(), "moto enforces MaximumMessageSize");
    // ...which goes through S3 instead.
    let pointer = moto
        .send(&claim_check, &queue, body.clone(), HashMap::new())
        .await
        .expect("offloaded");
    let (received, attributes) = moto.receive(&queue).await;
    let incoming = claim_check.resolve(&received, &attributes).await.unwrap();
    assert_eq!((incoming.body, incoming.pointer), (body, Some(pointer)));

    // 850 bytes of body fit alone, but not with 100 bytes of attributes.
    let body = text(850);
    assert!(
        moto.send(&claim_check, &queue, body.clone(), HashMap::new())
            .await
            .is_none()
    );
    let attributes = HashMap::from([("note".to_string(), string_attribute(&"n".repeat(90)))]);
    assert!(
        moto.send(&claim_check, &queue, body.clone(), attributes)
            .await
            .is_some()
    );
    let mut bodies = Vec::new();
    for message in moto.sqs.drain(&queue).await {
        let attributes = message.message_attributes().cloned().unwrap_or_default();
        let incoming = claim_check
            .resolve(message.body().unwrap(), &attributes)
            .await
            .unwrap();
        bodies.push(incoming.body);
    }
    assert_eq!(bodies, vec![body.clone(), body]);
}

#[tokio::test]
async fn unreadable_pointers_fail_clearly_and_say_whether_to_retry() {
    let moto = moto().await;
    let queue = moto.queue("broken", None).await;
    let claim_check = moto.claim_check(&queue, true).await;
    let size = |n: &str| {
        HashMap::from([(
            RESERVED_ATTRIBUTE.to_string(),
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(n)
                .build()
                .unwrap(),
        )])
    };

    // Gone (expired, or deleted by another consumer): permanent.
    let missing = Pointer::new(BUCKET, "payloads/missing");
    let error = claim_check
        .resolve(&missing.to_body(), &size("10"))
        .await
        .unwrap_err();
    assert!(error.is_permanent(), "{error}");
    assert!(
        error
            .to_string()
            .contains("GetObject s3://plugworker-payloads/payloads/missing"),
        "{error}"
    );
    // No such bucket: permanent too.
    let error = claim_check
        .resolve(&Pointer::new("no-such-bucket", "k").to_body(), &size("10"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::S3 {
                permanent: true,
                ..
            }
        ),
        "{error}"
    );

    // The legacy attribute name marks a pointer too; the body must be one.
    let legacy = HashMap::from([("SQSLargePayloadSize".to_string(), string_attribute("10"))]);
    let error = claim_check
        .resolve("{\"not\":\"a pointer\"}", &legacy)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::MalformedPointer { .. }), "{error}");

    // Bigger than this process fetches: refused on the declared size, and on the real one.
    moto.s3.put(BUCKET, "payloads/big", vec![b'x'; 5000]).await;
    let capped = claim_check.clone().with_max_payload_size(4096);
    let big = Pointer::new(BUCKET, "payloads/big").to_body();
    let error = capped.resolve(&big, &size("5000")).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::PayloadTooLarge {
                size: 5000,
                limit: 4096,
                ..
            }
        ),
        "{error}"
    );
    let error = capped.resolve(&big, &size("10")).await.unwrap_err();
    assert!(matches!(error, Error::PayloadTooLarge { .. }), "{error}");

    // Not text.
    moto.s3
        .put(BUCKET, "payloads/binary", vec![0xff, 0xfe, 0x00])
        .await;
    let error = claim_check
        .resolve(
            &Pointer::new(BUCKET, "payloads/binary").to_body(),
            &size("3"),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotUtf8 { .. }), "{error}");

    // No bucket to store in: a clear error, nothing sent.
    let no_bucket = ClaimCheck::new(
        moto.s3.client.clone(),
        ClaimCheckConfig {
            bucket: None,
            threshold: 1000,
            key_prefix: String::new(),
            delete_after_use: true,
        },
    );
    let error = no_bucket
        .offload(text(1200), &HashMap::new())
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("200 bytes over the 1000-byte limit"),
        "{error}"
    );
    // But it reads pointers whatever their bucket.
    moto.s3.put(BUCKET, "elsewhere", b"hello".to_vec()).await;
    let incoming = no_bucket
        .resolve(&Pointer::new(BUCKET, "elsewhere").to_body(), &size("5"))
        .await
        .unwrap();
    assert_eq!(incoming.body, "hello");
}

// ---- AWS's SQS Extended Client for Python ----

fn venv_python() -> PathBuf {
    let moto = moto_server();
    match moto.parent() {
        Some(bin) if !bin.as_os_str().is_empty() => bin.join("python"),
        _ => PathBuf::from("python3"),
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// The environment of a process talking to moto through the standard AWS variables only.
fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    let mut env: Vec<_> = AWS_ENV.iter().map(|(k, v)| (*k, v.to_string())).collect();
    env.push(("AWS_DEFAULT_REGION", "us-east-1".to_string())); // botocore reads this one
    env.push(("AWS_ENDPOINT_URL", endpoint.to_string()));
    env
}

/// Runs a script of tests/py with the venv's Python; fails the test, saying what to do,
/// if AWS's extended client is not installed there.
async fn python(endpoint: &str, script_name: &str, args: &[&str]) -> serde_json::Value {
    let python = venv_python();
    let probe = tokio::process::Command::new(&python)
        .args(["-c", "import sqs_extended_client, boto3"])
        .output()
        .await;
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        panic!(
            "AWS's SQS extended client for Python is not installed for {}: run scripts/setup.sh (it installs scripts/requirements/sqs-extended.txt into the test venv)",
            python.display()
        );
    }
    let output = tokio::process::Command::new(&python)
        .arg(script(script_name))
        .args(args)
        .envs(aws_env(endpoint))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{script_name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "plugworker-claim-check-{}-{name}",
        std::process::id()
    ))
}

#[tokio::test]
async fn a_5_mb_message_from_the_python_extended_client_is_resolved() {
    let moto = moto().await;
    let queue = moto.queue("from-python", None).await;
    let claim_check = moto.claim_check(&queue, true).await;
    let body = text(5 * 1024 * 1024);
    let file = temp_file("from-python.txt");
    std::fs::write(&file, &body).unwrap();
    python(
        &moto.sqs.endpoint,
        "extended_send.py",
        &[
            "--queue-url",
            &queue,
            "--bucket",
            BUCKET,
            "--body-file",
            file.to_str().unwrap(),
        ],
    )
    .await;
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        moto.s3.keys(BUCKET).await.len(),
        1,
        "the client stored the body"
    );

    let (received, attributes) = moto.receive(&queue).await;
    let incoming = claim_check.resolve(&received, &attributes).await.unwrap();
    assert!(incoming.body == body, "the exact 5 MB body");
    claim_check
        .release(&incoming.pointer.unwrap())
        .await
        .unwrap();
    assert!(moto.s3.keys(BUCKET).await.is_empty());
}

#[tokio::test]
async fn the_python_extended_client_receives_our_5_mb_message_transparently() {
    let moto = moto().await;
    let queue = moto.queue("to-python", None).await;
    let claim_check = moto.claim_check(&queue, true).await;
    let body = text(5 * 1024 * 1024);
    let attributes = HashMap::from([("status".to_string(), string_attribute("ok"))]);
    let pointer = moto
        .send(&claim_check, &queue, body.clone(), attributes)
        .await
        .unwrap();

    let file = temp_file("to-python.txt");
    let received = python(
        &moto.sqs.endpoint,
        "extended_receive.py",
        &[
            "--queue-url",
            &queue,
            "--out",
            file.to_str().unwrap(),
            "--delete-payload",
        ],
    )
    .await;
    let got = std::fs::read_to_string(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(got == body, "the Python client got the exact 5 MB body");
    // It hides the pointer attribute from its caller and keeps ours.
    assert_eq!(
        received["MessageAttributes"],
        serde_json::json!({"status": "ok"})
    );
    // It decorated the receipt handle with our pointer and, deleting, deleted the object.
    let handle = received["ReceiptHandle"].as_str().unwrap();
    assert_eq!(
        plugworker_claim_check::split_receipt_handle(handle).0,
        Some(pointer)
    );
    assert!(moto.s3.keys(BUCKET).await.is_empty());
    assert_eq!(moto.sqs.counts(&queue).await, (0, 0));
}

// ---- `plugworker submit` and `plugworker results` ----

fn plugworker(args: &[&str], env: &[(&str, String)]) -> Output {
    std::process::Command::new(plugworker_testkit::bin_path("plugworker"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .env_remove("PLUGWORKER_SQS_ENDPOINT")
        .env_remove("PLUGWORKER_PAYLOAD_BUCKET")
        .output()
        .unwrap()
}

/// The number that follows `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> usize {
    let start = text
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not in {text}"))
        + prefix.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?} in {text}"))
}

#[tokio::test]
async fn submit_sends_a_5_mb_image_through_s3_to_the_python_extended_client() {
    let moto = moto().await;
    let queue = moto.queue("submit-jobs", None).await;
    let image = temp_file("image.bin");
    let bytes: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&image, &bytes).unwrap();
    // Endpoints from the standard variable only (AWS_ENDPOINT_URL: SQS and S3).
    let env = aws_env(&moto.sqs.endpoint);
    let args = [
        "submit",
        "--jobs-queue-url",
        &queue,
        "--algorithm",
        "meme_classifier",
        "--id",
        "big-1",
        "--image",
        image.to_str().unwrap(),
    ];

    // Without a bucket: a clear error, nothing sent.
    let output = plugworker(&args, &env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let expected = serde_json::json!({
        "id": "big-1",
        "algorithm": "meme_classifier",
        "payload": {"image_base64": base64::engine::general_purpose::STANDARD.encode(&bytes)},
    })
    .to_string();
    // The size counts the trace context attributes too, when there are any.
    let size = number_after(&stderr, "the job is ");
    assert!(size >= expected.len(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the job is {size} bytes (body and attributes), {} bytes over the jobs queue's limit of 1048576 bytes (its MaximumMessageSize)",
            size - 1_048_576
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("--payload-bucket or PLUGWORKER_PAYLOAD_BUCKET"),
        "{stderr}"
    );
    assert_eq!(moto.sqs.counts(&queue).await, (0, 0));

    // With one: through S3, and AWS's client reads the job as it was.
    let mut with_bucket = args.to_vec();
    with_bucket.extend(["--payload-bucket", BUCKET]);
    let output = plugworker(&with_bucket, &env);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::remove_file(&image).unwrap();
    let message_id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let keys = moto.s3.keys(BUCKET).await;
    assert_eq!(keys.len(), 1);
    assert!(keys[0].starts_with("payloads/"), "{keys:?}");

    let file = temp_file("job.json");
    let received = python(
        &moto.sqs.endpoint,
        "extended_receive.py",
        &[
            "--queue-url",
            &queue,
            "--out",
            file.to_str().unwrap(),
            "--delete-payload",
        ],
    )
    .await;
    let job = std::fs::read_to_string(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(received["MessageId"], message_id.as_str());
    assert!(job == expected, "the job's exact JSON");
    assert!(moto.s3.keys(BUCKET).await.is_empty());
}

#[tokio::test]
async fn submit_refuses_a_job_over_a_small_queue_and_offloads_it_with_a_bucket() {
    let moto = moto().await;
    let queue = moto.queue("small-jobs", Some(1024)).await;
    let mut env = aws_env(&moto.sqs.endpoint);
    // Separate variables per service work too (and the old flag still does).
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL_S3", moto.sqs.endpoint.clone()));
    let text = "a".repeat(2000);
    let args = [
        "submit",
        "--jobs-queue-url",
        &queue,
        "--sqs-endpoint",
        &moto.sqs.endpoint,
        "--algorithm",
        "language_detection",
        "--text",
        &text,
    ];
    let output = plugworker(&args, &env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("bytes over the jobs queue's limit of 1024 bytes (its MaximumMessageSize)"),
        "{stderr}"
    );

    env.push(("PLUGWORKER_PAYLOAD_BUCKET", BUCKET.to_string()));
    let output = plugworker(&args, &env);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (received, attributes) = moto.receive(&queue).await;
    let claim_check = moto.claim_check(&queue, true).await;
    let job: serde_json::Value = serde_json::from_str(
        &claim_check
            .resolve(&received, &attributes)
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(job["payload"]["text"], text.as_str());
}

#[tokio::test]
async fn results_prints_a_5_mb_result_from_the_python_extended_client_and_deletes_it() {
    let moto = moto().await;
    let queue = moto.queue("results", None).await;
    let result = serde_json::json!({"message_id": "m-1", "status": "ok", "output": {"echo": text(5 * 1024 * 1024)}})
        .to_string();
    let file = temp_file("result.json");
    std::fs::write(&file, &result).unwrap();
    for _ in 0..2 {
        python(
            &moto.sqs.endpoint,
            "extended_send.py",
            &[
                "--queue-url",
                &queue,
                "--bucket",
                BUCKET,
                "--body-file",
                file.to_str().unwrap(),
            ],
        )
        .await;
    }
    std::fs::remove_file(&file).unwrap();
    assert_eq!(moto.s3.keys(BUCKET).await.len(), 2);

    let mut env = aws_env(&moto.sqs.endpoint);
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL_SQS", moto.sqs.endpoint.clone()));
    env.push(("AWS_ENDPOINT_URL_S3", moto.sqs.endpoint.clone()));
    // One with --keep-payloads: printed, message deleted, object kept.
    let output = plugworker(
        &[
            "results",
            "--results-queue-url",
            &queue,
            "--max",
            "1",
            "--keep-payloads",
        ],
        &env,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut printed: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(printed, vec![result.clone()]);
    assert_eq!(moto.s3.keys(BUCKET).await.len(), 2);
    // The rest, with an inline one: objects deleted once printed.
    moto.sqs.send(&queue, r#"{"message_id":"m-2"}"#).await;
    let output = plugworker(&["results", "--results-queue-url", &queue], &env);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    printed.extend(
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned),
    );
    printed.sort_by_key(|line| line.len());
    assert_eq!(printed.len(), 3);
    assert_eq!(printed[0], r#"{"message_id":"m-2"}"#);
    assert!(
        printed[1] == result && printed[2] == result,
        "the exact 5 MB results"
    );
    assert_eq!(
        moto.s3.keys(BUCKET).await.len(),
        1,
        "only the kept object is left"
    );
    assert_eq!(moto.sqs.counts(&queue).await, (0, 0));
}

#[tokio::test]
async fn results_leaves_an_unreadable_result_on_the_queue_and_says_so() {
    let moto = moto().await;
    let queue = moto.queue("broken-results", None).await;
    moto.sqs
        .client
        .send_message()
        .queue_url(&queue)
        .message_body(Pointer::new(BUCKET, "payloads/expired").to_body())
        .message_attributes(
            RESERVED_ATTRIBUTE,
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value("100")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    moto.sqs.send(&queue, r#"{"message_id":"fine"}"#).await;
    let output = plugworker(
        &["results", "--results-queue-url", &queue],
        &aws_env(&moto.sqs.endpoint),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("1 result(s) could not be read and were left on the queue"),
        "{stderr}"
    );
    assert!(
        stderr.contains("s3://plugworker-payloads/payloads/expired"),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        r#"{"message_id":"fine"}"#
    );
    assert_eq!(
        moto.sqs.counts(&queue).await,
        (0, 1),
        "the unreadable one is still there"
    );
}
