//! Algorithm settings from the environment (`PLUGWORKER_*`), read once at load.
//!
//! The kit owns the runner's flags; algorithm-specific settings are environment
//! variables so that one runner binary can carry any set of algorithms. Each is listed
//! in the README's configuration table. A value that does not parse fails the load with
//! the variable's name, so a typo never silently falls back to a default.

use plugworker_image_input::{ImageLimits, ImageLoader};
use plugworker_kit::{LoadContext, LoadError};
use plugworker_onnx::Runtime;
use std::path::PathBuf;
use std::str::FromStr;

/// The value of `name` parsed, or `default` when unset or empty.
pub fn parse<T: FromStr>(name: &str, default: T) -> Result<T, LoadError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .map_err(|e| LoadError::other(format!("{name}={value:?}: {e}"))),
        _ => Ok(default),
    }
}

/// A path from `name`, or `default` inside the models folder.
pub fn path(name: &str, context: &LoadContext, default: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => context.model_path(default),
    }
}

/// The ONNX Runtime, loaded from the models folder (or `ORT_DYLIB_PATH`), with
/// `PLUGWORKER_ONNX_THREADS` threads per inference (default: one per core).
pub fn onnx_runtime(context: &LoadContext) -> Result<&'static Runtime, LoadError> {
    let threads: usize = parse("PLUGWORKER_ONNX_THREADS", 0)?;
    let models_dir = context.model_path("cache");
    Runtime::load(&models_dir, (threads > 0).then_some(threads))
        .map_err(|e| LoadError::other(e.to_string()))
}

/// The image input, configured by the `PLUGWORKER_IMAGE_*` variables.
pub fn image_loader() -> Result<ImageLoader, LoadError> {
    let limits = ImageLimits::from_env().map_err(|e| LoadError::other(e.to_string()))?;
    ImageLoader::new(limits).map_err(|e| LoadError::other(e.to_string()))
}
