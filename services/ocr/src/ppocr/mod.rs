//! The PP-OCRv6 engine: detection, then recognition of each box, on ONNX Runtime.

mod detection;
mod filter;
mod recognition;

pub use detection::DetectionConfig;
pub use filter::SpeckFilter;

use crate::{OcrEngine, OcrError, OcrOutput, TextLine, assemble};
use image::RgbImage;
use plugworker_onnx::ort::value::Tensor;
use plugworker_onnx::{OnnxError, OnnxModel, Runtime};
use recognition::Charset;
use std::path::{Path, PathBuf};

/// Files and thresholds.
#[derive(Clone, Debug)]
pub struct PpOcrConfig {
    pub detection_model: PathBuf,
    pub recognition_model: PathBuf,
    pub detection: DetectionConfig,
    /// Lines recognised with less confidence are dropped (PaddleOCR's `text_score`).
    pub min_confidence: f32,
    /// Which weakly detected small lines are specks of a textured background.
    pub specks: SpeckFilter,
    /// Lines recognised per model call, at most (see `recognition::batches`).
    pub batch_size: usize,
}

impl PpOcrConfig {
    /// The PP-OCRv6 small models where `scripts/fetch-models.sh` puts them.
    pub fn in_models_dir(models_dir: &Path) -> Self {
        Self {
            detection_model: models_dir.join("cache/ppocr/PP-OCRv6_det_small.onnx"),
            recognition_model: models_dir.join("cache/ppocr/PP-OCRv6_rec_small.onnx"),
            detection: DetectionConfig::default(),
            min_confidence: 0.5,
            specks: SpeckFilter::default(),
            batch_size: 6,
        }
    }
}

pub struct PpOcr {
    detector: OnnxModel,
    recognizer: OnnxModel,
    charset: Charset,
    config: PpOcrConfig,
}

/// Boxes whose top-left corners are this close vertically are on the same row (pixels).
const ROW_TOLERANCE: f32 = 10.0;

impl PpOcr {
    pub fn load(runtime: &Runtime, config: PpOcrConfig) -> Result<Self, OcrError> {
        let missing: Vec<PathBuf> = [&config.detection_model, &config.recognition_model]
            .into_iter()
            .filter(|p| !p.is_file())
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(OcrError::ModelsMissing {
                paths: missing,
                hint: "scripts/fetch-models.sh",
            });
        }
        let detector = runtime.open(&config.detection_model)?;
        let recognizer = runtime.open(&config.recognition_model)?;
        let charset = Charset::from_metadata(&recognizer.custom_metadata("character")?);
        let engine = Self {
            detector,
            recognizer,
            charset,
            config,
        };
        // One line through the recogniser checks the charset against the model's classes
        // now rather than on the first job, and warms the runtime up.
        let classes = engine.recognize_lines(&[RgbImage::new(96, 48)])?.1;
        if classes != engine.charset.len() {
            return Err(OcrError::Model {
                path: engine.config.recognition_model.clone(),
                reason: format!(
                    "outputs {classes} classes but its character list gives {}",
                    engine.charset.len()
                ),
            });
        }
        Ok(engine)
    }

    fn detect(&self, image: &RgbImage) -> Result<Vec<(crate::Quad, f32)>, OcrError> {
        let input = tracing::info_span!("image.preprocess")
            .in_scope(|| detection::preprocess(image, &self.config.detection));
        let tensor = Tensor::from_array((
            [1usize, 3, input.height, input.width],
            input.data.into_boxed_slice(),
        ))
        .map_err(OnnxError::from)?;
        let inference = tracing::info_span!(
            "model.inference",
            plugworker.model = "ppocr_det",
            plugworker.width = input.width,
            plugworker.height = input.height
        )
        .entered();
        let mut session = self.detector.session();
        let outputs = session.run([tensor.into()]).map_err(OnnxError::from)?;
        drop(inference);
        let (shape, map) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(OnnxError::from)?;
        let (map_height, map_width) = match shape[..] {
            [1, 1, h, w] => (h as usize, w as usize),
            _ => {
                return Err(OcrError::Model {
                    path: self.config.detection_model.clone(),
                    reason: format!("unexpected output shape {shape:?}"),
                });
            }
        };
        Ok(detection::boxes(
            map,
            map_width,
            map_height,
            image.dimensions(),
            &self.config.detection,
        ))
    }

    /// Texts and confidences of line images, and the model's class count.
    fn recognize_lines(&self, lines: &[RgbImage]) -> Result<(Vec<(String, f32)>, usize), OcrError> {
        let ratios: Vec<f32> = lines.iter().map(recognition::ratio).collect();
        let mut results = vec![(String::new(), 0.0); lines.len()];
        let mut classes = 0;
        for chunk in recognition::batches(&ratios, self.config.batch_size) {
            let batch: Vec<&RgbImage> = chunk.iter().map(|&i| &lines[i]).collect();
            let (data, width) = recognition::batch(&batch);
            let tensor = Tensor::from_array((
                [batch.len(), 3, recognition::LINE_HEIGHT, width],
                data.into_boxed_slice(),
            ))
            .map_err(OnnxError::from)?;
            let _inference = tracing::info_span!(
                "model.inference",
                plugworker.model = "ppocr_rec",
                plugworker.lines = batch.len()
            )
            .entered();
            let mut session = self.recognizer.session();
            let outputs = session.run([tensor.into()]).map_err(OnnxError::from)?;
            let (shape, probabilities) = outputs[0]
                .try_extract_tensor::<f32>()
                .map_err(OnnxError::from)?;
            let [n, _steps, c] = shape[..] else {
                return Err(OcrError::Model {
                    path: self.config.recognition_model.clone(),
                    reason: format!("unexpected output shape {shape:?}"),
                });
            };
            classes = c as usize;
            let per_line = probabilities.len() / n as usize;
            for (k, &i) in chunk.iter().enumerate() {
                results[i] = recognition::decode(
                    &probabilities[k * per_line..(k + 1) * per_line],
                    classes,
                    &self.charset,
                );
            }
        }
        Ok((results, classes))
    }
}

/// A line as detected and read, before any filtering: what [`PpOcr::candidates`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub text: String,
    /// Recognition confidence: mean probability of the characters kept.
    pub confidence: f32,
    /// Detection score: mean text probability inside the box.
    pub box_score: f32,
    pub quad: crate::Quad,
}

impl PpOcr {
    /// Every line detected and read in `image`, in detection order, none filtered out.
    /// [`OcrEngine::recognize`] keeps the ones that pass its filters; this is for tuning
    /// them.
    pub fn candidates(&self, image: &RgbImage) -> Result<Vec<Candidate>, OcrError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(OcrError::EmptyImage);
        }
        let boxes = self.detect(image)?;
        let crop_span = tracing::info_span!("ocr.crop", plugworker.boxes = boxes.len()).entered();
        let mut kept = Vec::with_capacity(boxes.len());
        let mut crops = Vec::with_capacity(boxes.len());
        for (quad, score) in boxes {
            if let Some(crop) = recognition::crop(image, &quad) {
                kept.push((quad, score));
                crops.push(crop);
            }
        }
        drop(crop_span);
        let (texts, _) = self.recognize_lines(&crops)?;
        Ok(kept
            .into_iter()
            .zip(texts)
            .map(|((quad, box_score), (text, confidence))| Candidate {
                text: text.trim().to_string(),
                confidence,
                box_score,
                quad,
            })
            .collect())
    }
}

impl OcrEngine for PpOcr {
    fn name(&self) -> &'static str {
        "ppocr"
    }

    fn recognize(&self, image: &RgbImage) -> Result<OcrOutput, OcrError> {
        let candidates = self.candidates(image)?;
        let lines = filter::keep(candidates, self.config.min_confidence, &self.config.specks)
            .into_iter()
            .map(|c| TextLine {
                text: c.text,
                confidence: Some(c.confidence),
                quad: c.quad,
            })
            .collect();
        Ok(assemble(lines, ROW_TOLERANCE))
    }
}
