//! plugworker's discovery contract: how its processes appear in Consul and how they are
//! found there (docs/architecture.md §5). Consul's API itself is
//! [`plugworker_consul_client`]; this crate is what plugworker does with it.
//!
//! - [`runners`]: the metadata keys a runner (and the controller) registers with, and
//!   one-off lookups of runner instances.
//! - [`resolver`]: [`Resolver`], the live algorithm → healthy instances view the controller
//!   dispatches from.
//! - [`registration`]: [`Registration`], keeping one instance registered whatever Consul
//!   does (runners through the kit, the controller).
//! - [`policy`]: the ACL rules plugworker's processes need.

pub mod policy;
pub mod registration;
pub mod resolver;
pub mod runners;

pub use registration::{Registration, host_address};
pub use resolver::{Admission, Instance, Resolver, Snapshot};
pub use runners::{
    META_KIT_VERSION, META_METRICS_PORT, META_ROLE, Mode, ROLE_CONTROLLER, ROLE_RUNNER,
    all_runner_instances, is_runner, passing_instances_for,
};
