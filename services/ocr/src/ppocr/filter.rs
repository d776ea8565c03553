//! Which read lines are text: dropping the lines recognition could not read, and the
//! specks a busy background produces.
//!
//! Specks are what a textured background (a studio backdrop, a star field, foliage) makes
//! the detector find between captions, and the recogniser then reads as "C000", "0000" or
//! "2000" with confidences of 0.73–0.87, as high as real text, so the confidence alone
//! cannot drop them. What gives them away is detection, measured on the rendered-meme set
//! (docs/ocr.md): the detector is unsure of them (box scores 0.53–0.60, where every
//! caption line scored 0.79 or more) and they are small beside the image's main text (15
//! to 30 px high next to 57–74 px captions). Either trait alone also belongs to real text
//! — small print is detected with confidence, and a faint caption is still large — so a
//! line is a speck only when it has both.

use super::Candidate;
use crate::geometry::distance;

/// When a line is a speck: both traits at once.
#[derive(Clone, Debug)]
pub struct SpeckFilter {
    /// A line detected with a box score under this…
    pub box_score: f32,
    /// …and less than this fraction as high as the image's tallest line is a speck.
    pub height_ratio: f32,
}

impl Default for SpeckFilter {
    fn default() -> Self {
        Self {
            box_score: 0.7,
            height_ratio: 0.5,
        }
    }
}

/// The height of a line's box: its shorter side (a line is wider than high; a single
/// character about square).
fn height(candidate: &Candidate) -> f32 {
    let q = &candidate.quad;
    distance(q[0], q[1]).min(distance(q[0], q[3]))
}

/// The candidates that are text, in their order: read (not empty, recognised with at
/// least `min_confidence`) and not specks.
pub fn keep(
    candidates: Vec<Candidate>,
    min_confidence: f32,
    specks: &SpeckFilter,
) -> Vec<Candidate> {
    let read: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| !c.text.is_empty() && c.confidence >= min_confidence)
        .collect();
    let tallest = read.iter().map(height).fold(0.0, f32::max);
    read.into_iter()
        .filter(|c| {
            let speck = c.box_score < specks.box_score && height(c) < specks.height_ratio * tallest;
            if speck {
                tracing::debug!(
                    text = %c.text,
                    confidence = c.confidence,
                    box_score = c.box_score,
                    height = height(c),
                    tallest,
                    "ocr: dropped a speck"
                );
            }
            !speck
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, confidence: f32, box_score: f32, y: f32, w: f32, h: f32) -> Candidate {
        Candidate {
            text: text.into(),
            confidence,
            box_score,
            quad: [[10.0, y], [10.0 + w, y], [10.0 + w, y + h], [10.0, y + h]],
        }
    }

    #[test]
    fn specks_unread_and_empty_lines_are_dropped_and_text_is_kept() {
        let candidates = vec![
            line("I HAVE NO IDEA", 0.98, 0.86, 15.0, 460.0, 63.0),
            // What the cameraman's backdrop gave at 736 px: weak and small.
            line("C000", 0.73, 0.59, 289.0, 31.0, 15.0),
            line("WHAT I AM", 0.98, 0.90, 364.0, 317.0, 58.0),
            // Small print detected with confidence: text.
            line("imgflip.com", 0.95, 0.85, 480.0, 90.0, 14.0),
            // A faint but large line: text.
            line("DOING", 0.95, 0.62, 433.0, 200.0, 57.0),
            line("", 0.0, 0.9, 200.0, 50.0, 50.0),
            line("UNSURE", 0.42, 0.9, 250.0, 150.0, 50.0),
        ];
        let kept: Vec<String> = keep(candidates, 0.5, &SpeckFilter::default())
            .into_iter()
            .map(|c| c.text)
            .collect();
        assert_eq!(
            kept,
            ["I HAVE NO IDEA", "WHAT I AM", "imgflip.com", "DOING"]
        );
        // The tallest line sets the scale: alone, a small weak line is the main text.
        let alone = keep(
            vec![line("2000", 0.86, 0.6, 290.0, 32.0, 15.0)],
            0.5,
            &SpeckFilter::default(),
        );
        assert_eq!(alone.len(), 1);
    }
}
