//! Image input for runner-kit algorithms (DESIGN.md §3, "Image inputs").
//!
//! An image algorithm flattens [`ImageSource`] into its input type, so every image
//! algorithm accepts the same two forms: `{"image_url": "https://..."}` or
//! `{"image_base64": "..."}`. [`ImageLoader::load`] turns either into an RGB image, or into a
//! clear `INVALID_ARGUMENT` / `FAILED_PRECONDITION` error; nothing here can crash a runner
//! or exhaust its memory:
//!
//! - URLs: http/https only; no redirects; hosts that are, or resolve to, loopback, private,
//!   link-local (cloud metadata), CGNAT, multicast or unspecified addresses are refused
//!   unless allowed by configuration; connect and total time limits; a byte cap enforced
//!   on the declared length and while streaming.
//! - Bytes: PNG, JPEG, WebP and GIF (first frame) only, recognised by content; the pixel
//!   count is read from the header and capped *before* decoding (decompression bombs);
//!   decoding itself runs under allocation limits; EXIF orientation is applied.

mod fetch;

use base64::Engine;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use plugworker_kit::RunError;
use schemars::JsonSchema;
use serde::Deserialize;
use std::io::Cursor;
use std::time::Duration;

/// Where an algorithm's image comes from: exactly one of the two fields.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[schemars(extend("oneOf" = [{"required": ["image_url"]}, {"required": ["image_base64"]}]))]
pub struct ImageSource {
    /// http(s) URL of a PNG, JPEG, WebP or GIF image.
    #[serde(default)]
    #[schemars(length(min = 1, max = 4096))]
    pub image_url: Option<String>,
    /// The image file's bytes, base64-encoded (standard alphabet, padding optional).
    #[serde(default)]
    pub image_base64: Option<String>,
}

/// Limits and policies, from the environment by default (see [`ImageLimits::from_env`]).
#[derive(Clone, Debug)]
pub struct ImageLimits {
    /// Largest encoded image accepted, from a URL or inline.
    pub max_bytes: usize,
    /// Largest width × height accepted.
    pub max_pixels: u64,
    pub connect_timeout: Duration,
    /// Whole fetch, from connect to last byte.
    pub fetch_timeout: Duration,
    /// Allow URLs on loopback and private networks (development only).
    pub allow_private_addresses: bool,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            max_pixels: 40_000_000,
            connect_timeout: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(20),
            allow_private_addresses: false,
        }
    }
}

impl ImageLimits {
    /// Defaults, overridden by `PLUGWORKER_IMAGE_MAX_BYTES`, `PLUGWORKER_IMAGE_MAX_PIXELS`,
    /// `PLUGWORKER_IMAGE_FETCH_TIMEOUT_MS` and `PLUGWORKER_IMAGE_ALLOW_PRIVATE=1`.
    pub fn from_env() -> Self {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let mut limits = Self::default();
        if let Some(bytes) = number("PLUGWORKER_IMAGE_MAX_BYTES") {
            limits.max_bytes = bytes as usize;
        }
        if let Some(pixels) = number("PLUGWORKER_IMAGE_MAX_PIXELS") {
            limits.max_pixels = pixels;
        }
        if let Some(ms) = number("PLUGWORKER_IMAGE_FETCH_TIMEOUT_MS") {
            limits.fetch_timeout = Duration::from_millis(ms);
        }
        limits.allow_private_addresses =
            std::env::var("PLUGWORKER_IMAGE_ALLOW_PRIVATE").is_ok_and(|v| v == "1");
        limits
    }
}

/// Loads images for an algorithm; create once at load time and share.
#[derive(Clone, Debug)]
pub struct ImageLoader {
    limits: ImageLimits,
    http: reqwest::Client,
}

impl ImageLoader {
    pub fn new(limits: ImageLimits) -> Self {
        let http = fetch::client(&limits);
        Self { limits, http }
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    /// The encoded bytes of the image `source` names.
    pub async fn bytes(&self, source: &ImageSource) -> Result<Vec<u8>, RunError> {
        match (&source.image_url, &source.image_base64) {
            (Some(url), None) => fetch::fetch(&self.http, &self.limits, url).await,
            (None, Some(encoded)) => decode_base64(encoded, self.limits.max_bytes),
            (Some(_), Some(_)) => Err(RunError::InvalidInput(
                "give either image_url or image_base64, not both".into(),
            )),
            (None, None) => Err(RunError::InvalidInput(
                "image_url or image_base64 is required".into(),
            )),
        }
    }

    /// The image as RGB, orientation applied. Decoding runs on the blocking pool.
    pub async fn load(&self, source: &ImageSource) -> Result<RgbImage, RunError> {
        use tracing::Instrument;
        let kind = if source.image_url.is_some() {
            "url"
        } else {
            "base64"
        };
        let bytes = self
            .bytes(source)
            .instrument(tracing::info_span!(
                "image.fetch",
                plugworker.image.source = kind
            ))
            .await?;
        let max_pixels = self.limits.max_pixels;
        let span = tracing::info_span!("image.decode", plugworker.image.bytes = bytes.len());
        tokio::task::spawn_blocking(move || span.in_scope(|| decode(&bytes, max_pixels)))
            .await
            .map_err(|e| RunError::Internal(format!("image decoder thread failed: {e}")))?
    }
}

fn decode_base64(encoded: &str, max_bytes: usize) -> Result<Vec<u8>, RunError> {
    // 4 characters carry 3 bytes: refuse before allocating for an oversized payload.
    if encoded.len() / 4 * 3 > max_bytes + 3 {
        return Err(RunError::Unprocessable(format!(
            "image is larger than {max_bytes} bytes"
        )));
    }
    let trimmed: String = encoded
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(trimmed.as_bytes())
        .map_err(|e| RunError::InvalidInput(format!("image_base64 is not valid base64: {e}")))
}

/// Whether a JPEG's last scan is followed by its end-of-image marker. The JPEG decoder
/// pads a truncated scan with grey instead of failing, which would hand a model a
/// half-grey image; the check is needed to say "truncated" instead. An EXIF thumbnail
/// carries its own markers earlier in the file, so only what follows the last
/// start-of-scan counts (inside entropy-coded data 0xFF is always stuffed, so 0xFFD9 can
/// only be the marker).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(start) => bytes[start..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Decodes PNG, JPEG, WebP or GIF bytes into RGB, refusing images over `max_pixels`.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, RunError> {
    let unprocessable =
        |what: &str, e: &dyn std::fmt::Display| RunError::Unprocessable(format!("{what}: {e}"));
    let format = image::guess_format(bytes).map_err(|_| {
        RunError::Unprocessable("the bytes are not a PNG, JPEG, WebP or GIF image".into())
    })?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif
    ) {
        return Err(RunError::Unprocessable(format!(
            "{format:?} images are not accepted (PNG, JPEG, WebP or GIF)"
        )));
    }
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(RunError::Unprocessable(
            "the JPEG is truncated (no end-of-image marker after its last scan)".into(),
        ));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| unprocessable("cannot read the image header", &e))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(RunError::Unprocessable(format!(
            "image is {width}×{height} = {pixels} pixels, more than the {max_pixels} allowed"
        )));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // RGBA16 of the accepted size, plus decoder scratch.
    limits.max_alloc = Some(
        max_pixels
            .saturating_mul(8)
            .saturating_add(64 * 1024 * 1024),
    );
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| unprocessable("cannot decode the image", &e))?;
    let orientation = decoder.orientation().ok();
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| unprocessable("cannot decode the image", &e))?;
    if let Some(orientation) = orientation {
        image.apply_orientation(orientation);
    }
    Ok(image.into_rgb8())
}
