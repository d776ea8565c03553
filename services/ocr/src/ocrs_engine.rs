//! The `ocrs` engine: detection, layout analysis and recognition by the `ocrs` crate on
//! `rten`. Its models (`text-detection.rten`, `text-recognition.rten`) are published only
//! on the ocrs project's servers, so they are fetched separately where the internet is
//! reachable (`scripts/fetch-ocrs-models.sh`).

use crate::{OcrEngine, OcrError, OcrOutput, TextLine, assemble};
use image::RgbImage;
use ocrs::{ImageSource, OcrEngineParams, TextItem};
use std::path::{Path, PathBuf};

pub struct Ocrs {
    engine: ocrs::OcrEngine,
}

/// Where `scripts/fetch-ocrs-models.sh` puts the models, inside the models folder.
pub const DETECTION_MODEL: &str = "cache/ocrs/text-detection.rten";
pub const RECOGNITION_MODEL: &str = "cache/ocrs/text-recognition.rten";

impl Ocrs {
    pub fn model_paths(models_dir: &Path) -> [PathBuf; 2] {
        [
            models_dir.join(DETECTION_MODEL),
            models_dir.join(RECOGNITION_MODEL),
        ]
    }

    pub fn load(detection: &Path, recognition: &Path) -> Result<Self, OcrError> {
        let missing: Vec<PathBuf> = [detection, recognition]
            .into_iter()
            .filter(|p| !p.is_file())
            .map(Path::to_owned)
            .collect();
        if !missing.is_empty() {
            return Err(OcrError::ModelsMissing {
                paths: missing,
                hint: "scripts/fetch-ocrs-models.sh on a machine with internet access",
            });
        }
        let load = |path: &Path| {
            rten::Model::load_file(path).map_err(|e| OcrError::Model {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        };
        let engine = ocrs::OcrEngine::new(OcrEngineParams {
            detection_model: Some(load(detection)?),
            recognition_model: Some(load(recognition)?),
            ..Default::default()
        })
        .map_err(|e| OcrError::Engine {
            engine: "ocrs",
            reason: e.to_string(),
        })?;
        Ok(Self { engine })
    }
}

impl OcrEngine for Ocrs {
    fn name(&self) -> &'static str {
        "ocrs"
    }

    fn recognize(&self, image: &RgbImage) -> Result<OcrOutput, OcrError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(OcrError::EmptyImage);
        }
        let failed = |e: &dyn std::fmt::Display| OcrError::Engine {
            engine: "ocrs",
            reason: e.to_string(),
        };
        let source =
            ImageSource::from_bytes(image.as_raw(), image.dimensions()).map_err(|e| failed(&e))?;
        let input = self.engine.prepare_input(source).map_err(|e| failed(&e))?;
        let words = self.engine.detect_words(&input).map_err(|e| failed(&e))?;
        let rows = self.engine.find_text_lines(&input, &words);
        let recognised = self
            .engine
            .recognize_text(&input, &rows)
            .map_err(|e| failed(&e))?;
        let lines = recognised
            .into_iter()
            .flatten()
            .filter_map(|line| {
                let text = line.to_string().trim().to_string();
                if text.is_empty() {
                    return None;
                }
                let corners = line.rotated_rect().corners().map(|p| [p.x, p.y]);
                Some(TextLine {
                    text,
                    // ocrs does not report recognition confidence.
                    confidence: None,
                    quad: crate::geometry::order_corners(corners),
                })
            })
            .collect();
        // ocrs already orders lines by its own layout analysis; a tolerance of 0 keeps
        // every line on its own row.
        Ok(assemble(lines, 0.0))
    }
}
