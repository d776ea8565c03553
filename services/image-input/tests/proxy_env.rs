//! Proxy variables in the environment never bypass the private-address guard.
//!
//! Alone in its test binary because it sets process-wide environment variables, as a
//! runner's container environment would, before any HTTP client exists.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use image::RgbImage;
use plugworker_image_input::{ImageLimits, ImageLoader, ImageSource};
use plugworker_kit::{RunContext, RunError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn png() -> Vec<u8> {
    let mut bytes = Vec::new();
    RgbImage::from_pixel(10, 6, image::Rgb([1, 2, 3]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

/// An HTTP server answering every request with a PNG, recording the request targets.
async fn recording_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback({
        let seen = seen.clone();
        move |uri: axum::http::Uri| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(uri.to_string());
                ([(header::CONTENT_TYPE, "image/png")], png()).into_response()
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

async fn target_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/ok.png",
        get(|| async { ([(header::CONTENT_TYPE, "image/png")], png()).into_response() }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

fn loader(allow_private: bool) -> ImageLoader {
    ImageLoader::new(ImageLimits {
        allow_private_addresses: allow_private,
        fetch_timeout: Duration::from_secs(5),
        ..ImageLimits::default()
    })
    .unwrap()
}

async fn load(loader: &ImageLoader, url: String) -> Result<RgbImage, RunError> {
    let source = ImageSource {
        image_url: Some(url),
        ..Default::default()
    };
    loader.load(&source, &RunContext::new("test", None)).await
}

#[tokio::test]
async fn proxy_variables_in_the_environment_are_ignored() {
    let (proxy, seen) = recording_server().await;
    // SAFETY: the only test in this binary, and no other thread reads the environment
    // yet (the runtime is single-threaded; no HTTP client has been built).
    unsafe {
        for name in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            std::env::set_var(name, &proxy);
        }
        std::env::remove_var("NO_PROXY");
        std::env::remove_var("no_proxy");
    }
    let target = target_server().await;
    let by_name = target.replace("127.0.0.1", "localhost");

    // The control: a client with reqwest's defaults takes the proxy from the environment,
    // so the proxy, not our resolver, would reach a loopback target.
    let default_client = reqwest::Client::new();
    let through = default_client
        .get(format!("{by_name}/ok.png"))
        .send()
        .await
        .unwrap();
    assert!(through.status().is_success());
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the environment's proxy is in use"
    );
    seen.lock().unwrap().clear();

    // The guarded loader ignores the environment: the name is resolved and refused here.
    match load(&loader(false), format!("{by_name}/ok.png")).await {
        Err(RunError::Unprocessable(message)) => {
            assert!(message.contains("private or reserved"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // With private addresses allowed (development), it connects directly, still
    // without the proxy.
    let image = load(&loader(true), format!("{by_name}/ok.png"))
        .await
        .unwrap();
    assert_eq!(image.dimensions(), (10, 6));
    assert!(
        seen.lock().unwrap().is_empty(),
        "the proxy saw {:?}",
        seen.lock().unwrap()
    );
}
