//! Rendering memes for tests and benchmarks: captions on a template the way meme
//! generators draw them (bold sans-serif, white with a black outline, top and bottom),
//! and the edits memes pick up as they spread (JPEG recompression, crops, banners,
//! rescaling). Fonts come from Debian's `fonts-dejavu-core` and `fonts-liberation2`.

use ab_glyph::{FontVec, PxScale};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use imageproc::drawing::{draw_text_mut, text_size};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Bold fonts meme generators' defaults resemble (Impact itself is not redistributable).
pub const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansCondensed-Bold.ttf",
];

/// The caption fonts; panics naming the Debian package when one is missing.
pub fn fonts() -> Vec<FontVec> {
    FONT_FILES
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).unwrap_or_else(|e| {
                panic!("{path}: {e} (install fonts-dejavu-core and fonts-liberation2: scripts/setup.sh)")
            });
            FontVec::try_from_vec(bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
        })
        .collect()
}

/// The repository's models folder (gallery, fetched models, sample images).
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

pub fn load(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-models.sh)", path.display()))
        .to_rgb8()
}

/// Draws `top` and `bottom` captions (upper-cased, wrapped to the width, shrunk to at
/// most two lines each).
pub fn caption(template: &RgbImage, top: &str, bottom: &str, font: &FontVec) -> RgbImage {
    let mut image = template.clone();
    let (width, height) = image.dimensions();
    for (text, at_top) in [(top, true), (bottom, false)] {
        if text.trim().is_empty() {
            continue;
        }
        let text = text.to_uppercase();
        let mut size = height as f32 / 8.0;
        let lines = loop {
            let lines = wrap(&text, font, size, width as f32 * 0.92);
            if lines.len() <= 2 || size < 12.0 {
                break lines;
            }
            size *= 0.9;
        };
        let line_height = size * 1.05;
        let block = line_height * lines.len() as f32;
        let mut y = if at_top {
            height as f32 * 0.03
        } else {
            height as f32 * 0.97 - block
        };
        for line in &lines {
            let (line_width, _) = text_size(PxScale::from(size), font, line);
            let x = (width as f32 - line_width as f32) / 2.0;
            outlined(&mut image, line, x, y, size, font);
            y += line_height;
        }
    }
    image
}

/// White text with a black outline about a fifteenth of the text size thick.
fn outlined(image: &mut RgbImage, text: &str, x: f32, y: f32, size: f32, font: &FontVec) {
    let radius = (size / 15.0).round().max(1.0) as i32;
    let scale = PxScale::from(size);
    for dy in -radius..=radius {
        for dx in -radius..=radius {
            if dx * dx + dy * dy <= radius * radius {
                draw_text_mut(
                    image,
                    Rgb([0, 0, 0]),
                    x as i32 + dx,
                    y as i32 + dy,
                    scale,
                    font,
                    text,
                );
            }
        }
    }
    draw_text_mut(
        image,
        Rgb([255, 255, 255]),
        x as i32,
        y as i32,
        scale,
        font,
        text,
    );
}

fn wrap(text: &str, font: &FontVec, size: f32, max_width: f32) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        let candidate = match lines.last() {
            Some(line) => format!("{line} {word}"),
            None => word.to_string(),
        };
        if lines.is_empty() {
            lines.push(candidate);
        } else if (text_size(PxScale::from(size), font, &candidate).0 as f32) <= max_width {
            *lines.last_mut().unwrap() = candidate;
        } else {
            lines.push(word.to_string());
        }
    }
    lines
}

/// A white band above the image with black text, as when a meme is reposted with a
/// comment.
pub fn banner(image: &RgbImage, text: &str, font: &FontVec) -> RgbImage {
    let (width, height) = image.dimensions();
    let band = (height / 6).max(24);
    let mut out = RgbImage::from_pixel(width, height + band, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, image, 0, band as i64);
    let size = band as f32 * 0.45;
    draw_text_mut(
        &mut out,
        Rgb([20, 20, 20]),
        (width / 30) as i32,
        (band as f32 * 0.25) as i32,
        PxScale::from(size),
        font,
        text,
    );
    out
}

/// The part of the image inside fractions of its width and height.
pub fn crop(image: &RgbImage, left: f32, top: f32, right: f32, bottom: f32) -> RgbImage {
    let (w, h) = (image.width() as f32, image.height() as f32);
    let (x0, y0) = ((w * left) as u32, (h * top) as u32);
    let (x1, y1) = ((w * right) as u32, (h * bottom) as u32);
    image::imageops::crop_imm(image, x0, y0, x1 - x0, y1 - y0).to_image()
}

pub fn scale(image: &RgbImage, factor: f32) -> RgbImage {
    let (w, h) = image.dimensions();
    image::imageops::resize(
        image,
        ((w as f32 * factor) as u32).max(1),
        ((h as f32 * factor) as u32).max(1),
        image::imageops::FilterType::Triangle,
    )
}

pub fn jpeg_bytes(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(image)
        .expect("JPEG encoding");
    bytes
}

pub fn png_bytes(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::ImageRgb8(image.clone())
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .expect("PNG encoding");
    bytes
}

/// A PNG whose header claims `width`×`height` (no pixel data needed to be refused).
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for byte in bytes {
            crc ^= u32::from(*byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out
    }
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// Recompressed as JPEG at `quality` and decoded again.
pub fn recompress(image: &RgbImage, quality: u8) -> RgbImage {
    image::load_from_memory(&jpeg_bytes(image, quality))
        .expect("JPEG decoding")
        .to_rgb8()
}

/// Character accuracy of `read` against `expected`, whitespace ignored:
/// 1 − edit distance / expected length (0 when that goes negative).
pub fn character_accuracy(expected: &str, read: &str) -> f64 {
    let e: Vec<char> = expected.chars().filter(|c| !c.is_whitespace()).collect();
    let r: Vec<char> = read.chars().filter(|c| !c.is_whitespace()).collect();
    if e.is_empty() {
        return if r.is_empty() { 1.0 } else { 0.0 };
    }
    (1.0 - edit_distance(&e, &r) as f64 / e.len() as f64).max(0.0)
}

/// Levenshtein distance.
pub fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// A small deterministic generator, so every run renders the same test images.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407),
        )
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn range(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.uniform()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[((self.uniform() * items.len() as f32) as usize).min(items.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn character_accuracy_ignores_whitespace_and_counts_edits() {
        assert_eq!(character_accuracy("ONE DOES NOT", "ONEDOES NOT"), 1.0);
        assert!((character_accuracy("ABCD", "ABXD") - 0.75).abs() < 1e-9);
        assert_eq!(character_accuracy("AB", "WXYZ"), 0.0);
        assert_eq!(edit_distance(&['a', 'b'], &['b']), 1);
    }
}
