//! Image input against real bytes and a real local HTTP server.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use image::{ImageEncoder, RgbImage};
use plugworker_image_input::{ImageLimits, ImageLoader, ImageSource, decode};
use plugworker_kit::{RunContext, RunError};
use std::time::{Duration, Instant};

fn sample(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 13) as u8, 128])
    })
}

fn encode(image: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    match format {
        image::ImageFormat::WebP => image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap(),
        _ => image
            .write_to(&mut std::io::Cursor::new(&mut bytes), format)
            .unwrap(),
    }
    bytes
}

fn base64_of(bytes: &[u8]) -> ImageSource {
    ImageSource {
        image_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ..Default::default()
    }
}

fn url(url: String) -> ImageSource {
    ImageSource {
        image_url: Some(url),
        ..Default::default()
    }
}

fn loader(allow_private: bool) -> Loader {
    Loader(
        ImageLoader::new(ImageLimits {
            allow_private_addresses: allow_private,
            fetch_timeout: Duration::from_millis(800),
            max_bytes: 1024 * 1024,
            ..ImageLimits::default()
        })
        .unwrap(),
    )
}

/// An [`ImageLoader`] used as an algorithm uses it, inside a run.
struct Loader(ImageLoader);

impl Loader {
    async fn load(&self, source: &ImageSource) -> Result<RgbImage, RunError> {
        self.0.load(source, &RunContext::new("test", None)).await
    }
}

/// `jpeg` with an EXIF APP1 segment saying orientation = `orientation`.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\x00\x08\x00\x00\x00".to_vec(); // little endian, IFD at 8
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes()); // count
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

async fn server() -> String {
    let png = encode(&sample(40, 30), image::ImageFormat::Png);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let redirect_target = format!("{base}/ok.png");
    let app = Router::new()
        .route(
            "/ok.png",
            get(
                move || async move { ([(header::CONTENT_TYPE, "image/png")], png).into_response() },
            ),
        )
        .route("/missing.png", get(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/stall.png",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::OK
            }),
        )
        .route(
            "/redirect.png",
            get(move || async move { (StatusCode::FOUND, [(header::LOCATION, redirect_target)]) }),
        )
        .route("/huge.png", get(|| async { vec![0u8; 3 * 1024 * 1024] }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn assert_error(result: Result<RgbImage, RunError>, expected_kind: &str, fragment: &str) {
    match result {
        Err(RunError::InvalidInput(m)) if expected_kind == "invalid" => {
            assert!(m.contains(fragment), "{m}")
        }
        Err(RunError::Unprocessable(m)) if expected_kind == "unprocessable" => {
            assert!(m.contains(fragment), "{m}")
        }
        Err(RunError::Unavailable(m)) if expected_kind == "unavailable" => {
            assert!(m.contains(fragment), "{m}")
        }
        Ok(image) => panic!(
            "expected {expected_kind} error containing {fragment:?}, got a {:?} image",
            image.dimensions()
        ),
        Err(other) => {
            panic!("expected {expected_kind} error containing {fragment:?}, got {other:?}")
        }
    }
}

#[tokio::test]
async fn decodes_png_jpeg_webp_and_gif_from_base64() {
    let loader = loader(false);
    let image = sample(32, 24);
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Jpeg,
        image::ImageFormat::WebP,
        image::ImageFormat::Gif,
    ] {
        let decoded = loader
            .load(&base64_of(&encode(&image, format)))
            .await
            .unwrap();
        assert_eq!(decoded.dimensions(), (32, 24), "{format:?}");
    }
    // Whitespace and missing padding are tolerated.
    let text = base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(encode(&image, image::ImageFormat::Png));
    let wrapped: String = text
        .as_bytes()
        .chunks(60)
        .map(|c| std::str::from_utf8(c).unwrap().to_string() + "\n")
        .collect();
    let source = ImageSource {
        image_base64: Some(wrapped),
        ..Default::default()
    };
    assert_eq!(loader.load(&source).await.unwrap().dimensions(), (32, 24));
}

#[tokio::test]
async fn exif_orientation_is_applied() {
    let jpeg = encode(&sample(20, 10), image::ImageFormat::Jpeg);
    let rotated = with_exif_orientation(&jpeg, 6); // rotate 90° clockwise to display
    assert_eq!(decode(&jpeg, 1_000_000).unwrap().dimensions(), (20, 10));
    assert_eq!(decode(&rotated, 1_000_000).unwrap().dimensions(), (10, 20));
}

#[tokio::test]
async fn bad_bytes_get_clear_errors() {
    let loader = loader(false);
    assert_error(
        loader.load(&base64_of(b"definitely not an image")).await,
        "unprocessable",
        "not a PNG, JPEG, WebP or GIF",
    );
    let jpeg = encode(&sample(64, 64), image::ImageFormat::Jpeg);
    assert_error(
        loader.load(&base64_of(&jpeg[..jpeg.len() / 2])).await,
        "unprocessable",
        "truncated",
    );
    let png = encode(&sample(64, 64), image::ImageFormat::Png);
    assert_error(
        loader.load(&base64_of(&png[..png.len() / 2])).await,
        "unprocessable",
        "cannot decode",
    );
    let source = ImageSource {
        image_base64: Some("!!not base64!!".into()),
        ..Default::default()
    };
    assert_error(loader.load(&source).await, "invalid", "not valid base64");
    assert_error(
        loader.load(&ImageSource::default()).await,
        "invalid",
        "required",
    );
    let both = ImageSource {
        image_url: Some("https://example.com/a.png".into()),
        image_base64: Some("AA==".into()),
        ..Default::default()
    };
    assert_error(
        loader.load(&both).await,
        "invalid",
        "exactly one image source, not image_url and image_base64",
    );
    let bmp = {
        let mut bytes = Vec::new();
        sample(4, 4)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&bytes[2..]);
        bmp
    };
    assert!(loader.load(&base64_of(&bmp)).await.is_err());
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_from_its_header() {
    let loader = loader(false);
    let started = Instant::now();
    let bomb = plugworker_testkit::memes::png_header_only(30_000, 30_000);
    assert_error(
        loader.load(&base64_of(&bomb)).await,
        "unprocessable",
        "900000000 pixels",
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused before decoding"
    );
}

#[tokio::test]
async fn urls_are_fetched_with_limits_and_without_redirects() {
    let base = server().await;
    let allowed = loader(true);
    assert_eq!(
        allowed
            .load(&url(format!("{base}/ok.png")))
            .await
            .unwrap()
            .dimensions(),
        (40, 30)
    );
    assert_error(
        allowed.load(&url(format!("{base}/missing.png"))).await,
        "unprocessable",
        "404",
    );
    let started = Instant::now();
    assert_error(
        allowed.load(&url(format!("{base}/stall.png"))).await,
        "unavailable",
        "timed out",
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_error(
        allowed.load(&url(format!("{base}/redirect.png"))).await,
        "unprocessable",
        "redirects are not followed",
    );
    assert_error(
        allowed.load(&url(format!("{base}/huge.png"))).await,
        "unprocessable",
        "allowed",
    );
    assert_error(
        allowed.load(&url("ftp://example.com/a.png".into())).await,
        "invalid",
        "http or https",
    );
    assert_error(
        allowed.load(&url("not a url".into())).await,
        "invalid",
        "not a URL",
    );
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let base = server().await;
    let guarded = loader(false);
    assert_error(
        guarded.load(&url(format!("{base}/ok.png"))).await,
        "invalid",
        "private or reserved",
    );
    assert_error(
        guarded
            .load(&url("http://169.254.169.254/latest/meta-data".into()))
            .await,
        "invalid",
        "private or reserved",
    );
    assert_error(
        guarded.load(&url("http://[::1]:9/x.png".into())).await,
        "invalid",
        "private or reserved",
    );
    // A name that resolves to loopback is refused at resolution time.
    let by_name = base.replace("127.0.0.1", "localhost");
    assert_error(
        guarded.load(&url(format!("{by_name}/ok.png"))).await,
        "unprocessable",
        "private or reserved",
    );
}

#[test]
fn the_schema_requires_exactly_one_source() {
    let schema = serde_json::to_value(schemars::schema_for!(ImageSource)).unwrap();
    assert_eq!(
        schema["oneOf"],
        serde_json::json!([
            {"required": ["image_url"]},
            {"required": ["image_base64"]},
            {"required": ["image_s3"]},
        ])
    );
    // image_s3: the s3:// string or the {bucket, key} object, nothing else.
    let validator = jsonschema::validator_for(&schema).unwrap();
    for valid in [
        serde_json::json!({"image_s3": "s3://bucket/key.png"}),
        serde_json::json!({"image_s3": {"bucket": "bucket", "key": "key.png"}}),
        serde_json::json!({"image_url": "https://example.com/a.png"}),
    ] {
        assert!(validator.is_valid(&valid), "{valid}");
    }
    for invalid in [
        serde_json::json!({}),
        serde_json::json!({"image_s3": 5}),
        serde_json::json!({"image_s3": {"bucket": "bucket"}}),
        serde_json::json!({"image_s3": {"bucket": "b", "key": "k", "acl": "x"}}),
        serde_json::json!({"image_s3": "s3://b/k", "image_url": "https://example.com/a.png"}),
    ] {
        assert!(!validator.is_valid(&invalid), "{invalid}");
    }
}

/// A server answering each path with a status that can heal, or cannot.
async fn status_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/status/{code}",
        get(
            |axum::extract::Path(code): axum::extract::Path<u16>| async move {
                StatusCode::from_u16(code).unwrap()
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test]
async fn fetch_failures_that_can_heal_are_transient_and_the_rest_permanent() {
    let base = status_server().await;
    let allowed = loader(true);
    for code in [408, 429, 500, 502, 503, 504] {
        assert_error(
            allowed.load(&url(format!("{base}/status/{code}"))).await,
            "unavailable",
            &format!("HTTP {code}"),
        );
    }
    for code in [400, 401, 403, 404, 410, 451, 501] {
        assert_error(
            allowed.load(&url(format!("{base}/status/{code}"))).await,
            "unprocessable",
            &format!("HTTP {code}"),
        );
    }
    // Nothing listens there: a connection error, which a restarted server heals.
    let closed = plugworker_testkit::ClosedPort::new();
    assert_error(
        allowed.load(&url(format!("{}/a.png", closed.url()))).await,
        "unavailable",
        "cannot fetch image_url",
    );
}

/// A GIF with a `screen` logical screen and one frame per entry of `frames`, each a
/// `(width, height)` of one colour, its pixel data compressed to almost nothing.
fn gif_with_frames(screen: (u16, u16), frames: &[(u16, u16)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let palette = [0u8, 0, 0, 255, 255, 255];
        let mut encoder = gif::Encoder::new(&mut bytes, screen.0, screen.1, &palette).unwrap();
        for &(width, height) in frames {
            let pixels = vec![1u8; usize::from(width) * usize::from(height)];
            let mut frame = gif::Frame::from_indexed_pixels(width, height, pixels, None);
            frame.left = 0;
            frame.top = 0;
            encoder.write_frame(&frame).unwrap();
        }
    }
    bytes
}

#[tokio::test]
async fn the_pixel_cap_applies_to_every_gif_frame_not_only_the_screen() {
    let max_pixels = 1_000_000;
    // A 16×16 screen whose second frame is 2000×1000: refused from the block structure.
    let sneaky = gif_with_frames((16, 16), &[(16, 16), (2000, 1000)]);
    assert!(sneaky.len() < 64 * 1024, "{} bytes", sneaky.len());
    match decode(&sneaky, max_pixels) {
        Err(RunError::Unprocessable(m)) => assert!(
            m.contains("GIF frame 2 is 2000×1000 = 2000000 pixels, more than the 1000000 allowed"),
            "{m}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The first frame, the one decoded, too.
    let first = gif_with_frames((16, 16), &[(1500, 1000)]);
    match decode(&first, max_pixels) {
        Err(RunError::Unprocessable(m)) => assert!(m.contains("GIF frame 1 is 1500×1000"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Within the cap, an animation decodes to its screen.
    let fine = gif_with_frames((200, 100), &[(200, 100), (100, 50), (200, 100)]);
    assert_eq!(decode(&fine, max_pixels).unwrap().dimensions(), (200, 100));
    // And through the loader, with the loader's cap.
    let capped = Loader(
        ImageLoader::new(ImageLimits {
            max_pixels,
            ..ImageLimits::default()
        })
        .unwrap(),
    );
    assert_error(
        capped.load(&base64_of(&sneaky)).await,
        "unprocessable",
        "GIF frame 2",
    );
}

/// An HTTP proxy on loopback that answers every request with `png` and records the
/// request targets it was asked for.
async fn recording_proxy(png: Vec<u8>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new().fallback({
        let seen = seen.clone();
        move |uri: axum::http::Uri| {
            let seen = seen.clone();
            let png = png.clone();
            async move {
                seen.lock().unwrap().push(uri.to_string());
                ([(header::CONTENT_TYPE, "image/png")], png).into_response()
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, seen)
}

#[tokio::test]
async fn an_explicit_proxy_is_used_and_the_target_is_still_checked() {
    let base = server().await;
    let png = encode(&sample(12, 8), image::ImageFormat::Png);
    let (proxy, seen) = recording_proxy(png).await;
    let through_proxy = |allow_private: bool| {
        Loader(
            ImageLoader::new(ImageLimits {
                allow_private_addresses: allow_private,
                proxy: Some(proxy.parse().unwrap()),
                fetch_timeout: Duration::from_secs(5),
                ..ImageLimits::default()
            })
            .unwrap(),
        )
    };
    let guarded = through_proxy(false);
    // A name for loopback: the proxy would resolve it, so it is checked before sending.
    let by_name = base.replace("127.0.0.1", "localhost");
    assert_error(
        guarded.load(&url(format!("{by_name}/ok.png"))).await,
        "unprocessable",
        "private or reserved",
    );
    assert_error(
        guarded
            .load(&url("http://169.254.169.254/latest/meta-data".into()))
            .await,
        "invalid",
        "private or reserved",
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing refused reached the proxy"
    );
    // A public address goes through the proxy (which answers for it: no internet here).
    let image = guarded
        .load(&url("http://93.184.216.34/cat.png".into()))
        .await
        .unwrap();
    assert_eq!(image.dimensions(), (12, 8));
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["http://93.184.216.34/cat.png".to_string()]
    );
}

/// `jpeg` with its frame header (SOF0) claiming `width`×`height`.
fn jpeg_claiming(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut patched = jpeg.to_vec();
    let sof = patched
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG has a SOF0 marker");
    // Marker (2), length (2), precision (1), then height and width, big-endian.
    patched[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    patched[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    patched
}

/// A lossy WebP (VP8) whose frame header claims `width`×`height`, with no real data.
fn webp_lossy_claiming(width: u16, height: u16) -> Vec<u8> {
    // Frame tag: key frame, version 0, shown, first partition of 0 bytes; start code.
    let mut vp8 = vec![0x10, 0x00, 0x00, 0x9d, 0x01, 0x2a];
    vp8.extend_from_slice(&width.to_le_bytes());
    vp8.extend_from_slice(&height.to_le_bytes());
    vp8.extend_from_slice(&[0; 10]);
    let mut riff = b"WEBP".to_vec();
    riff.extend_from_slice(b"VP8 ");
    riff.extend_from_slice(&(vp8.len() as u32).to_le_bytes());
    riff.extend_from_slice(&vp8);
    let mut webp = b"RIFF".to_vec();
    webp.extend_from_slice(&(riff.len() as u32).to_le_bytes());
    webp.extend_from_slice(&riff);
    webp
}

/// An image with no pixels can never be decoded into something a model can read, so it is
/// a permanent error (FAILED_PRECONDITION), decided from the bytes, whatever the format:
/// never handed to an engine, which would fail it as an internal, retried error.
#[tokio::test]
async fn an_empty_image_is_a_permanent_error_in_every_format() {
    use plugworker_testkit::memes::{gif_hand_built, png_header_only};
    let jpeg = encode(&sample(32, 24), image::ImageFormat::Jpeg);
    // The decoders refuse a 0 dimension in a PNG, JPEG or WebP header themselves; a GIF's
    // screen and frames are refused by the input's own check.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("GIF with a 0×0 screen", gif_hand_built((0, 0), (1, 1))),
        ("GIF with a 0×16 screen", gif_hand_built((0, 16), (1, 1))),
        ("GIF with a 16×0 screen", gif_hand_built((16, 0), (1, 1))),
        (
            "GIF whose first frame is 0×0",
            gif_hand_built((16, 16), (0, 0)),
        ),
        (
            "GIF whose first frame is 16×0",
            gif_hand_built((16, 16), (16, 0)),
        ),
        (
            "GIF of one 0×0 frame (encoder)",
            gif_with_frames((0, 0), &[(0, 0)]),
        ),
        ("PNG 0 wide", png_header_only(0, 16)),
        ("PNG 0 high", png_header_only(16, 0)),
        ("JPEG 0 high", jpeg_claiming(&jpeg, 32, 0)),
        ("JPEG 0 wide", jpeg_claiming(&jpeg, 0, 24)),
        ("WebP 0×0", webp_lossy_claiming(0, 0)),
        ("WebP 0 high", webp_lossy_claiming(16, 0)),
    ];
    let loader = loader(false);
    for (name, bytes) in &cases {
        match loader.load(&base64_of(bytes)).await {
            Err(RunError::Unprocessable(message)) => {
                println!("{name}: {message}");
                if name.starts_with("GIF") {
                    assert!(message.contains("the image is empty"), "{name}: {message}");
                }
            }
            other => panic!("{name}: expected a permanent refusal, got {other:?}"),
        }
    }
    // The hand-built GIF is valid in itself: with a screen, its one pixel decodes.
    assert_eq!(
        decode(&gif_hand_built((1, 1), (1, 1)), 1_000_000)
            .unwrap()
            .dimensions(),
        (1, 1)
    );
}
