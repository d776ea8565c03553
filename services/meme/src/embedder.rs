//! Image → L2-normalised embedding with an SSCD-style ONNX model.

use image::RgbImage;
use image::imageops::FilterType;
use plugworker_onnx::ort::value::Tensor;
use plugworker_onnx::{OnnxError, OnnxModel};

/// Width of the embeddings SSCD models produce.
pub const EMBEDDING_DIM: usize = 512;

/// Images are scaled so their longer side is this many pixels before embedding. SSCD was
/// trained around 288–320 px; larger inputs cost time quadratically and gain nothing for
/// template matching. Part of the gallery cache key: changing it re-embeds the templates.
pub const LONGER_SIDE: u32 = 320;

#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("model {model} returned {got} values; expected a {EMBEDDING_DIM}-d embedding")]
    Shape { model: String, got: usize },
    #[error("image is empty")]
    EmptyImage,
}

/// An embedding model: uint8 NHWC RGB of any size in, one 512-d vector out.
pub struct Embedder {
    model: OnnxModel,
}

impl Embedder {
    pub fn new(model: OnnxModel) -> Self {
        Self { model }
    }

    /// Identifies the model and preprocessing, for caches of embeddings.
    pub fn cache_key(&self) -> String {
        format!("{}-{LONGER_SIDE}", self.model.sha256())
    }

    pub fn model_path(&self) -> &std::path::Path {
        self.model.path()
    }

    /// The embedding of `image`, L2-normalised so a dot product is the cosine similarity.
    pub fn embed(&self, image: &RgbImage) -> Result<Vec<f32>, EmbedderError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(EmbedderError::EmptyImage);
        }
        let scaled = tracing::info_span!("image.preprocess")
            .in_scope(|| scale_to_longer_side(image, LONGER_SIDE));
        let (width, height) = scaled.dimensions();
        let input = Tensor::from_array((
            [1usize, height as usize, width as usize, 3],
            scaled.into_raw().into_boxed_slice(),
        ))
        .map_err(OnnxError::from)?;
        let _inference = tracing::info_span!(
            "model.inference",
            plugworker.model = "sscd",
            plugworker.width = width,
            plugworker.height = height
        )
        .entered();
        let mut session = self.model.session();
        let outputs = session.run([input.into()]).map_err(OnnxError::from)?;
        let (_, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(OnnxError::from)?;
        if values.len() != EMBEDDING_DIM {
            return Err(EmbedderError::Shape {
                model: self.model.path().display().to_string(),
                got: values.len(),
            });
        }
        let mut embedding = values.to_vec();
        normalise(&mut embedding);
        Ok(embedding)
    }
}

/// Scales down (never up) so the longer side is at most `side`. Triangle filtering
/// averages over the source pixels, so thin caption strokes do not alias.
fn scale_to_longer_side(image: &RgbImage, side: u32) -> RgbImage {
    let (width, height) = image.dimensions();
    let longer = width.max(height);
    if longer <= side {
        return image.clone();
    }
    let scale = side as f64 / longer as f64;
    let new_width = ((width as f64 * scale).round() as u32).max(1);
    let new_height = ((height as f64 * scale).round() as u32).max(1);
    image::imageops::resize(image, new_width, new_height, FilterType::Triangle)
}

/// The model already normalises; doing it again guards against rounding and against
/// a configured model that does not.
pub(crate) fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
}
