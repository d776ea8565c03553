//! Every integration test of this crate, one module per file beside this one, in one
//! binary: the dependencies are linked once rather than once per file (docs/testing.md).
//! One file's tests: `cargo nextest run -p <this crate> <file>::`.

#[cfg(feature = "sqs")]
mod call_tags;
mod common;
#[cfg(feature = "sqs")]
mod fault_injection;
#[cfg(feature = "sqs")]
mod intentions;
#[cfg(feature = "sqs")]
mod job_ids;
#[cfg(feature = "sqs")]
mod mesh;
mod metrics;
mod pipelines;
#[cfg(feature = "sqs")]
mod readiness;
#[cfg(feature = "sqs")]
mod sqs_controller;
#[cfg(feature = "sqs")]
mod tracing;
#[cfg(feature = "sqs")]
mod uncallable;
