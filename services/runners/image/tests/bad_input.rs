//! Bad image input through a real image-runner: each case is a clear error with the
//! right status, the runner keeps serving, and its memory stays bounded.

use crate::support;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use plugworker_testkit::memes::{self, gif_hand_built, png_header_only};
use std::time::{Duration, Instant};
use support::{base64_payload, call, start, templates};
use tonic::Code;

async fn server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let target = format!(
        "http://127.0.0.1:{}/ok.jpg",
        listener.local_addr().unwrap().port()
    );
    let jpeg = memes::jpeg_bytes(&templates()[0].1, 80);
    let app = Router::new()
        .route(
            "/ok.jpg",
            get(move || async move { ([(header::CONTENT_TYPE, "image/jpeg")], jpeg) }),
        )
        .route("/missing.jpg", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/busy.jpg",
            get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
        )
        .route(
            "/stall.jpg",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                StatusCode::OK
            }),
        )
        .route(
            "/redirect.jpg",
            get(move || async move { (StatusCode::FOUND, [(header::LOCATION, target)]) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test]
async fn bad_images_are_clear_errors_and_the_runner_keeps_serving_in_bounded_memory() {
    let base = server().await;
    // Loopback URLs allowed so the test server is reachable: the redirect case then
    // shows that redirects are refused in themselves, not only for their target.
    let mut runner = start(&[
        ("PLUGWORKER_IMAGE_ALLOW_PRIVATE", "1"),
        ("PLUGWORKER_IMAGE_FETCH_TIMEOUT_MS", "2000"),
    ])
    .await;
    let good = memes::jpeg_bytes(&templates()[0].1, 80);
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let url = |path: &str| serde_json::json!({ "image_url": format!("{base}{path}") });

    let cases: Vec<(&str, serde_json::Value, Code, &str)> = vec![
        (
            "non-image bytes",
            base64_payload(b"%PDF-1.7 definitely not an image"),
            Code::FailedPrecondition,
            "not a PNG, JPEG, WebP or GIF",
        ),
        (
            "truncated JPEG",
            base64_payload(&truncated),
            Code::FailedPrecondition,
            "truncated",
        ),
        (
            "30000×30000 PNG",
            base64_payload(&png_header_only(30_000, 30_000)),
            Code::FailedPrecondition,
            "30000×30000",
        ),
        (
            "bad base64",
            serde_json::json!({ "image_base64": "not base64 at all!!" }),
            Code::InvalidArgument,
            "not valid base64",
        ),
        (
            "URL that 404s",
            url("/missing.jpg"),
            Code::FailedPrecondition,
            "404",
        ),
        (
            "URL that stalls",
            url("/stall.jpg"),
            Code::Unavailable,
            "timed out",
        ),
        (
            "URL whose server is busy",
            url("/busy.jpg"),
            Code::Unavailable,
            "503",
        ),
        (
            "redirect to 127.0.0.1",
            url("/redirect.jpg"),
            Code::FailedPrecondition,
            "redirect",
        ),
        (
            "both sources",
            serde_json::json!({ "image_url": format!("{base}/ok.jpg"), "image_base64": "AAAA" }),
            Code::InvalidArgument,
            "",
        ),
        (
            "no source",
            serde_json::json!({}),
            Code::InvalidArgument,
            "",
        ),
        (
            "bad S3 bucket name",
            serde_json::json!({ "image_s3": "s3://Not_A_Bucket/meme.jpg" }),
            Code::InvalidArgument,
            "not a valid S3 bucket name",
        ),
    ];
    for algorithm in ["meme_classifier", "ocr"] {
        for (name, payload, code, fragment) in &cases {
            let started = Instant::now();
            let status = call(&mut runner.client, algorithm, payload)
                .await
                .expect_err(&format!("{algorithm}: {name} should fail"));
            assert_eq!(status.code(), *code, "{algorithm}: {name}: {status:?}");
            assert!(
                status
                    .message()
                    .to_lowercase()
                    .contains(&fragment.to_lowercase()),
                "{algorithm}: {name}: {:?} does not mention {fragment:?}",
                status.message()
            );
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{algorithm}: {name} took {:?}",
                started.elapsed()
            );
        }
        // Still serving, and a good URL works.
        let result = call(&mut runner.client, algorithm, &url("/ok.jpg"))
            .await
            .unwrap();
        assert!(result["width"].as_u64().unwrap() > 0, "{result}");
    }
    assert!(runner.process.is_running());

    // An image without pixels can never be read: a permanent error for both engines,
    // decided at decode time, never an internal (retried) one from a model.
    // (The PNG decoder refuses a 0 dimension itself; a GIF's screen and first frame are
    // the input's own check.)
    let empty: [(&str, Vec<u8>, &str); 3] = [
        (
            "GIF with a 0×0 screen",
            gif_hand_built((0, 0), (1, 1)),
            "the image is empty: Gif header says 0×0",
        ),
        (
            "GIF whose first frame is 0×0",
            gif_hand_built((16, 16), (0, 0)),
            "the image is empty: GIF frame 1 (the one decoded) is 0×0",
        ),
        (
            "PNG 0 pixels wide",
            png_header_only(0, 16),
            "invalid image dimensions",
        ),
    ];
    for algorithm in ["meme_classifier", "ocr"] {
        for (name, bytes, fragment) in &empty {
            let status = call(&mut runner.client, algorithm, &base64_payload(bytes))
                .await
                .expect_err(&format!("{algorithm}: {name} should fail"));
            assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "{algorithm}: {name}: {status:?}"
            );
            assert!(
                status
                    .message()
                    .to_lowercase()
                    .contains(&fragment.to_lowercase()),
                "{algorithm}: {name}: {:?} does not mention {fragment:?}",
                status.message()
            );
            let error = plugworker_controller::classify::status_error(&status);
            assert_eq!(
                error.class,
                plugworker_jobs::ErrorClass::Permanent,
                "{algorithm}: {name}: {error:?}"
            );
            assert_eq!(error.code, plugworker_jobs::codes::UNPROCESSABLE);
        }
    }
    let (peak, _) = plugworker_testkit::rss(runner.process.pid());
    println!("image-runner peak RSS {} MiB", peak / (1024 * 1024));
    // A decoded 30000×30000 RGB image alone would be 2.5 GiB.
    assert!(
        peak < 1024 * 1024 * 1024,
        "peak RSS {} MiB",
        peak / (1024 * 1024)
    );

    // Without the development flag, loopback URLs are refused before any connection.
    let mut strict = start(&[]).await;
    let status = call(&mut strict.client, "meme_classifier", &url("/ok.jpg"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("private"), "{}", status.message());
}
