//! PP-OCR text detection: DB (differentiable binarization) probability map → text boxes.
//!
//! Follows PaddleOCR's reference post-processing (as shipped in rapidocr 3.10), so the
//! same model gives the same boxes here as in Python: threshold the probability map,
//! dilate it, take each region's minimum-area rectangle, score it by the mean
//! probability inside, grow ("unclip") it by area × ratio / perimeter, and scale it back
//! to the input image.

use crate::geometry::{Quad, distance, inside_convex, min_area_rect, order_corners};
use crate::regions::region_boundaries;
use image::RgbImage;
use image::imageops::FilterType;

#[derive(Clone, Debug)]
pub struct DetectionConfig {
    /// Images whose shorter side is below this are scaled up to it (PaddleOCR 3's
    /// `limit_side_len` 64, type `min`). Anything larger is detected at its own
    /// resolution: text a person can read is large enough for the detector as it is, and
    /// scaling up only multiplies the detector's work (it grows with the pixel count) and
    /// softens edges. rapidocr's 736 made a 500×333 meme a 1120×736 input, 5× the pixels.
    pub min_side: u32,
    /// The longer side is brought down to at most this, bounding time and memory on large
    /// photos; it wins over `min_side` for extreme aspect ratios.
    pub max_side: u32,
    /// Probability above which a pixel is text.
    pub pixel_threshold: f32,
    /// Mean probability a box needs to be kept.
    pub box_threshold: f32,
    pub unclip_ratio: f32,
    pub max_candidates: usize,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            min_side: 64,
            max_side: 2000,
            pixel_threshold: 0.3,
            box_threshold: 0.5,
            unclip_ratio: 1.6,
            max_candidates: 1000,
        }
    }
}

/// Smallest box side kept, in probability-map pixels.
const MIN_SIZE: f32 = 3.0;

/// The network's input: BGR (PaddleOCR models are trained on OpenCV's channel order),
/// scaled to multiples of 32, normalised to [-1, 1], CHW.
pub struct DetectionInput {
    pub data: Vec<f32>,
    pub width: usize,
    pub height: usize,
}

/// The detector's input size for a `width`×`height` image: the image's own size unless
/// it is tiny or huge (see [`DetectionConfig`]), rounded to multiples of 32.
pub fn input_size(width: u32, height: u32, config: &DetectionConfig) -> (usize, usize) {
    let (w, h) = (width as f64, height as f64);
    let mut ratio = 1.0;
    if w.min(h) < config.min_side as f64 {
        ratio = config.min_side as f64 / w.min(h);
    }
    if w.max(h) * ratio > config.max_side as f64 {
        ratio = config.max_side as f64 / w.max(h);
    }
    let round32 = |v: f64| (((v / 32.0).round() as usize) * 32).max(32);
    (round32((w * ratio).floor()), round32((h * ratio).floor()))
}

pub fn preprocess(image: &RgbImage, config: &DetectionConfig) -> DetectionInput {
    let (width, height) = input_size(image.width(), image.height(), config);
    let resized;
    let scaled = if image.dimensions() == (width as u32, height as u32) {
        image
    } else {
        resized = image::imageops::resize(image, width as u32, height as u32, FilterType::Triangle);
        &resized
    };
    let plane = width * height;
    let mut data = vec![0f32; 3 * plane];
    for (i, pixel) in scaled.pixels().enumerate() {
        let [r, g, b] = pixel.0;
        data[i] = b as f32 / 127.5 - 1.0;
        data[plane + i] = g as f32 / 127.5 - 1.0;
        data[2 * plane + i] = r as f32 / 127.5 - 1.0;
    }
    DetectionInput {
        data,
        width,
        height,
    }
}

/// Text boxes (in `source` pixel coordinates) with their scores, from the probability map.
pub fn boxes(
    probabilities: &[f32],
    map_width: usize,
    map_height: usize,
    source: (u32, u32),
    config: &DetectionConfig,
) -> Vec<(Quad, f32)> {
    assert_eq!(
        probabilities.len(),
        map_width * map_height,
        "probability map size"
    );
    // Threshold, then dilate with a 2×2 kernel (OpenCV anchors it at its centre, so a
    // pixel is set when it or its left, upper or upper-left neighbour is text).
    let text = |x: usize, y: usize| probabilities[y * map_width + x] > config.pixel_threshold;
    let mask: Vec<bool> = (0..map_width * map_height)
        .map(|i| {
            let (x, y) = (i % map_width, i / map_width);
            text(x, y)
                || (x > 0 && text(x - 1, y))
                || (y > 0 && text(x, y - 1))
                || (x > 0 && y > 0 && text(x - 1, y - 1))
        })
        .collect();
    let (source_width, source_height) = (source.0 as f32, source.1 as f32);
    let scale_x = source_width / map_width as f32;
    let scale_y = source_height / map_height as f32;
    let mut found = Vec::new();
    for points in region_boundaries(&mask, map_width, map_height, config.max_candidates) {
        let Some(rect) = min_area_rect(&points) else {
            continue;
        };
        if rect.shorter_side() < MIN_SIZE {
            continue;
        }
        let score = mean_inside(
            probabilities,
            map_width,
            map_height,
            &order_corners(rect.corners()),
        );
        if score < config.box_threshold {
            continue;
        }
        let perimeter = 2.0 * (rect.width + rect.height);
        let grown = rect.grown(rect.width * rect.height * config.unclip_ratio / perimeter);
        if grown.shorter_side() < MIN_SIZE + 2.0 {
            continue;
        }
        let corners = grown.corners().map(|[x, y]| {
            [
                (x * scale_x).round().clamp(0.0, source_width - 1.0).floor(),
                (y * scale_y)
                    .round()
                    .clamp(0.0, source_height - 1.0)
                    .floor(),
            ]
        });
        let quad = order_corners(corners);
        if distance(quad[0], quad[1]) <= 3.0 || distance(quad[0], quad[3]) <= 3.0 {
            continue;
        }
        found.push((quad, score));
    }
    found
}

/// Mean probability over the map pixels inside `quad` (PaddleOCR's "fast" box score).
fn mean_inside(probabilities: &[f32], width: usize, height: usize, quad: &Quad) -> f32 {
    let clamp = |v: f32, max: usize| (v.max(0.0) as usize).min(max - 1);
    let xs = quad.iter().map(|p| p[0]);
    let ys = quad.iter().map(|p| p[1]);
    let (x0, x1) = (
        clamp(xs.clone().fold(f32::MAX, f32::min).floor(), width),
        clamp(xs.fold(f32::MIN, f32::max).ceil(), width),
    );
    let (y0, y1) = (
        clamp(ys.clone().fold(f32::MAX, f32::min).floor(), height),
        clamp(ys.fold(f32::MIN, f32::max).ceil(), height),
    );
    let (mut sum, mut count) = (0f64, 0usize);
    for y in y0..=y1 {
        for x in x0..=x1 {
            if inside_convex(quad, [x as f32, y as f32]) {
                sum += probabilities[y * width + x] as f64;
                count += 1;
            }
        }
    }
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_keep_the_image_size_rounded_to_multiples_of_32_and_only_tiny_images_grow() {
        let config = DetectionConfig::default();
        let input = preprocess(&RgbImage::new(500, 300), &config);
        // 500 / 32 = 15.6 → 16 blocks, 300 / 32 = 9.4 → 9: no upscaling to 736.
        assert_eq!((input.width, input.height), (512, 288));
        assert_eq!(input.data.len(), 3 * input.width * input.height);
        // A shorter side under 64 is brought up to 64: 40 → 64, 100 → 160.
        assert_eq!(input_size(100, 40, &config), (160, 64));
        // Large images are brought within the maximum side…
        assert_eq!(input_size(8000, 6000, &config), (2016, 1504));
        // …which wins over the minimum for extreme shapes: 6000×30 would be 12800×64.
        assert_eq!(input_size(6000, 30, &config), (2016, 32));
    }

    #[test]
    fn a_bright_band_in_the_map_becomes_one_box_scaled_to_the_source() {
        let (w, h) = (64usize, 32usize);
        let mut map = vec![0f32; w * h];
        for y in 10..16 {
            for x in 8..56 {
                map[y * w + x] = 0.9;
            }
        }
        let found = boxes(&map, w, h, (128, 64), &DetectionConfig::default());
        assert_eq!(found.len(), 1, "{found:?}");
        let (quad, score) = found[0];
        // Dilation adds a row and a column of zeros to the region: 0.9 × 48·6 / 49·7.
        assert!((score - 0.756).abs() < 0.01, "{score}");
        // The band is 49×7 map pixels after dilation, at scale 2, grown by unclip.
        assert!(quad[0][0] < 16.0 && quad[1][0] > 110.0, "{quad:?}");
        assert!(quad[0][1] < 20.0 && quad[3][1] > 32.0, "{quad:?}");
    }

    #[test]
    fn faint_or_tiny_regions_are_dropped() {
        let (w, h) = (40usize, 40usize);
        let mut map = vec![0f32; w * h];
        for y in 5..15 {
            for x in 5..30 {
                map[y * w + x] = 0.35; // above the pixel threshold, below the box score
            }
        }
        map[30 * w + 30] = 0.99; // one pixel
        assert!(boxes(&map, w, h, (40, 40), &DetectionConfig::default()).is_empty());
    }
}
