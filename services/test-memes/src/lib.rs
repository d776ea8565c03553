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

/// A night sky: a dark, faintly noisy background with stars of every size (mostly
/// specks, a few bright discs with a glow) and small elliptical galaxies. Round blobs like
/// these are what text detectors mistake for "0", "O" or "C", so OCR tests draw captions
/// over it.
pub fn star_field(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut random = Lcg::new(seed);
    let mut sky = vec![[0f32; 3]; (width * height) as usize];
    for pixel in sky.iter_mut() {
        let level = 4.0 + random.range(0.0, 10.0);
        *pixel = [level, level, level * 1.3];
    }
    let count = (width * height / 350).max(1);
    for _ in 0..count {
        let (x, y) = (
            random.range(0.0, width as f32),
            random.range(0.0, height as f32),
        );
        // Sizes follow a steep power law, as in real sky photos: mostly specks.
        let sigma = 0.5 + 3.0 * random.uniform().powi(5);
        let brightness = random.range(60.0, 255.0) * (1.0 + sigma / 2.0);
        let tint = [
            random.range(0.8, 1.0),
            random.range(0.8, 1.0),
            random.range(0.85, 1.0),
        ];
        let stretch = if random.uniform() < 0.08 {
            // A galaxy: an ellipse at some angle.
            random.range(1.5, 3.0)
        } else {
            1.0
        };
        let angle = random.range(0.0, std::f32::consts::PI);
        splat(
            &mut sky,
            width,
            height,
            [x, y],
            sigma,
            stretch,
            angle,
            brightness,
            tint,
        );
    }
    RgbImage::from_fn(width, height, |x, y| {
        let p = sky[(y * width + x) as usize];
        Rgb(p.map(|v| v.clamp(0.0, 255.0) as u8))
    })
}

/// Adds a Gaussian blob (elongated `stretch` times along `angle`) to a float image.
#[allow(clippy::too_many_arguments)]
fn splat(
    image: &mut [[f32; 3]],
    width: u32,
    height: u32,
    [cx, cy]: [f32; 2],
    sigma: f32,
    stretch: f32,
    angle: f32,
    brightness: f32,
    tint: [f32; 3],
) {
    let reach = (3.0 * sigma * stretch).ceil() as i32;
    let (cos, sin) = (angle.cos(), angle.sin());
    for dy in -reach..=reach {
        for dx in -reach..=reach {
            let (x, y) = (cx as i32 + dx, cy as i32 + dy);
            if x < 0 || y < 0 || x >= width as i32 || y >= height as i32 {
                continue;
            }
            let (fx, fy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let u = (fx * cos + fy * sin) / stretch;
            let v = -fx * sin + fy * cos;
            let falloff = (-(u * u + v * v) / (2.0 * sigma * sigma)).exp();
            let pixel = &mut image[(y as u32 * width + x as u32) as usize];
            for c in 0..3 {
                pixel[c] += brightness * tint[c] * falloff;
            }
        }
    }
}

/// A busy texture: several octaves of smooth value noise (blotches from large to fine, in
/// shifting colours) plus per-pixel grain, like concrete, foliage or a noisy photo.
pub fn noise_texture(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut random = Lcg::new(seed);
    let mut layers = Vec::new();
    // Cell sizes in pixels, coarse to fine, with weights falling off as they get finer.
    for (cell, weight) in [(64.0, 0.45), (24.0, 0.3), (8.0, 0.17), (3.0, 0.08)] {
        let (columns, rows) = (
            (width as f32 / cell) as usize + 2,
            (height as f32 / cell) as usize + 2,
        );
        let lattice: Vec<[f32; 3]> = (0..columns * rows)
            .map(|_| [random.uniform(), random.uniform(), random.uniform()])
            .collect();
        layers.push((cell, weight, columns, lattice));
    }
    let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
    let mut grain = Lcg::new(seed ^ 0x9e37_79b9);
    RgbImage::from_fn(width, height, |x, y| {
        let mut value = [0f32; 3];
        for (cell, weight, columns, lattice) in &layers {
            let (gx, gy) = (x as f32 / cell, y as f32 / cell);
            let (ix, iy) = (gx as usize, gy as usize);
            let (tx, ty) = (smooth(gx - ix as f32), smooth(gy - iy as f32));
            let at = |i: usize, j: usize| lattice[j * columns + i];
            let (a, b, c, d) = (
                at(ix, iy),
                at(ix + 1, iy),
                at(ix, iy + 1),
                at(ix + 1, iy + 1),
            );
            for k in 0..3 {
                let top = a[k] + (b[k] - a[k]) * tx;
                let bottom = c[k] + (d[k] - c[k]) * tx;
                value[k] += weight * (top + (bottom - top) * ty);
            }
        }
        let noise = grain.range(-25.0, 25.0);
        Rgb(value.map(|v| (40.0 + v * 180.0 + noise).clamp(0.0, 255.0) as u8))
    })
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

/// A hand-built GIF whose logical screen is `screen` (width, height) and whose one frame
/// is `frame`, its data a single pixel of palette entry 0 (a 0×0 screen with a 1×1
/// frame is the image no decoder can turn into pixels).
pub fn gif_hand_built(screen: (u16, u16), frame: (u16, u16)) -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&screen.0.to_le_bytes());
    gif.extend_from_slice(&screen.1.to_le_bytes());
    // Global colour table of 2 entries (black, white), background 0, no aspect ratio.
    gif.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]);
    // Image descriptor at (0, 0), no local colour table.
    gif.extend_from_slice(&[0x2c, 0, 0, 0, 0]);
    gif.extend_from_slice(&frame.0.to_le_bytes());
    gif.extend_from_slice(&frame.1.to_le_bytes());
    gif.push(0);
    // LZW, minimum code size 2: clear (4), index 0, end (5), in 3-bit codes.
    gif.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]);
    gif.push(0x3b);
    gif
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
    last_row(a, b, (0..=b.len()).collect())[b.len()]
}

/// Edits needed to turn `needle` into the closest substring of `haystack` (free to start
/// and end anywhere in it): how far a line read from an image is from being part of the
/// text that was drawn.
pub fn substring_distance(haystack: &[char], needle: &[char]) -> usize {
    // Semi-global alignment: a first row of zeros lets it start anywhere in `haystack`,
    // the least of the last row lets it end anywhere.
    last_row(needle, haystack, vec![0; haystack.len() + 1])
        .into_iter()
        .min()
        .unwrap_or(0)
}

/// The last row of the edit-distance table of `a` (rows) against `b` (columns), given its
/// first row.
fn last_row(a: &[char], b: &[char], first: Vec<usize>) -> Vec<usize> {
    let mut previous = first;
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous
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

    #[test]
    fn substring_distance_is_free_outside_the_matched_part() {
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        let caption = chars("ONEDOESNOTSIMPLY");
        assert_eq!(substring_distance(&caption, &chars("DOES")), 0);
        assert_eq!(substring_distance(&caption, &chars("DOEZ")), 1);
        assert_eq!(substring_distance(&caption, &chars("C000")), 4);
        assert_eq!(substring_distance(&caption, &chars("NOTS1MPLY")), 1);
        assert_eq!(substring_distance(&caption, &[]), 0);
    }

    #[test]
    fn textures_are_deterministic_and_busy() {
        for image in [star_field(120, 80, 7), noise_texture(120, 80, 7)] {
            assert_eq!(image.dimensions(), (120, 80));
            let levels: std::collections::BTreeSet<u8> = image.pixels().map(|p| p.0[0]).collect();
            assert!(levels.len() > 30, "{} grey levels", levels.len());
        }
        assert_eq!(star_field(64, 64, 1), star_field(64, 64, 1));
        assert_ne!(noise_texture(64, 64, 1), noise_texture(64, 64, 2));
    }
}
