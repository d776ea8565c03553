//! Every integration test of this crate, one module per file beside this one, in one
//! binary: the dependencies are linked once rather than once per file (docs/testing.md).
//! One file's tests: `cargo nextest run -p <this crate> <file>::`.

mod scale;
mod store;
// Shared with benches/gallery_scale.rs, which uses all of it.
#[allow(dead_code)]
#[path = "support/synthetic.rs"]
mod synthetic;
