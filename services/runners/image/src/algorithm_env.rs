//! Algorithm settings from the environment (`PLUGWORKER_*`), read and checked once, when
//! the algorithm loads.
//!
//! The kit owns the runner's flags; algorithm-specific settings are environment
//! variables so that one runner binary can carry any set of algorithms. Each is listed
//! in the README's configuration table. Every one is typed ([`EnvValue`]): an empty
//! variable counts as unset, and any other value that does not parse fails the load with
//! the variable's name, its value and what it accepts, so a typo never silently falls
//! back to a default.

use plugworker_image_input::{ImageLimits, ImageLoader};
use plugworker_kit::{LoadContext, LoadError};
use plugworker_onnx::Runtime;
use std::ffi::OsString;
use std::path::PathBuf;

/// A type an algorithm setting can have: how its text is read, and what it accepts (for
/// the error message).
pub trait EnvValue: Sized {
    /// What a value must look like, said to the person who set it.
    const ACCEPTED: &'static str;
    /// The value `text` (trimmed, not empty) stands for, or `None` if it is not one.
    fn read(text: &str) -> Option<Self>;
}

impl EnvValue for usize {
    const ACCEPTED: &'static str = "a whole number, 0 or more";
    fn read(text: &str) -> Option<Self> {
        text.parse().ok()
    }
}

impl EnvValue for f32 {
    const ACCEPTED: &'static str = "a finite decimal number, such as 0.5";
    fn read(text: &str) -> Option<Self> {
        // `f32::from_str` also takes "NaN" and "inf": never a threshold anyone meant.
        text.parse().ok().filter(|value: &f32| value.is_finite())
    }
}

impl EnvValue for String {
    const ACCEPTED: &'static str = "any text";
    fn read(text: &str) -> Option<Self> {
        Some(text.to_string())
    }
}

/// The value of `name` in the process environment, or `default` when it is unset or
/// empty; a value that does not parse fails the load.
pub fn parse<T: EnvValue>(name: &str, default: T) -> Result<T, LoadError> {
    parse_from(|name| std::env::var_os(name), name, default).map_err(LoadError::other)
}

/// [`parse`] with the environment read through `lookup`; the error is the message.
fn parse_from<T: EnvValue>(
    lookup: impl Fn(&str) -> Option<OsString>,
    name: &str,
    default: T,
) -> Result<T, String> {
    let Some(raw) = lookup(name) else {
        return Ok(default);
    };
    let text = match raw.into_string() {
        Ok(text) => text,
        Err(raw) => {
            return Err(format!(
                "{name}={:?}: not valid UTF-8; expected {}",
                raw.to_string_lossy(),
                T::ACCEPTED
            ));
        }
    };
    if text.trim().is_empty() {
        return Ok(default);
    }
    T::read(text.trim()).ok_or_else(|| format!("{name}={text:?}: expected {}", T::ACCEPTED))
}

/// A path from `name` (any bytes make a path), or `default` inside the models folder.
pub fn path(name: &str, context: &LoadContext, default: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => context.model_path(default),
    }
}

/// The ONNX Runtime, loaded from the models folder (or `ORT_DYLIB_PATH`), with one
/// intra-op thread pool of `PLUGWORKER_ONNX_THREADS` threads shared by every model
/// (default, or 0: one per core).
pub fn onnx_runtime(context: &LoadContext) -> Result<&'static Runtime, LoadError> {
    let threads: usize = parse("PLUGWORKER_ONNX_THREADS", 0)?;
    let models_dir = context.model_path("cache");
    Runtime::load(&models_dir, (threads > 0).then_some(threads))
        .map_err(|e| LoadError::other(e.to_string()))
}

/// The image input, configured by the `PLUGWORKER_IMAGE_*` variables
/// ([`ImageLimits::from_env`], which checks them as strictly).
pub fn image_loader() -> Result<ImageLoader, LoadError> {
    let limits = ImageLimits::from_env().map_err(LoadError::other)?;
    ImageLoader::new(limits).map_err(LoadError::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs = pairs.to_vec();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.into())
        }
    }

    #[test]
    fn unset_or_empty_is_the_default_and_a_value_is_read() {
        let vars = env(&[("EMPTY", "  "), ("THREADS", " 4 "), ("SCORE", "0.25")]);
        assert_eq!(parse_from(&vars, "UNSET", 7usize), Ok(7));
        assert_eq!(parse_from(&vars, "EMPTY", 7usize), Ok(7));
        assert_eq!(parse_from(&vars, "THREADS", 7usize), Ok(4));
        assert_eq!(parse_from(&vars, "SCORE", 0.5f32), Ok(0.25));
        assert_eq!(
            parse_from(&vars, "THREADS", String::new()),
            Ok("4".to_string())
        );
    }

    #[test]
    fn a_bad_value_names_the_variable_the_value_and_what_is_accepted() {
        let vars = env(&[
            ("PLUGWORKER_ONNX_THREADS", "four"),
            ("NEGATIVE", "-1"),
            ("PLUGWORKER_MEME_THRESHOLD", "NaN"),
            ("INFINITE", "inf"),
        ]);
        assert_eq!(
            parse_from(&vars, "PLUGWORKER_ONNX_THREADS", 0usize),
            Err("PLUGWORKER_ONNX_THREADS=\"four\": expected a whole number, 0 or more".into())
        );
        assert!(parse_from(&vars, "NEGATIVE", 0usize).is_err());
        assert_eq!(
            parse_from(&vars, "PLUGWORKER_MEME_THRESHOLD", 0.3f32),
            Err(
                "PLUGWORKER_MEME_THRESHOLD=\"NaN\": expected a finite decimal number, such as 0.5"
                    .into()
            )
        );
        assert!(parse_from(&vars, "INFINITE", 0.3f32).is_err());
    }

    #[test]
    fn a_value_that_is_not_utf8_is_an_error_not_the_default() {
        use std::os::unix::ffi::OsStringExt;
        let lookup = |_: &str| Some(OsString::from_vec(vec![b'4', 0xff]));
        let error = parse_from(lookup, "PLUGWORKER_ONNX_THREADS", 0usize).unwrap_err();
        assert!(error.starts_with("PLUGWORKER_ONNX_THREADS="), "{error}");
        assert!(error.contains("not valid UTF-8"), "{error}");
    }

    #[test]
    fn the_image_settings_fail_the_load_too() {
        // The image input's own checks (tested in plugworker-image-input) surface as a
        // load error naming the variable.
        let error = ImageLimits::from_lookup(env(&[("PLUGWORKER_IMAGE_ALLOW_PRIVATE", "yes")]))
            .map_err(LoadError::other)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("PLUGWORKER_IMAGE_ALLOW_PRIVATE=\"yes\""),
            "{error}"
        );
    }
}
