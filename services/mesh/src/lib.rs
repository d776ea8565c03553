//! Consul Connect-native mTLS for plugworker, without sidecars.
//!
//! Connect's native integration is three calls to the local agent and two TLS checks:
//!
//! | who | asks the agent | checks in the handshake |
//! |---|---|---|
//! | both sides | `/v1/agent/connect/ca/leaf/<own service>` (a certificate naming it) and `/v1/agent/connect/ca/roots` | the peer's chain ends at one of the roots |
//! | client | | the server's SPIFFE ID names the service it meant to reach |
//! | server | `/v1/agent/connect/authorize` per new client certificate | (intentions decide whether the client's service may connect) |
//!
//! Modules, one concept each:
//! - [`spiffe`]: the `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>` identities;
//! - [`identity`]: [`Identity`], the leaf and roots, kept fresh with blocking queries;
//! - [`server`]: [`incoming`], TLS termination and authorization for tonic servers;
//! - [`client`]: [`MeshConnector`], the verifying dialler for tonic clients;
//! - [`error`]: [`Error`], one variant per reason a peer is refused or an identity is
//!   unavailable.
//!
//! The agent may be real Consul (with `connect { enabled = true }`) or plugworker's
//! embedded registry, which implements the same endpoints.

mod cert;
pub mod client;
pub mod error;
pub mod identity;
pub mod server;
pub mod spiffe;

pub use client::MeshConnector;
pub use error::Error;
pub use identity::{Identity, WeakIdentity};
pub use server::{MeshConnectInfo, MeshStream, ServerSettings, ServerStats, incoming};
pub use spiffe::SpiffeId;
