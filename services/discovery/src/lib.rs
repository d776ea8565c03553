//! Typed access to Consul for plugworker.
//!
//! Why a thin client of our own: the `consulrs` crate has been unmaintained since 2021 and
//! has no health endpoint, and plugworker needs only a handful of endpoints. Owning them
//! means we control blocking-query semantics (index handling, jittered backoff) exactly as
//! Consul documents them, with one HTTP stack (`reqwest`) shared with the rest of the code.
//!
//! - [`model`]: the JSON shapes of the Consul API we use.
//! - [`duration`]: Go's duration text format, which Consul uses for every interval.
//! - [`client`]: [`ConsulClient`], one method per endpoint.
//! - [`watch`]: [`Watch`], the blocking-query loop that keeps a view fresh.
//! - [`runners`]: how plugworker runners look in Consul, and finding them.
//! - [`resolver`]: [`Resolver`], the live algorithm → healthy instances view.

pub mod client;
pub mod duration;
pub mod model;
pub mod resolver;
pub mod runners;
pub mod watch;

pub use client::{ConsulClient, ConsulConfig, Error, QueryMeta, QueryOptions};
pub use model::{
    AgentService, CatalogService, CheckDefinition, CheckStatus, HealthCheck, Node, ServiceEntry,
    ServiceRegistration,
};
pub use resolver::{Instance, Resolver, Snapshot};
pub use watch::Watch;
