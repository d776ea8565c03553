//! PP-OCR text recognition: straighten each box into a 48-pixel-high line image, run the
//! CRNN/SVTR model, and decode its per-column class probabilities with CTC.

use crate::geometry::{Quad, apply, distance, homography};
use image::imageops::FilterType;
use image::{Rgb, RgbImage};

/// Line images are this many pixels high (the models' fixed input height).
pub const LINE_HEIGHT: usize = 48;
/// Narrowest batch width, as a width/height ratio (PaddleOCR's 320 / 48).
pub const MIN_RATIO: f32 = 320.0 / 48.0;

/// Class index → text. Index 0 is CTC's blank; the last class is a space.
pub struct Charset {
    classes: Vec<String>,
}

impl Charset {
    /// From the newline-separated list PaddleOCR stores in the model's `character` metadata.
    pub fn from_metadata(list: &str) -> Self {
        let mut classes = vec![String::new()];
        classes.extend(list.lines().map(str::to_owned));
        classes.push(" ".into());
        Self { classes }
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }
}

/// The box's pixels, straightened: a perspective warp of `quad` onto an upright rectangle
/// (bilinear, edges replicated). Tall boxes are turned a quarter counter-clockwise, as
/// PaddleOCR does, since they are most likely vertical text.
pub fn crop(image: &RgbImage, quad: &Quad) -> Option<RgbImage> {
    let width = distance(quad[0], quad[1]).max(distance(quad[3], quad[2])) as u32;
    let height = distance(quad[0], quad[3]).max(distance(quad[1], quad[2])) as u32;
    if width == 0 || height == 0 {
        return None;
    }
    let target = [
        [0.0, 0.0],
        [width as f32, 0.0],
        [width as f32, height as f32],
        [0.0, height as f32],
    ];
    // Map output pixels back to the source.
    let h = homography(&target, quad)?;
    let (max_x, max_y) = (image.width() as f64 - 1.0, image.height() as f64 - 1.0);
    let crop = RgbImage::from_fn(width, height, |x, y| {
        let (sx, sy) = apply(&h, x as f64, y as f64);
        bilinear(image, sx.clamp(0.0, max_x), sy.clamp(0.0, max_y))
    });
    if height as f32 / width as f32 >= 1.5 {
        Some(image::imageops::rotate270(&crop))
    } else {
        Some(crop)
    }
}

fn bilinear(image: &RgbImage, x: f64, y: f64) -> Rgb<u8> {
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = (
        (x0 + 1).min(image.width() - 1),
        (y0 + 1).min(image.height() - 1),
    );
    let (fx, fy) = (x - x0 as f64, y - y0 as f64);
    let p = |x, y| image.get_pixel(x, y).0;
    let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
    let mut out = [0u8; 3];
    for i in 0..3 {
        let top = a[i] as f64 * (1.0 - fx) + b[i] as f64 * fx;
        let bottom = c[i] as f64 * (1.0 - fx) + d[i] as f64 * fx;
        out[i] = (top * (1.0 - fy) + bottom * fy).round() as u8;
    }
    Rgb(out)
}

pub fn ratio(line: &RgbImage) -> f32 {
    line.width() as f32 / line.height() as f32
}

/// Share of a batch's width a line must fill to join it: beyond the model's 320-column
/// minimum (padding every batch has anyway), at most a tenth of what the
/// recogniser reads in a batch is padding.
pub const MIN_BATCH_FILL: f32 = 0.9;

/// Lines grouped into recognition batches, as indices into `ratios` (width / height).
///
/// The recogniser's cost grows with the columns it reads, padding included (about 70 µs
/// per 48-pixel column for PP-OCRv6 small on 2 cores), and every line of a batch is
/// padded to the batch's widest. So lines are taken widest first and a line joins the
/// current batch only if it fills at least [`MIN_BATCH_FILL`] of its width, up to
/// `max_lines` per batch. Lines narrower than the model's 320-column minimum count as
/// that minimum, since they are padded to it anyway: short lines still share a batch.
pub fn batches(ratios: &[f32], max_lines: usize) -> Vec<Vec<usize>> {
    let padded = |i: usize| ratios[i].max(MIN_RATIO);
    let mut order: Vec<usize> = (0..ratios.len()).collect();
    order.sort_by(|&a, &b| padded(b).total_cmp(&padded(a)));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match batches.last_mut() {
            Some(batch)
                if batch.len() < max_lines.max(1)
                    && padded(i) >= MIN_BATCH_FILL * padded(batch[0]) =>
            {
                batch.push(i)
            }
            _ => batches.push(vec![i]),
        }
    }
    batches
}

/// A batch tensor (N, 3, 48, W) for lines of similar ratios: each line scaled to height
/// 48, BGR, normalised to [-1, 1], left-aligned and zero-padded to the batch width.
pub fn batch(lines: &[&RgbImage]) -> (Vec<f32>, usize) {
    let max_ratio = lines.iter().map(|l| ratio(l)).fold(MIN_RATIO, f32::max);
    let width = (LINE_HEIGHT as f32 * max_ratio) as usize;
    let plane = LINE_HEIGHT * width;
    let mut data = vec![0f32; lines.len() * 3 * plane];
    for (n, line) in lines.iter().enumerate() {
        let scaled_width = ((LINE_HEIGHT as f32 * ratio(line)).ceil() as usize).clamp(1, width);
        let scaled = image::imageops::resize(
            *line,
            scaled_width as u32,
            LINE_HEIGHT as u32,
            FilterType::Triangle,
        );
        let base = n * 3 * plane;
        for (x, y, pixel) in scaled.enumerate_pixels() {
            let i = y as usize * width + x as usize;
            let [r, g, b] = pixel.0;
            data[base + i] = b as f32 / 127.5 - 1.0;
            data[base + plane + i] = g as f32 / 127.5 - 1.0;
            data[base + 2 * plane + i] = r as f32 / 127.5 - 1.0;
        }
    }
    (data, width)
}

/// Greedy CTC decoding of one line's (steps × classes) probabilities: the best class per
/// step, repeats collapsed, blanks dropped. Confidence is the mean probability of the
/// characters kept (0 for an empty line).
pub fn decode(probabilities: &[f32], classes: usize, charset: &Charset) -> (String, f32) {
    let mut text = String::new();
    let (mut sum, mut kept) = (0f32, 0usize);
    let mut previous = 0usize;
    for step in probabilities.chunks_exact(classes) {
        let (best, p) =
            step.iter().enumerate().fold(
                (0, f32::MIN),
                |(bi, bp), (i, &p)| if p > bp { (i, p) } else { (bi, bp) },
            );
        if best != 0
            && best != previous
            && let Some(class) = charset.classes.get(best)
        {
            text.push_str(class);
            sum += p;
            kept += 1;
        }
        previous = best;
    }
    (text, if kept == 0 { 0.0 } else { sum / kept as f32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_padding_beyond_the_minimum_under_a_tenth_and_group_short_lines() {
        let columns = |ratio: f32| ratio * LINE_HEIGHT as f32;
        let ratio = |columns: f32| columns / LINE_HEIGHT as f32;
        // Two caption lines of 283 and 428 columns: alone, 320 + 428 columns are read
        // instead of 2 × 428.
        assert_eq!(
            batches(&[ratio(283.0), ratio(428.0)], 6),
            vec![vec![1], vec![0]]
        );
        // Lines within a tenth of each other share a batch; under 320 they all count as 320.
        let ratios = [
            ratio(371.0),
            ratio(195.0),
            ratio(269.0),
            ratio(301.0),
            ratio(360.0),
        ];
        assert_eq!(batches(&ratios, 6), vec![vec![0, 4], vec![1, 2, 3]]);
        // At most `max_lines` per batch.
        let same = [ratio(100.0); 5];
        assert_eq!(batches(&same, 2), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert!(batches(&[], 6).is_empty());
        // Beyond the 320-column minimum, every batch's padding stays under a tenth.
        for batch in batches(&ratios, 6) {
            let width = columns(ratios[batch[0]].max(MIN_RATIO));
            for &i in &batch {
                assert!(columns(ratios[i].max(MIN_RATIO)) >= MIN_BATCH_FILL * width);
            }
        }
    }

    #[test]
    fn ctc_collapses_repeats_and_drops_blanks() {
        let charset = Charset::from_metadata("a\nb");
        assert_eq!(charset.len(), 4); // blank, a, b, space
        let classes = 4;
        let step = |best: usize, p: f32| {
            let mut v = vec![(1.0 - p) / 3.0; classes];
            v[best] = p;
            v
        };
        // a a blank a b space b → "aab b"
        let probs: Vec<f32> = [
            (1, 0.9),
            (1, 0.8),
            (0, 0.9),
            (1, 0.7),
            (2, 0.6),
            (3, 0.9),
            (2, 1.0),
        ]
        .iter()
        .flat_map(|&(b, p)| step(b, p))
        .collect();
        let (text, confidence) = decode(&probs, classes, &charset);
        assert_eq!(text, "aab b");
        assert!((confidence - (0.9 + 0.7 + 0.6 + 0.9 + 1.0) / 5.0).abs() < 1e-5);
        assert_eq!(
            decode(&step(0, 0.9), classes, &charset),
            (String::new(), 0.0)
        );
    }

    #[test]
    fn crop_straightens_a_box_and_batches_pad_to_the_widest_line() {
        let mut image = RgbImage::from_pixel(100, 60, Rgb([255, 255, 255]));
        for x in 20..80 {
            for y in 20..40 {
                image.put_pixel(x, y, Rgb([0, 0, 0]));
            }
        }
        let line = crop(
            &image,
            &[[20.0, 20.0], [80.0, 20.0], [80.0, 40.0], [20.0, 40.0]],
        )
        .unwrap();
        assert_eq!(line.dimensions(), (60, 20));
        assert!(
            line.pixels().all(|p| p.0[0] < 10),
            "the crop covers only the black box"
        );

        let long = RgbImage::new(480, 48);
        let (data, width) = batch(&[&line, &long]);
        assert_eq!(width, 480);
        assert_eq!(data.len(), 2 * 3 * 48 * 480);
        // The short line (ratio 3) fills 144 columns; the rest of its row is padding.
        assert_eq!(data[143], -1.0);
        assert_eq!(data[200], 0.0);
    }
}
