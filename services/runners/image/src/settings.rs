//! What the image algorithms share: the ONNX Runtime and its setting, and the image input.
//!
//! Each algorithm declares its own settings beside it (`plugworker_kit::settings`); the
//! kit lists them in `--help` and refuses a bad value at start, naming the variable.

use plugworker_image_input::{ImageLimits, ImageLoader};
use plugworker_kit::settings::value;
use plugworker_kit::{LoadContext, LoadError};
use plugworker_onnx::Runtime;

/// The runner's one ONNX Runtime, shared by every model.
#[derive(Clone, Debug, clap::Args)]
pub struct OnnxSettings {
    /// Threads of the runner's one ONNX Runtime pool, shared by every model (0: one per
    /// core); one inference at a time per model.
    #[arg(long = "onnx-threads", env = "PLUGWORKER_ONNX_THREADS", default_value_t = 0, value_parser = value::<usize>())]
    pub threads: usize,
}

plugworker_kit::register_settings!(OnnxSettings, "ONNX Runtime");

/// The ONNX Runtime, loaded from the models folder (or `ORT_DYLIB_PATH`), with one
/// intra-op thread pool of [`OnnxSettings::threads`] threads shared by every model.
pub fn onnx_runtime(context: &LoadContext) -> Result<&'static Runtime, LoadError> {
    let threads = context.settings::<OnnxSettings>()?.threads;
    let models_dir = context.model_path("cache");
    Runtime::load(&models_dir, (threads > 0).then_some(threads))
        .map_err(|e| LoadError::other(e.to_string()))
}

/// The image input, configured by the `PLUGWORKER_IMAGE_*` variables, which
/// `plugworker-image-input` reads and checks itself ([`ImageLimits::from_env`]: the
/// same rules, shared with every user of that crate).
pub fn image_loader() -> Result<ImageLoader, LoadError> {
    let limits = ImageLimits::from_env().map_err(LoadError::other)?;
    ImageLoader::new(limits).map_err(LoadError::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_settings_fail_the_load_too() {
        // The image input's own checks (tested in plugworker-image-input) surface as a
        // load error naming the variable.
        let lookup = |name: &str| {
            (name == "PLUGWORKER_IMAGE_ALLOW_PRIVATE").then(|| std::ffi::OsString::from("yes"))
        };
        let error = ImageLimits::from_lookup(lookup)
            .map_err(LoadError::other)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("PLUGWORKER_IMAGE_ALLOW_PRIVATE=\"yes\""),
            "{error}"
        );
    }
}
