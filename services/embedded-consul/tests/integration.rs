//! Every integration test of this crate, one module per file beside this one, in one
//! binary: the dependencies are linked once rather than once per file (docs/testing.md).
//! One file's tests: `cargo nextest run -p <this crate> <file>::`.

mod acl_conformance;
mod connect_conformance;
mod consul_conformance;
mod proxy_env;
mod py_consul;
