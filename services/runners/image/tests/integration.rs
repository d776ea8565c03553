//! Every integration test of this crate, one module per file beside this one, in one
//! binary: the dependencies are linked once rather than once per file (docs/testing.md).
//! One file's tests: `cargo nextest run -p <this crate> <file>::`.

mod bad_input;
mod gallery;
#[cfg(feature = "s3")]
mod image_s3;
mod meme_classifier;
mod ocr;
mod ocr_textured;
mod registration;
mod run_bounds;
mod support;
