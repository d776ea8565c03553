//! A typed client for Consul's HTTP API, with no plugworker convention in it (how plugworker's
//! processes appear in Consul and find each other is `plugworker-discovery`).
//!
//! Why a thin client of our own: the `consulrs` crate has been unmaintained since 2021 and
//! has no health endpoint, and only a handful of endpoints are needed. Owning them
//! means we control blocking-query semantics (index handling, rate limiting, jittered
//! backoff) exactly as Consul documents them, with one HTTP stack (`reqwest`) shared with
//! the rest of the code.
//!
//! - [`config`]: [`ConsulConfig`] and the [`ConsulArgs`] flags, from Consul's standard
//!   `CONSUL_*` variables (address with scheme, token and token file, TLS, namespace).
//! - [`model`]: the JSON shapes of the Consul API we use, parsed as leniently as Consul's
//!   own client parses them (`null` anywhere, unknown fields).
//! - [`duration`]: Go's duration text format, which Consul uses for every interval.
//! - [`client`]: [`ConsulClient`], one method per endpoint.
//! - [`kv`]: the KV store's reads (blocking too) and writes.
//! - [`admin`]: ACL bootstrap, policies, tokens and `service-intentions` entries (operator
//!   calls), and the intention check.
//! - [`watch`]: [`Watch`], the blocking-query loop that keeps a view fresh.

pub mod admin;
pub mod client;
pub mod config;
pub mod duration;
pub mod kv;
pub mod model;
mod tls;
pub mod watch;

pub use client::{ConsulClient, Error, QueryMeta, QueryOptions};
pub use config::{ConsulArgs, ConsulConfig, HttpAuth, Setting, TlsConfig};
pub use kv::KvPair;
pub use model::{
    AgentService, Authorization, AuthorizeRequest, CaRoot, CaRoots, CatalogService,
    CheckDefinition, CheckStatus, HealthCheck, LeafCert, Node, ServiceConnect, ServiceEntry,
    ServiceRegistration,
};
pub use watch::Watch;
