//! `meme_classifier`: which known meme template an image uses.
//!
//! An SSCD copy-detection embedding of the image is compared with the embeddings of a
//! gallery of labelled template images (see `plugworker_meme`). The gallery is a folder
//! or an S3 prefix ([`MemeSettings::gallery`]) the runner follows while serving
//! ([`crate::live_gallery`]); results name the gallery version that answered
//! (`algorithm_version` `1.1.0+gallery.<short version>`).

use crate::live_gallery::LiveGallery;
use crate::settings::{image_loader, onnx_runtime};
use plugworker_image_input::{ImageLoader, ImageSource};
use plugworker_kit::settings::value;
use plugworker_kit::{Algorithm, LoadContext, LoadError, RunContext, RunError};
use plugworker_meme::{
    Embedder, EmbedderError, Gallery, GalleryStore, Location, rank, short_version,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The code a run answers (as `UNAVAILABLE`, transient) while no gallery version has loaded.
pub const GALLERY_UNAVAILABLE: &str = "gallery_unavailable";

/// `meme_classifier`'s settings.
#[derive(Clone, Debug, clap::Args)]
pub struct MemeSettings {
    /// Embedding model (any SSCD-style uint8 NHWC → 512-d ONNX model) [default:
    /// <models>/cache/sscd/sscd_distilled.onnx].
    #[arg(long = "meme-model", env = "PLUGWORKER_MEME_MODEL", value_parser = value::<PathBuf>())]
    pub model: Option<PathBuf>,
    /// Gallery location: a folder or s3://bucket/prefix, followed while serving
    /// [default: <models>/gallery].
    #[arg(long = "meme-gallery", env = "PLUGWORKER_MEME_GALLERY", value_parser = value::<String>())]
    pub gallery: Option<String>,
    /// Embedding cache of a read-only gallery folder (`off` disables) [default:
    /// $XDG_CACHE_HOME/plugworker/gallery or ~/.cache/plugworker/gallery].
    #[arg(long = "meme-gallery-cache", env = "PLUGWORKER_MEME_GALLERY_CACHE", value_parser = value::<String>())]
    pub gallery_cache: Option<String>,
    /// How often the gallery's current version is checked (also at once when its
    /// Consul KV key changes).
    #[arg(long = "meme-gallery-poll", env = "PLUGWORKER_MEME_GALLERY_POLL", default_value = "5s", value_parser = value::<Duration>())]
    pub gallery_poll: Duration,
    /// Longest one read of the gallery's current version, or one load of a version, may
    /// take before it counts as failed (the last good version keeps serving); a load
    /// includes embedding templates without stored embeddings for this model.
    #[arg(long = "meme-gallery-timeout", env = "PLUGWORKER_MEME_GALLERY_TIMEOUT", default_value = "60s", value_parser = value::<Duration>())]
    pub gallery_timeout: Duration,
    /// Lowest cosine similarity answered with a label (-1 to 1; measured: edited copies
    /// 0.46–0.82, unrelated photos ≤ 0.17).
    #[arg(long = "meme-threshold", env = "PLUGWORKER_MEME_THRESHOLD", default_value_t = DEFAULT_THRESHOLD, value_parser = value::<f32>())]
    pub threshold: f32,
}

plugworker_kit::register_settings!(MemeSettings, "meme_classifier");

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
    /// The label's closest template: the file name it was added as (a versioned gallery),
    /// or its path relative to a read-only gallery folder.
    pub template: String,
}

pub struct MemeClassifier {
    embedder: Arc<Embedder>,
    gallery: Arc<LiveGallery>,
    threshold: f32,
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
    const VERSION: &'static str = "1.1.0";
    const DESCRIPTION: &'static str = "Which meme template an image uses (SSCD copy-detection embedding against a gallery of labelled templates), or unknown.";

    fn load(context: &LoadContext) -> Result<Self, LoadError> {
        let settings = context.settings::<MemeSettings>()?;
        let threshold = settings.threshold;
        if !(-1.0..=1.0).contains(&threshold) {
            return Err(LoadError::other(format!(
                "PLUGWORKER_MEME_THRESHOLD={threshold}: a cosine similarity is between -1 and 1"
            )));
        }
        at_least(
            "PLUGWORKER_MEME_GALLERY_POLL (or --meme-gallery-poll)",
            settings.gallery_poll,
            MIN_GALLERY_POLL,
            " (0 would check without pause)",
        )?;
        at_least(
            "PLUGWORKER_MEME_GALLERY_TIMEOUT (or --meme-gallery-timeout)",
            settings.gallery_timeout,
            Duration::from_millis(1),
            "",
        )?;
        let model_path = settings
            .model
            .clone()
            .unwrap_or_else(|| context.model_path("cache/sscd/sscd_distilled.onnx"));
        let location = match &settings.gallery {
            Some(text) => Location::parse(text.trim())
                .map_err(|e| LoadError::other(format!("PLUGWORKER_MEME_GALLERY: {e}")))?,
            None => Location::Folder(context.model_path("gallery")),
        };
        let cache_dir = match settings.gallery_cache.as_deref().map(str::trim) {
            Some("off") => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => default_cache_dir(),
        };
        // Every setting is checked before the model and gallery take their time to load.
        let images = image_loader()?;
        let runtime = onnx_runtime(context)?;
        let model = runtime
            .open(&model_path)
            .map_err(|e| LoadError::file(&model_path, e))?;
        let embedder = Arc::new(Embedder::new(model));
        // The kit loads on a blocking thread of its runtime, where the gallery follower
        // lives too; anything else (a bare thread) is a caller's mistake, said as one.
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            LoadError::other("meme_classifier loads on a tokio runtime's blocking thread")
        })?;
        let store = handle
            .block_on(GalleryStore::open(location))
            .map_err(|e| LoadError::other(format!("PLUGWORKER_MEME_GALLERY: {e}")))?
            .with_cache_dir(cache_dir);
        let gallery = Arc::new(
            LiveGallery::new(store, Arc::clone(&embedder)).with_timeout(settings.gallery_timeout),
        );
        // The first version loads before the runner serves, as any model does; a gallery
        // that cannot be read does not stop the runner: its other algorithms serve, this
        // one answers gallery_unavailable until the follower loads a version.
        handle.block_on(gallery.refresh());
        gallery.follow(settings.gallery_poll, context.consul().cloned());
        Ok(Self {
            embedder,
            gallery,
            threshold,
            images,
        })
    }

    async fn run(&self, input: Input, context: &RunContext) -> Result<Output, RunError> {
        // The version the run starts with is the one it answers with, whatever loads meanwhile.
        let gallery = self.gallery.current().ok_or_else(|| {
            RunError::Unavailable(format!(
                "{GALLERY_UNAVAILABLE}: no version of the meme gallery {} has loaded yet{}",
                self.gallery.location(),
                self.gallery
                    .problem()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            ))
        })?;
        context.report_version(version_with(&gallery));
        let image = self.images.load(&input.image, context).await?;
        let (width, height) = image.dimensions();
        let embedder = Arc::clone(&self.embedder);
        let candidates = input.candidates.unwrap_or(3);
        let threshold = self.threshold;
        let result = context
            .blocking(move || {
                let embedding = embedder.embed(&image).map_err(|e| match e {
                    // No retry gives an empty image pixels: permanent, as for OCR.
                    EmbedderError::EmptyImage => RunError::Unprocessable(e.to_string()),
                    other => RunError::Internal(format!("embedding failed: {other}")),
                })?;
                let _lookup = tracing::info_span!(
                    "gallery.lookup",
                    plugworker.templates = gallery.templates().len()
                )
                .entered();
                Ok(rank(&gallery, &embedding, threshold, candidates))
            })
            .await?;
        Ok(Output {
            label: result.label,
            score: result.score,
            threshold,
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

    fn version(&self) -> Cow<'_, str> {
        match self.gallery.current() {
            Some(gallery) => Cow::Owned(version_with(&gallery)),
            None => Cow::Borrowed(Self::VERSION),
        }
    }

    fn degraded(&self) -> Option<String> {
        let problem = self.gallery.problem()?;
        Some(match self.gallery.current() {
            Some(gallery) => format!(
                "gallery {}: {problem}; serving version {}",
                self.gallery.location(),
                short_version(gallery.version())
            ),
            None => format!(
                "gallery {}: {problem}; no version loaded ({GALLERY_UNAVAILABLE})",
                self.gallery.location()
            ),
        })
    }
}

/// Shortest gallery poll interval: each check reads `current` (a read-only folder: hashes
/// every template), so a shorter one (0s would be a busy loop) only burns CPU and S3
/// requests; Consul's KV watch already brings a change at once.
pub const MIN_GALLERY_POLL: Duration = Duration::from_millis(250);

/// Refuses a duration setting under `min`, as a typed setting refuses a value that does
/// not read: the variable, the value and what it accepts.
fn at_least(name: &str, value: Duration, min: Duration, why: &str) -> Result<(), LoadError> {
    if value < min {
        return Err(LoadError::other(format!(
            "{name}={value:?}: expected a duration of at least {min:?}, such as 5s{why}"
        )));
    }
    Ok(())
}

/// `1.1.0+gallery.<short version>`: which gallery answered.
fn version_with(gallery: &Gallery) -> String {
    format!(
        "{}+gallery.{}",
        MemeClassifier::VERSION,
        short_version(gallery.version())
    )
}

plugworker_kit::register_algorithm!(MemeClassifier);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_under_250ms_is_refused_naming_the_variable_and_what_it_accepts() {
        let poll = "PLUGWORKER_MEME_GALLERY_POLL (or --meme-gallery-poll)";
        for bad in [Duration::ZERO, Duration::from_millis(249)] {
            let error = at_least(poll, bad, MIN_GALLERY_POLL, "")
                .unwrap_err()
                .to_string();
            assert!(error.contains(&format!("{poll}={bad:?}:")), "{error}");
            assert!(error.contains("at least 250ms"), "{error}");
        }
        at_least(poll, MIN_GALLERY_POLL, MIN_GALLERY_POLL, "").unwrap();
        at_least(poll, Duration::from_secs(5), MIN_GALLERY_POLL, "").unwrap();
    }
}
