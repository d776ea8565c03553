//! `image_s3` against a real S3 emulator (moto in server mode) and, for the failures moto
//! cannot produce (throttling, access denied, a lying or endless body), against a local
//! HTTP server answering as S3 does.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use image::RgbImage;
use plugworker_image_input::{ImageLimits, ImageLoader, ImageSource, S3Reference};
use plugworker_kit::{RunContext, RunError};
use plugworker_testkit::ClosedPort;
use plugworker_testkit::sqs::Sqs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A client for `endpoint` as the tests' own AWS configuration: static test credentials,
/// path-style addressing, one attempt (the classification is under test, not retries).
fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// moto in server mode (the test kit's, which serves S3 beside SQS).
struct Moto {
    client: aws_sdk_s3::Client,
    _server: Sqs,
}

impl Moto {
    async fn start() -> Self {
        let server = Sqs::start().await;
        Self {
            client: client(&server.endpoint),
            _server: server,
        }
    }

    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        let _ = self.client.create_bucket().bucket(bucket).send().await;
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
    }
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

fn s3(reference: serde_json::Value) -> ImageSource {
    serde_json::from_value(serde_json::json!({ "image_s3": reference })).unwrap()
}

fn limits() -> ImageLimits {
    ImageLimits {
        max_bytes: 1024 * 1024,
        fetch_timeout: Duration::from_secs(5),
        ..ImageLimits::default()
    }
}

async fn load(loader: &ImageLoader, source: &ImageSource) -> Result<RgbImage, RunError> {
    loader.load(source, &RunContext::new("test", None)).await
}

#[track_caller]
fn expect(result: Result<RgbImage, RunError>, kind: &str, fragments: &[&str]) {
    let message = match (&result, kind) {
        (Err(RunError::InvalidInput(m)), "invalid")
        | (Err(RunError::Unprocessable(m)), "permanent")
        | (Err(RunError::Unavailable(m)), "transient") => m,
        _ => panic!("expected a {kind} error mentioning {fragments:?}, got {result:?}"),
    };
    for fragment in fragments {
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
}

#[tokio::test]
async fn images_are_read_from_s3_under_the_same_caps() {
    let moto = Moto::start().await;
    moto.put("inputs", "cats/small.png", png(64, 48)).await;
    moto.put("inputs", "too-big.bin", vec![7u8; 3 * 1024 * 1024])
        .await;
    moto.put(
        "inputs",
        "bomb.png",
        plugworker_testkit::memes::png_header_only(30_000, 30_000),
    )
    .await;
    let loader = ImageLoader::with_s3_client(limits(), moto.client.clone()).unwrap();

    for reference in [
        serde_json::json!("s3://inputs/cats/small.png"),
        serde_json::json!({"bucket": "inputs", "key": "cats/small.png"}),
    ] {
        let image = load(&loader, &s3(reference.clone())).await.unwrap();
        assert_eq!(image.dimensions(), (64, 48), "{reference}");
    }
    expect(
        load(
            &loader,
            &s3(serde_json::json!("s3://inputs/cats/absent.png")),
        )
        .await,
        "permanent",
        &["s3://inputs/cats/absent.png", "NoSuchKey"],
    );
    expect(
        load(&loader, &s3(serde_json::json!("s3://no-such-bucket/a.png"))).await,
        "permanent",
        &["s3://no-such-bucket/a.png", "NoSuchBucket"],
    );
    expect(
        load(&loader, &s3(serde_json::json!("s3://inputs/too-big.bin"))).await,
        "permanent",
        &[
            "s3://inputs/too-big.bin",
            "3145728 bytes",
            "1048576 allowed",
        ],
    );
    expect(
        load(&loader, &s3(serde_json::json!("s3://inputs/bomb.png"))).await,
        "permanent",
        &["900000000 pixels"],
    );
    expect(
        load(&loader, &s3(serde_json::json!("s3://Inputs_Bucket/a.png"))).await,
        "invalid",
        &["not a valid S3 bucket name", "lowercase"],
    );
    expect(
        load(
            &loader,
            &s3(serde_json::json!("https://inputs.s3.amazonaws.com/a.png")),
        )
        .await,
        "invalid",
        &["s3://bucket/key"],
    );
    // Exactly one source.
    let mut two = s3(serde_json::json!("s3://inputs/cats/small.png"));
    two.image_base64 = Some("AAAA".into());
    expect(
        load(&loader, &two).await,
        "invalid",
        &["image_base64 and image_s3"],
    );
}

#[tokio::test]
async fn an_unreachable_s3_is_transient() {
    let closed = ClosedPort::new();
    let loader = ImageLoader::with_s3_client(limits(), client(&closed.url())).unwrap();
    expect(
        load(&loader, &s3(serde_json::json!("s3://inputs/a.png"))).await,
        "transient",
        &["s3://inputs/a.png", "cannot reach S3"],
    );
}

/// S3's XML error document.
fn s3_error(status: StatusCode, code: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{code} (test)</Message><RequestId>1</RequestId></Error>"
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

/// Bytes a streamed body has produced, so a test can see how much was read.
type Produced = Arc<AtomicUsize>;

/// A body of `total` bytes in 64 KiB chunks, counting what it produced.
fn counted_body(total: usize, produced: Produced) -> Body {
    let chunks = futures::stream::unfold(0usize, move |sent| {
        let produced = produced.clone();
        async move {
            if sent >= total {
                return None;
            }
            let size = (total - sent).min(64 * 1024);
            produced.fetch_add(size, Ordering::SeqCst);
            // Paced, so that a reader that does not stop would take a while.
            tokio::time::sleep(Duration::from_millis(1)).await;
            Some((Ok::<_, std::io::Error>(vec![0u8; size]), sent + size))
        }
    });
    Body::from_stream(chunks)
}

/// Answers GetObject as S3 would, per bucket: `throttled` (503 SlowDown), `busy` (500
/// InternalError), `rate` (429), `denied` (403 AccessDenied), `liar` (a 1 GiB
/// Content-Length), `chunked` (64 MiB without a declared length).
async fn scripted_s3() -> (String, Produced) {
    let produced: Produced = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback({
        let produced = produced.clone();
        move |uri: axum::http::Uri| {
            let produced = produced.clone();
            async move {
                let bucket = uri
                    .path()
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or("");
                match bucket {
                    "throttled" => s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown"),
                    "busy" => s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
                    "rate" => s3_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
                    "denied" => s3_error(StatusCode::FORBIDDEN, "AccessDenied"),
                    "liar" => Response::builder()
                        .header(header::CONTENT_LENGTH, 1024 * 1024 * 1024)
                        .body(counted_body(1024 * 1024 * 1024, produced))
                        .unwrap(),
                    "chunked" => Response::builder()
                        .body(counted_body(64 * 1024 * 1024, produced))
                        .unwrap(),
                    _ => s3_error(StatusCode::NOT_FOUND, "NoSuchBucket"),
                }
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (endpoint, produced)
}

#[tokio::test]
async fn s3_failures_are_classed_by_whether_they_can_heal() {
    let (endpoint, _) = scripted_s3().await;
    let loader = ImageLoader::with_s3_client(limits(), client(&endpoint)).unwrap();
    let get = |bucket: &str| s3(serde_json::json!(format!("s3://{bucket}/images/x.png")));
    expect(
        load(&loader, &get("throttled")).await,
        "transient",
        &["s3://throttled/images/x.png", "503", "SlowDown"],
    );
    expect(
        load(&loader, &get("busy")).await,
        "transient",
        &["s3://busy/images/x.png", "500"],
    );
    expect(load(&loader, &get("rate")).await, "transient", &["429"]);
    expect(
        load(&loader, &get("denied")).await,
        "permanent",
        &["s3://denied/images/x.png", "access denied", "AccessDenied"],
    );
}

#[tokio::test]
async fn s3_bodies_stop_at_the_cap_whatever_they_declare() {
    let (endpoint, produced) = scripted_s3().await;
    let loader = ImageLoader::with_s3_client(limits(), client(&endpoint)).unwrap();
    // 1 GiB declared: refused on ContentLength, before the body is read.
    expect(
        load(&loader, &s3(serde_json::json!("s3://liar/huge.png"))).await,
        "permanent",
        &["s3://liar/huge.png", "1073741824 bytes", "1048576 allowed"],
    );
    let read = produced.swap(0, Ordering::SeqCst);
    println!("liar: the server produced {read} bytes before the connection closed");
    assert!(read < 16 * 1024 * 1024, "{read} bytes produced");
    // No declared length: read up to the cap, then stopped.
    expect(
        load(&loader, &s3(serde_json::json!("s3://chunked/big.png"))).await,
        "permanent",
        &[
            "s3://chunked/big.png",
            "more than the 1048576 bytes allowed",
        ],
    );
    let read = produced.load(Ordering::SeqCst);
    println!("chunked: the server produced {read} bytes");
    // The cap plus what socket buffers took before the connection closed.
    assert!(read < 16 * 1024 * 1024, "{read} bytes produced");
}

#[test]
fn the_reference_is_public_for_callers_building_payloads() {
    let reference = S3Reference::Uri("s3://inputs/a.png".into());
    let location = reference.location().unwrap();
    assert_eq!(
        (location.bucket.as_str(), location.key.as_str()),
        ("inputs", "a.png")
    );
}
