//! Reading the text in an image, behind one [`OcrEngine`] trait.
//!
//! Two engines (docs/architecture.md §11):
//! - [`PpOcr`]: PaddleOCR PP-OCRv6 small detection + recognition models on ONNX Runtime,
//!   with DB post-processing and CTC decoding done here. Its models come from PyPI, so it
//!   runs, and is tested, everywhere.
//! - `Ocrs` (feature `ocrs`): the `ocrs` crate on `rten`. Its models are only published on
//!   the ocrs project's own servers (`scripts/fetch-ocrs-models.sh`).
//!
//! Both return [`OcrOutput`]: lines in reading order, each with its text, box and
//! confidence, and the full text.

mod geometry;
#[cfg(feature = "ocrs")]
mod ocrs_engine;
mod ppocr;
mod regions;

pub use geometry::Quad;
#[cfg(feature = "ocrs")]
pub use ocrs_engine::Ocrs;
pub use ppocr::{Candidate, DetectionConfig, PpOcr, PpOcrConfig, SpeckFilter};

use image::RgbImage;
use serde::Serialize;

/// One line of text found in the image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TextLine {
    pub text: String,
    /// Recognition confidence, 0 to 1 (`None` when the engine does not estimate one).
    pub confidence: Option<f32>,
    /// Corners in image pixels: top-left, top-right, bottom-right, bottom-left.
    #[serde(rename = "box")]
    pub quad: Quad,
}

/// Everything an engine read, in reading order.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OcrOutput {
    /// Lines joined: a space between boxes on the same row, a newline between rows.
    pub text: String,
    pub lines: Vec<TextLine>,
}

#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    #[error(transparent)]
    Onnx(#[from] plugworker_onnx::OnnxError),
    #[error("model {path}: {reason}")]
    Model {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("model files missing: {} (run {hint})", .paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ModelsMissing {
        paths: Vec<std::path::PathBuf>,
        hint: &'static str,
    },
    #[error("image is empty")]
    EmptyImage,
    #[error("{engine} failed: {reason}")]
    Engine {
        engine: &'static str,
        reason: String,
    },
}

/// A text recognition engine.
pub trait OcrEngine: Send + Sync {
    /// Short name reported with results (`ppocr`, `ocrs`).
    fn name(&self) -> &'static str;

    /// Reads the text in `image`. CPU-bound: call it off the async threads.
    fn recognize(&self, image: &RgbImage) -> Result<OcrOutput, OcrError>;
}

/// Orders lines top to bottom, then left to right on the same row, and joins them.
///
/// Two boxes are on the same row when their top-left corners are within `row_tolerance`
/// pixels vertically (PaddleOCR's rule, which keeps a caption split into two boxes on one
/// line of output).
pub fn assemble(mut lines: Vec<TextLine>, row_tolerance: f32) -> OcrOutput {
    lines.sort_by(|a, b| a.quad[0][1].total_cmp(&b.quad[0][1]));
    let mut rows: Vec<usize> = Vec::with_capacity(lines.len());
    let mut row = 0;
    for i in 0..lines.len() {
        if i > 0 && lines[i].quad[0][1] - lines[i - 1].quad[0][1] >= row_tolerance {
            row += 1;
        }
        rows.push(row);
    }
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by(|&a, &b| {
        rows[a]
            .cmp(&rows[b])
            .then(lines[a].quad[0][0].total_cmp(&lines[b].quad[0][0]))
    });
    let mut text = String::new();
    let mut sorted = Vec::with_capacity(lines.len());
    let mut previous_row = None;
    for i in order {
        match previous_row {
            Some(r) if r == rows[i] => text.push(' '),
            Some(_) => text.push('\n'),
            None => {}
        }
        previous_row = Some(rows[i]);
        text.push_str(&lines[i].text);
        sorted.push(lines[i].clone());
    }
    OcrOutput {
        text,
        lines: sorted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, x: f32, y: f32) -> TextLine {
        TextLine {
            text: text.into(),
            confidence: Some(0.9),
            quad: [[x, y], [x + 50.0, y], [x + 50.0, y + 20.0], [x, y + 20.0]],
        }
    }

    #[test]
    fn lines_are_read_by_row_then_left_to_right() {
        let output = assemble(
            vec![
                line("BOTTOM", 10.0, 300.0),
                line("WORLD", 80.0, 12.0),
                line("HELLO", 10.0, 10.0),
            ],
            10.0,
        );
        assert_eq!(output.text, "HELLO WORLD\nBOTTOM");
        assert_eq!(
            output
                .lines
                .iter()
                .map(|l| l.text.as_str())
                .collect::<Vec<_>>(),
            ["HELLO", "WORLD", "BOTTOM"]
        );
        assert_eq!(assemble(Vec::new(), 10.0), OcrOutput::default());
    }
}
