//! Every integration test of this crate, one module per file beside this one, in one
//! binary: the dependencies are linked once rather than once per file (docs/testing.md).
//! One file's tests: `cargo nextest run -p <this crate> <file>::`.

mod common;
mod grpc_contract;
mod registration;
mod run_bounds;
mod server_bounds;
