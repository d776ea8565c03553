//! Every integration test of this crate, one module per file beside this one, in one
//! binary: the dependencies are linked once rather than once per file (docs/testing.md).
//! One file's tests: `cargo nextest run -p <this crate> <file>::`.

mod cli;
mod dev_pipelines;
mod dev_session;
mod dev_support;
#[cfg(all(feature = "gallery", feature = "aws"))]
mod gallery_cli;
mod pipeline_cli;
mod proxy_env;
