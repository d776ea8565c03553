//! Image input for runner-kit algorithms (see docs/runner-bounds.md for the bounds).
//!
//! An image algorithm flattens [`ImageSource`] into its input type, so every image
//! algorithm accepts the same three forms: `{"image_url": "https://..."}`,
//! `{"image_base64": "..."}` or `{"image_s3": "s3://bucket/key"}` (also
//! `{"image_s3": {"bucket": ..., "key": ...}}`). [`ImageLoader::load`] turns any of them
//! into an RGB image, or into a clear error whose class tells the caller whether trying
//! again can help; nothing here can crash a runner or exhaust its memory:
//!
//! - URLs: http/https only; no redirects; hosts that are, or resolve to, loopback, private,
//!   link-local (cloud metadata), CGNAT, multicast or unspecified addresses are refused
//!   unless allowed by configuration; proxies only when configured explicitly (never from
//!   `HTTP_PROXY` and friends), and then the target is still checked; connect and total
//!   time limits; a byte cap enforced on the declared length and while streaming.
//! - S3 objects: read with the runner's own AWS credentials (the standard chain), under
//!   the same time limit and byte cap.
//! - Bytes: PNG, JPEG, WebP and GIF (first frame) only, recognised by content; the pixel
//!   count of the image, and of every GIF frame, is read from the headers and capped
//!   *before* decoding (decompression bombs); an image without pixels (a 0 width or
//!   height, a GIF's screen or first frame included) is refused as permanently
//!   unusable, never handed to a model; decoding itself runs under allocation
//!   limits, on the run's blocking work (so it keeps the run slot); EXIF orientation is
//!   applied.
//!
//! Error classes: a bad source is `INVALID_ARGUMENT`; an image that cannot be had or used
//! (404, access denied, oversized, undecodable) is `FAILED_PRECONDITION`; a failure that
//! can heal (timeouts, connection errors, HTTP 408/429/5xx, S3 throttling) is
//! `UNAVAILABLE`, which the controller retries.

mod fetch;
mod s3;

use base64::Engine;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use plugworker_kit::{RunContext, RunError};
use schemars::JsonSchema;
use serde::Deserialize;
use std::io::Cursor;
#[cfg(feature = "s3")]
use std::sync::Arc;
use std::time::Duration;

pub use s3::{S3Location, S3Object, S3Reference};

/// Where an algorithm's image comes from: exactly one of the three fields.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[schemars(extend("oneOf" = [
    {"required": ["image_url"]},
    {"required": ["image_base64"]},
    {"required": ["image_s3"]},
]))]
pub struct ImageSource {
    /// http(s) URL of a PNG, JPEG, WebP or GIF image.
    #[serde(default)]
    #[schemars(length(min = 1, max = 4096))]
    pub image_url: Option<String>,
    /// The image file's bytes, base64-encoded (standard alphabet, padding optional).
    #[serde(default)]
    pub image_base64: Option<String>,
    /// An S3 object holding the image, read with the runner's own AWS credentials:
    /// `"s3://bucket/key"` or `{"bucket": "...", "key": "..."}`.
    #[serde(default)]
    pub image_s3: Option<S3Reference>,
}

/// The source a job gave, once checked to be exactly one.
enum Source<'a> {
    Url(&'a str),
    Base64(&'a str),
    S3(&'a S3Reference),
}

impl ImageSource {
    fn only(&self) -> Result<Source<'_>, RunError> {
        let mut given = Vec::with_capacity(1);
        if let Some(url) = &self.image_url {
            given.push(("image_url", Source::Url(url)));
        }
        if let Some(encoded) = &self.image_base64 {
            given.push(("image_base64", Source::Base64(encoded)));
        }
        if let Some(reference) = &self.image_s3 {
            given.push(("image_s3", Source::S3(reference)));
        }
        match given.len() {
            0 => Err(RunError::InvalidInput(
                "one of image_url, image_base64 or image_s3 is required".into(),
            )),
            1 => Ok(given.pop().expect("one source").1),
            _ => Err(RunError::InvalidInput(format!(
                "give exactly one image source, not {}",
                given
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ))),
        }
    }

    fn kind(&self) -> &'static str {
        match self.only() {
            Ok(Source::Url(_)) => "url",
            Ok(Source::Base64(_)) => "base64",
            Ok(Source::S3(_)) => "s3",
            Err(_) => "none",
        }
    }
}

/// A setting of the image input that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

/// Limits and policies, from the environment by default (see [`ImageLimits::from_env`]).
#[derive(Clone, Debug)]
pub struct ImageLimits {
    /// Largest encoded image accepted, from a URL, S3 or inline.
    pub max_bytes: usize,
    /// Largest width × height accepted, for the image and for each GIF frame.
    pub max_pixels: u64,
    pub connect_timeout: Duration,
    /// Whole fetch, from connect to last byte (URL or S3).
    pub fetch_timeout: Duration,
    /// Allow URLs on loopback and private networks (development only).
    pub allow_private_addresses: bool,
    /// HTTP(S) proxy for `image_url` fetches. Only this setting enables a proxy: the
    /// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` variables are ignored, because a proxy
    /// resolves the target itself, out of reach of the private-address guard. With a
    /// proxy, the target's addresses are checked before the request is sent.
    pub proxy: Option<url::Url>,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_bytes: 20 * 1024 * 1024,
            max_pixels: 40_000_000,
            connect_timeout: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(20),
            allow_private_addresses: false,
            proxy: None,
        }
    }
}

impl ImageLimits {
    /// Defaults, overridden by `PLUGWORKER_IMAGE_MAX_BYTES`, `PLUGWORKER_IMAGE_MAX_PIXELS`,
    /// `PLUGWORKER_IMAGE_FETCH_TIMEOUT_MS` (each a whole number, at least 1),
    /// `PLUGWORKER_IMAGE_ALLOW_PRIVATE` (`1`/`true` or `0`/`false`) and
    /// `PLUGWORKER_IMAGE_PROXY` (an `http(s)://host:port` URL). An empty variable counts
    /// as unset; any other value that is not one of those is an error naming the
    /// variable, its value and what it accepts, never a silent default.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// [`from_env`](Self::from_env) with the variables read through `lookup`.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, ConfigError> {
        let value = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match lookup(name) {
                None => Ok(None),
                Some(raw) => match raw.into_string() {
                    Ok(text) if text.trim().is_empty() => Ok(None),
                    Ok(text) => Ok(Some(text.trim().to_string())),
                    Err(raw) => Err(ConfigError {
                        name,
                        value: raw.to_string_lossy().into_owned(),
                        reason: "not valid UTF-8".into(),
                    }),
                },
            }
        };
        // A limit of zero would refuse every image (or time every fetch out at once): a
        // mistake, not a policy.
        let positive = |name: &'static str, unit: &str| -> Result<Option<u64>, ConfigError> {
            let Some(text) = value(name)? else {
                return Ok(None);
            };
            match text.parse::<u64>() {
                Ok(number) if number > 0 => Ok(Some(number)),
                _ => Err(ConfigError {
                    name,
                    value: text,
                    reason: format!("expected a whole number of {unit}, at least 1"),
                }),
            }
        };
        let mut limits = Self::default();
        if let Some(bytes) = positive("PLUGWORKER_IMAGE_MAX_BYTES", "bytes")? {
            // Only a 32-bit host could refuse this, and only above 4 GiB: still say so.
            limits.max_bytes = usize::try_from(bytes).map_err(|_| ConfigError {
                name: "PLUGWORKER_IMAGE_MAX_BYTES",
                value: bytes.to_string(),
                reason: format!("at most {} on this machine", usize::MAX),
            })?;
        }
        if let Some(pixels) = positive("PLUGWORKER_IMAGE_MAX_PIXELS", "pixels")? {
            limits.max_pixels = pixels;
        }
        if let Some(ms) = positive("PLUGWORKER_IMAGE_FETCH_TIMEOUT_MS", "milliseconds")? {
            limits.fetch_timeout = Duration::from_millis(ms);
        }
        const ALLOW_PRIVATE: &str = "PLUGWORKER_IMAGE_ALLOW_PRIVATE";
        if let Some(text) = value(ALLOW_PRIVATE)? {
            limits.allow_private_addresses = match text.to_ascii_lowercase().as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    return Err(ConfigError {
                        name: ALLOW_PRIVATE,
                        value: text,
                        reason: "expected 1 or true (allow), 0 or false (refuse)".into(),
                    });
                }
            };
        }
        const PROXY: &str = "PLUGWORKER_IMAGE_PROXY";
        if let Some(raw) = value(PROXY)? {
            let invalid = |reason: String| ConfigError {
                name: PROXY,
                value: raw.clone(),
                reason,
            };
            let proxy = url::Url::parse(&raw).map_err(|e| {
                invalid(format!(
                    "{e}; expected http://host:port or https://host:port"
                ))
            })?;
            if !matches!(proxy.scheme(), "http" | "https") || proxy.host().is_none() {
                return Err(invalid(
                    "expected http://host:port or https://host:port".into(),
                ));
            }
            limits.proxy = Some(proxy);
        }
        Ok(limits)
    }
}

/// Loads images for an algorithm; create once at load time and share.
#[derive(Clone, Debug)]
pub struct ImageLoader {
    limits: ImageLimits,
    http: reqwest::Client,
    /// Made on first use of `image_s3`: a runner that never sees one needs no AWS setup.
    #[cfg(feature = "s3")]
    s3: Arc<tokio::sync::OnceCell<aws_sdk_s3::Client>>,
}

impl ImageLoader {
    /// A loader; `image_s3` objects are read with a client made from the environment's
    /// standard AWS configuration (a custom endpoint such as `AWS_ENDPOINT_URL_S3` switches
    /// to path-style addressing) the first time one is needed.
    pub fn new(limits: ImageLimits) -> Result<Self, ConfigError> {
        let http = fetch::client(&limits)?;
        Ok(Self {
            limits,
            http,
            #[cfg(feature = "s3")]
            s3: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// A loader reading `image_s3` objects with `client`.
    #[cfg(feature = "s3")]
    pub fn with_s3_client(
        limits: ImageLimits,
        client: aws_sdk_s3::Client,
    ) -> Result<Self, ConfigError> {
        let loader = Self::new(limits)?;
        loader
            .s3
            .set(client)
            .expect("a new loader has no S3 client yet");
        Ok(loader)
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    /// The encoded bytes of the image `source` names.
    pub async fn bytes(&self, source: &ImageSource) -> Result<Vec<u8>, RunError> {
        match source.only()? {
            Source::Url(url) => fetch::fetch(&self.http, &self.limits, url).await,
            Source::Base64(encoded) => decode_base64(encoded, self.limits.max_bytes),
            Source::S3(reference) => {
                let location = reference.location()?;
                #[cfg(feature = "s3")]
                {
                    let client = self.s3.get_or_init(s3::client_from_env).await;
                    s3::fetch(client, &self.limits, &location).await
                }
                #[cfg(not(feature = "s3"))]
                Err(s3::unsupported(&location))
            }
        }
    }

    /// The image as RGB, orientation applied. Decoding (base64 included) is the run's
    /// blocking work ([`RunContext::blocking`]): it stays off the runner's I/O threads,
    /// so a deadline is answered on time, and it keeps the run slot until it ends, even
    /// when the caller's deadline answers first.
    pub async fn load(
        &self,
        source: &ImageSource,
        context: &RunContext,
    ) -> Result<RgbImage, RunError> {
        use tracing::Instrument;
        let max_pixels = self.limits.max_pixels;
        let max_bytes = self.limits.max_bytes;
        if let Source::Base64(encoded) = source.only()? {
            let encoded = encoded.to_string();
            let span = tracing::info_span!("image.decode", plugworker.image.source = "base64");
            return context
                .blocking(move || {
                    span.in_scope(|| decode(&decode_base64(&encoded, max_bytes)?, max_pixels))
                })
                .await;
        }
        let bytes = self
            .bytes(source)
            .instrument(tracing::info_span!(
                "image.fetch",
                plugworker.image.source = source.kind()
            ))
            .await?;
        let span = tracing::info_span!("image.decode", plugworker.image.bytes = bytes.len());
        context
            .blocking(move || span.in_scope(|| decode(&bytes, max_pixels)))
            .await
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

/// Appends `chunk` to `body` unless that would make it longer than `cap`.
pub(crate) fn append_capped(body: &mut Vec<u8>, chunk: &[u8], cap: usize) -> bool {
    if body.len().saturating_add(chunk.len()) > cap {
        return false;
    }
    body.extend_from_slice(chunk);
    true
}

/// At most `max` characters of a caller's string, for error messages.
pub(crate) fn shown(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return format!("{text:?}");
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut:?}…")
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

/// Checks every frame of a GIF against `max_pixels`, from the block structure alone (no
/// pixel data is decompressed). A GIF's logical screen says nothing about its frames: a
/// 16×16 screen may carry a 60000×60000 frame, whose buffer the decoder would allocate.
/// Malformed structure is left to the decoder to report.
fn check_gif_frames(bytes: &[u8], max_pixels: u64) -> Result<(), RunError> {
    /// Skips a chain of data sub-blocks starting at `pos`; `None` if it runs off the end.
    fn skip_sub_blocks(bytes: &[u8], mut pos: usize) -> Option<usize> {
        loop {
            let size = usize::from(*bytes.get(pos)?);
            pos += 1;
            if size == 0 {
                return Some(pos);
            }
            pos += size;
        }
    }
    let color_table = |packed: u8| {
        if packed & 0x80 != 0 {
            3usize << ((packed & 0x07) + 1)
        } else {
            0
        }
    };
    // Header (6) + logical screen descriptor (7), then the global color table.
    let Some(&screen_flags) = bytes.get(10) else {
        return Ok(());
    };
    let mut pos = 13 + color_table(screen_flags);
    let mut frame = 0usize;
    loop {
        match bytes.get(pos) {
            // Extension: introducer, label, sub-blocks.
            Some(0x21) => match skip_sub_blocks(bytes, pos + 2) {
                Some(next) => pos = next,
                None => return Ok(()),
            },
            // Image descriptor: separator, left, top, width, height (u16 LE), flags.
            Some(0x2C) => {
                let Some(descriptor) = bytes.get(pos..pos + 10) else {
                    return Ok(());
                };
                frame += 1;
                let width = u16::from_le_bytes([descriptor[5], descriptor[6]]);
                let height = u16::from_le_bytes([descriptor[7], descriptor[8]]);
                // The first frame is the one decoded: without pixels it would come out as
                // a blank screen. Later frames are never decoded, so theirs do not matter.
                if frame == 1 && (width == 0 || height == 0) {
                    return Err(empty(&format!(
                        "GIF frame 1 (the one decoded) is {width}×{height}"
                    )));
                }
                let pixels = u64::from(width) * u64::from(height);
                if pixels > max_pixels {
                    return Err(RunError::Unprocessable(format!(
                        "GIF frame {frame} is {width}×{height} = {pixels} pixels, more than the {max_pixels} allowed"
                    )));
                }
                // Local color table, then the LZW minimum code size, then the data.
                pos += 10 + color_table(descriptor[9]) + 1;
                match skip_sub_blocks(bytes, pos) {
                    Some(next) => pos = next,
                    None => return Ok(()),
                }
            }
            // Trailer, garbage or the end: nothing more to check.
            _ => return Ok(()),
        }
    }
}

/// The permanent error for an image without pixels: no retry can give it any, so it is
/// refused here (`FAILED_PRECONDITION`) instead of reaching a model, which would fail it
/// as an internal, retried error.
fn empty(what: &str) -> RunError {
    RunError::Unprocessable(format!("the image is empty: {what}, it has no pixels"))
}

/// Decodes PNG, JPEG, WebP or GIF bytes into RGB, refusing images (and GIF frames) over
/// `max_pixels` and images without pixels (a 0 width or height, a GIF's screen or first
/// frame included).
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
    if width == 0 || height == 0 {
        return Err(empty(&format!("{format:?} header says {width}×{height}")));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(RunError::Unprocessable(format!(
            "image is {width}×{height} = {pixels} pixels, more than the {max_pixels} allowed"
        )));
    }
    if format == ImageFormat::Gif {
        check_gif_frames(bytes, max_pixels)?;
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
    // The header said otherwise, but what counts is what was decoded.
    if image.width() == 0 || image.height() == 0 {
        return Err(empty(&format!(
            "decoded as {}×{}",
            image.width(),
            image.height()
        )));
    }
    Ok(image.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.into())
    }

    /// The error `pairs` give, as text.
    fn refused(pairs: &[(&str, &str)]) -> String {
        ImageLimits::from_lookup(env(pairs))
            .expect_err("a bad value must fail the load")
            .to_string()
    }

    #[test]
    fn every_setting_is_read_and_empty_means_unset() {
        let limits = ImageLimits::from_lookup(env(&[
            ("PLUGWORKER_IMAGE_MAX_BYTES", "1000"),
            ("PLUGWORKER_IMAGE_MAX_PIXELS", " 2000 "),
            ("PLUGWORKER_IMAGE_FETCH_TIMEOUT_MS", "1500"),
            ("PLUGWORKER_IMAGE_ALLOW_PRIVATE", "TRUE"),
            ("PLUGWORKER_IMAGE_PROXY", "http://proxy.internal:3128"),
        ]))
        .unwrap();
        assert_eq!(limits.max_bytes, 1000);
        assert_eq!(limits.max_pixels, 2000);
        assert_eq!(limits.fetch_timeout, Duration::from_millis(1500));
        assert!(limits.allow_private_addresses);
        assert_eq!(
            limits.proxy.unwrap().as_str(),
            "http://proxy.internal:3128/"
        );
        let defaults = ImageLimits::default();
        let unset = ImageLimits::from_lookup(env(&[
            ("PLUGWORKER_IMAGE_MAX_BYTES", ""),
            ("PLUGWORKER_IMAGE_ALLOW_PRIVATE", " "),
        ]))
        .unwrap();
        assert_eq!(unset.max_bytes, defaults.max_bytes);
        assert!(!unset.allow_private_addresses);
        assert!(unset.proxy.is_none());
        let refused_private =
            ImageLimits::from_lookup(env(&[("PLUGWORKER_IMAGE_ALLOW_PRIVATE", "0")])).unwrap();
        assert!(!refused_private.allow_private_addresses);
    }

    #[test]
    fn a_bad_value_names_the_variable_the_value_and_what_is_accepted() {
        let error = refused(&[("PLUGWORKER_IMAGE_MAX_PIXELS", "lots")]);
        assert_eq!(
            error,
            "PLUGWORKER_IMAGE_MAX_PIXELS=\"lots\": expected a whole number of pixels, at least 1"
        );
        for (name, value) in [
            ("PLUGWORKER_IMAGE_MAX_BYTES", "0"),
            ("PLUGWORKER_IMAGE_MAX_BYTES", "-5"),
            ("PLUGWORKER_IMAGE_MAX_BYTES", "20MiB"),
            ("PLUGWORKER_IMAGE_FETCH_TIMEOUT_MS", "2s"),
            ("PLUGWORKER_IMAGE_FETCH_TIMEOUT_MS", "0"),
        ] {
            let error = refused(&[(name, value)]);
            assert!(
                error.starts_with(&format!("{name}={value:?}: expected a whole number")),
                "{error}"
            );
        }
        // It used to be "1" or silently off: "yes" must not quietly mean "no".
        let error = refused(&[("PLUGWORKER_IMAGE_ALLOW_PRIVATE", "yes")]);
        assert!(
            error.contains("PLUGWORKER_IMAGE_ALLOW_PRIVATE=\"yes\""),
            "{error}"
        );
        assert!(error.contains("expected 1 or true"), "{error}");
        let error = refused(&[("PLUGWORKER_IMAGE_PROXY", "socks5://p:1080")]);
        assert!(error.contains("http://host:port"), "{error}");
        let error = refused(&[("PLUGWORKER_IMAGE_PROXY", "proxy.internal")]);
        assert!(error.contains("http://host:port"), "{error}");
    }

    #[test]
    fn a_value_that_is_not_utf8_is_an_error_not_unset() {
        use std::os::unix::ffi::OsStringExt;
        let lookup = |name: &str| {
            (name == "PLUGWORKER_IMAGE_MAX_BYTES")
                .then(|| std::ffi::OsString::from_vec(vec![b'1', 0xff]))
        };
        let error = ImageLimits::from_lookup(lookup).unwrap_err();
        assert_eq!(error.name, "PLUGWORKER_IMAGE_MAX_BYTES");
        assert!(error.reason.contains("UTF-8"), "{error}");
    }

    #[test]
    fn capped_appends_stop_at_the_cap() {
        let mut body = Vec::new();
        assert!(append_capped(&mut body, &[0; 6], 10));
        assert!(append_capped(&mut body, &[0; 4], 10));
        assert!(!append_capped(&mut body, &[0; 1], 10));
        assert_eq!(body.len(), 10);
    }

    #[test]
    fn shown_strings_are_cut() {
        assert_eq!(shown("abc", 5), "\"abc\"");
        assert_eq!(shown("abcdefgh", 3), "\"abc\"…");
    }
}
