//! `ocr`: the text in an image, as lines with boxes and confidences.
//!
//! Engine ([`OcrSettings`]): `ppocr` (default; PaddleOCR PP-OCRv6 small models from
//! `scripts/fetch-models.sh`) or `ocrs` (the `ocrs` crate; models from
//! `scripts/fetch-ocrs-models.sh`).

use crate::settings::{image_loader, onnx_runtime};
use plugworker_image_input::{ImageLoader, ImageSource};
use plugworker_kit::settings::value;
use plugworker_kit::{Algorithm, LoadContext, LoadError, RunContext, RunError};
use plugworker_ocr::{OcrEngine, OcrError, PpOcr, PpOcrConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `ocr`'s settings.
#[derive(Clone, Debug, clap::Args)]
pub struct OcrSettings {
    /// OCR engine: `ppocr` or `ocrs` (when built with the `ocrs` feature).
    #[arg(long = "ocr-engine", env = "PLUGWORKER_OCR_ENGINE", default_value = "ppocr", value_parser = value::<String>())]
    pub engine: String,
    /// Lines read with less confidence are dropped (ppocr) [default: 0.5].
    #[arg(long = "ocr-min-confidence", env = "PLUGWORKER_OCR_MIN_CONFIDENCE", value_parser = value::<f32>())]
    pub min_confidence: Option<f32>,
}

plugworker_kit::register_settings!(OcrSettings, "ocr");

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Input {
    #[serde(flatten)]
    pub image: ImageSource,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    /// All the text, in reading order: a space between boxes on one row, a newline between rows.
    pub text: String,
    pub lines: Vec<Line>,
    /// The engine that read it (`ppocr` or `ocrs`).
    pub engine: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Line {
    pub text: String,
    /// 0 to 1; absent when the engine gives none.
    pub confidence: Option<f32>,
    /// Corners in image pixels, [x, y]: top-left, top-right, bottom-right, bottom-left.
    #[serde(rename = "box")]
    pub corners: [[f32; 2]; 4],
}

pub struct Ocr {
    engine: Arc<dyn OcrEngine>,
    images: ImageLoader,
}

fn load_engine(context: &LoadContext) -> Result<Arc<dyn OcrEngine>, LoadError> {
    let settings = context.settings::<OcrSettings>()?;
    let engine = settings.engine.trim();
    let failed = |e: OcrError| match paths_of(&e) {
        Some(path) => LoadError::file(path, e),
        None => LoadError::other(e),
    };
    match engine {
        "ppocr" => {
            let mut config = PpOcrConfig::in_models_dir(&context.models_dir);
            if let Some(min_confidence) = settings.min_confidence {
                config.min_confidence = min_confidence;
            }
            let runtime = onnx_runtime(context)?;
            Ok(Arc::new(PpOcr::load(runtime, config).map_err(failed)?))
        }
        #[cfg(feature = "ocrs")]
        "ocrs" => {
            let [detection, recognition] = plugworker_ocr::Ocrs::model_paths(&context.models_dir);
            Ok(Arc::new(
                plugworker_ocr::Ocrs::load(&detection, &recognition).map_err(failed)?,
            ))
        }
        other => Err(LoadError::other(format!(
            "PLUGWORKER_OCR_ENGINE={other:?}: expected ppocr{}",
            if cfg!(feature = "ocrs") {
                " or ocrs"
            } else {
                " (this build has no ocrs engine)"
            }
        ))),
    }
}

/// The first file an error concerns, so the load error names it.
fn paths_of(error: &OcrError) -> Option<std::path::PathBuf> {
    match error {
        OcrError::ModelsMissing { paths, .. } => paths.first().cloned(),
        OcrError::Model { path, .. } => Some(path.clone()),
        _ => None,
    }
}

impl Algorithm for Ocr {
    type Input = Input;
    type Output = Output;
    const NAME: &'static str = "ocr";
    const VERSION: &'static str = "1.0.0";
    const DESCRIPTION: &'static str = "Reads the text in an image: full text plus lines with boxes and confidences (PP-OCRv6, or ocrs).";

    fn load(context: &LoadContext) -> Result<Self, LoadError> {
        let engine = load_engine(context)?;
        tracing::info!(engine = engine.name(), "ocr engine loaded");
        Ok(Self {
            engine,
            images: image_loader()?,
        })
    }

    async fn run(&self, input: Input, context: &RunContext) -> Result<Output, RunError> {
        let image = self.images.load(&input.image, context).await?;
        let (width, height) = image.dimensions();
        let engine = Arc::clone(&self.engine);
        let output = context
            .blocking(move || {
                engine.recognize(&image).map_err(|e| match e {
                    OcrError::EmptyImage => RunError::Unprocessable(e.to_string()),
                    other => RunError::Internal(format!("ocr failed: {other}")),
                })
            })
            .await?;
        Ok(Output {
            text: output.text,
            lines: output
                .lines
                .into_iter()
                .map(|line| Line {
                    text: line.text,
                    confidence: line.confidence,
                    corners: line.quad,
                })
                .collect(),
            engine: self.engine.name().to_string(),
            width,
            height,
        })
    }
}

plugworker_kit::register_algorithm!(Ocr);
