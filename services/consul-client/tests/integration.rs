//! Every integration test of this crate, one module per file beside this one, in one
//! binary: the dependencies are linked once rather than once per file (docs/testing.md).
//! One file's tests: `cargo nextest run -p <this crate> <file>::`.

mod blocking_rate_limit;
mod client_settings;
mod common;
mod proxy_env;
mod real_agent_responses;
mod tls;
