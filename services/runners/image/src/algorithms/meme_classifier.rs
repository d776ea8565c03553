//! `meme_classifier`: which known meme template an image uses.
//!
//! An SSCD copy-detection embedding of the image is compared with the embeddings of a
//! gallery of labelled template images (see `plugworker_meme`). Settings:
//! - `PLUGWORKER_MEME_MODEL`: embedding model (default `<models>/cache/sscd/sscd_distilled.onnx`);
//! - `PLUGWORKER_MEME_GALLERY`: gallery folder (default `<models>/gallery`);
//! - `PLUGWORKER_MEME_GALLERY_CACHE`: where template embeddings are cached (default
//!   `$XDG_CACHE_HOME/plugworker/gallery` or `~/.cache/plugworker/gallery`; `off` disables);
//! - `PLUGWORKER_MEME_THRESHOLD`: lowest cosine similarity answered with a label.

use crate::algorithm_env::{self, image_loader};
use plugworker_image_input::{ImageLoader, ImageSource};
use plugworker_kit::{Algorithm, LoadContext, LoadError, RunContext, RunError};
use plugworker_meme::{Embedder, EmbedderError, Gallery, MemeClassifier as Classifier};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Default similarity threshold, between the two populations of
/// `tests/meme_classifier.rs` with SSCD distilled: captioned, cropped, bannered and
/// recompressed copies of a template scored 0.46–0.82, unrelated photos at most 0.17.
pub const DEFAULT_THRESHOLD: f32 = 0.3;

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Input {
    #[serde(flatten)]
    pub image: ImageSource,
    /// How many labels to list in `candidates`, best first (default 3).
    #[serde(default)]
    #[schemars(range(min = 1, max = 50))]
    pub candidates: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    /// The template's label, or `unknown` when no template scores `threshold` or more.
    pub label: String,
    /// Cosine similarity of the best template (reported also when below the threshold).
    pub score: f32,
    pub threshold: f32,
    /// Best labels, one entry per label, the winner first.
    pub candidates: Vec<Candidate>,
    /// Size of the decoded image.
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Candidate {
    pub label: String,
    pub score: f32,
    /// The label's closest template, relative to the gallery folder.
    pub template: String,
}

pub struct MemeClassifier {
    classifier: Arc<Classifier>,
    images: ImageLoader,
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("plugworker/gallery"))
}

impl Algorithm for MemeClassifier {
    type Input = Input;
    type Output = Output;
    const NAME: &'static str = "meme_classifier";
    const VERSION: &'static str = "1.0.0";
    const DESCRIPTION: &'static str = "Which meme template an image uses (SSCD copy-detection embedding against a gallery of labelled templates), or unknown.";

    fn load(context: &LoadContext) -> Result<Self, LoadError> {
        let model_path = algorithm_env::path(
            "PLUGWORKER_MEME_MODEL",
            context,
            "cache/sscd/sscd_distilled.onnx",
        );
        let gallery_path = algorithm_env::path("PLUGWORKER_MEME_GALLERY", context, "gallery");
        let threshold: f32 = algorithm_env::parse("PLUGWORKER_MEME_THRESHOLD", DEFAULT_THRESHOLD)?;
        if !(-1.0..=1.0).contains(&threshold) {
            return Err(LoadError::other(format!(
                "PLUGWORKER_MEME_THRESHOLD={threshold}: a cosine similarity is between -1 and 1"
            )));
        }
        let cache_dir = match std::env::var_os("PLUGWORKER_MEME_GALLERY_CACHE") {
            Some(v) if v == "off" => None,
            Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
            _ => default_cache_dir(),
        };
        // Every setting is checked before the model and gallery take their time to load.
        let images = image_loader()?;
        let runtime = algorithm_env::onnx_runtime(context)?;
        let model = runtime
            .open(&model_path)
            .map_err(|e| LoadError::file(&model_path, e))?;
        let embedder = Embedder::new(model);
        let (gallery, stats) = Gallery::load(&gallery_path, &embedder, cache_dir.as_deref())
            .map_err(|e| LoadError::file(&gallery_path, e))?;
        tracing::info!(
            gallery = %gallery_path.display(),
            templates = stats.templates,
            labels = gallery.labels().len(),
            embedded = stats.embedded,
            from_cache = stats.from_cache,
            %threshold,
            "meme gallery loaded"
        );
        Ok(Self {
            classifier: Arc::new(Classifier::new(embedder, gallery, threshold)),
            images,
        })
    }

    async fn run(&self, input: Input, context: &RunContext) -> Result<Output, RunError> {
        let image = self.images.load(&input.image, context).await?;
        let (width, height) = image.dimensions();
        let classifier = Arc::clone(&self.classifier);
        let candidates = input.candidates.unwrap_or(3);
        let result = context
            .blocking(move || {
                classifier
                    .classify(&image, candidates)
                    .map_err(|e| match e {
                        // No retry gives an empty image pixels: permanent, as for OCR.
                        EmbedderError::EmptyImage => RunError::Unprocessable(e.to_string()),
                        other => RunError::Internal(format!("embedding failed: {other}")),
                    })
            })
            .await?;
        Ok(Output {
            label: result.label,
            score: result.score,
            threshold: self.classifier.threshold(),
            candidates: result
                .candidates
                .into_iter()
                .map(|c| Candidate {
                    label: c.label,
                    score: c.score,
                    template: c.template,
                })
                .collect(),
            width,
            height,
        })
    }
}

plugworker_kit::register_algorithm!(MemeClassifier);
