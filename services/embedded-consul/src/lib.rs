//! An embedded, Consul-compatible service registry.
//!
//! No Consul binary can be installed on plugworker's development and CI machines, and no
//! published crate implements Consul's API, so plugworker carries this one: the registry
//! behind `plugworker dev` (like `consul agent -dev`: one node, state in memory; ACLs
//! off unless [`RegistryConfig::acl_enabled`])
//! and the stand-in for tests. Production always uses real Consul.
//!
//! It answers like a Consul agent, checked against Consul's source (request decoding,
//! validation order and messages, response shapes, indexes); the remaining differences
//! are listed in `docs/consul-compatibility.md`.
//!
//! | endpoint | notes |
//! |---|---|
//! | `PUT /v1/agent/service/register` | Consul's strict decoder and validation; `?replace-existing-checks` |
//! | `PUT /v1/agent/service/deregister/:id` | |
//! | `GET /v1/agent/service/:id` | `ContentHash`, `?hash=` blocking |
//! | `GET /v1/agent/services`, `/v1/agent/checks`, `/v1/agent/self`, `/v1/agent/members` | |
//! | `PUT /v1/agent/check/{pass,warn,fail}/:id`, `/v1/agent/check/update/:id` | TTL checks |
//! | `GET /v1/catalog/services`, `/v1/catalog/service/:name`, `/v1/catalog/nodes`, `/v1/catalog/node/:node` | blocking, `tag` |
//! | `GET /v1/health/service/:name`, `/v1/health/checks/:service`, `/v1/health/state/:state`, `/v1/health/node/:node` | blocking, `passing`, `tag` |
//! | `GET`/`PUT`/`DELETE /v1/kv/:key` | `recurse`, `keys`, `separator`, `raw`, `cas`, `flags`, blocking |
//! | `GET /v1/status/leader`, `/v1/status/peers` | |
//! | `GET /v1/agent/connect/ca/roots`, `/v1/connect/ca/roots`, `GET`/`PUT /v1/connect/ca/configuration` | built-in CA, rotation keeps old roots |
//! | `GET /v1/agent/connect/ca/leaf/:service` | SPIFFE leaf, cached, renewed at 60–90 % of its life; blocking |
//! | `POST /v1/agent/connect/authorize` | intentions, then `default_intention_policy`, then the ACL default |
//! | `PUT /v1/config`, `GET`/`DELETE /v1/config/service-intentions[/:name]`, `/v1/connect/intentions` (list, match, exact) | |
//! | `GET /v1/health/connect/:service`, `/v1/catalog/connect/:service` | Connect-native instances |
//! | `/v1/acl/bootstrap`, `/v1/acl/policy*`, `/v1/acl/token*` | when ACLs are on; enforced on every endpoint |
//!
//! Checks are really performed (gRPC health, HTTP, TCP; TTL checks expire), and
//! `DeregisterCriticalServiceAfter` reaps instances whose checks stay critical.
//!
//! Deliberate differences from a real agent, all in the direction of faster tests: the
//! first probe of a check runs at once instead of after a random stagger, the reaper runs
//! every second instead of every 30 s, and `DeregisterCriticalServiceAfter` has no
//! one-minute floor. gRPC checks with `GRPCUseTLS` are reported critical: the embedded
//! registry only speaks plaintext gRPC.
//!
//! Connect (the CA, intentions, authorize) and ACLs follow Consul's wire formats so that
//! Connect-native code and ACL-aware clients run unchanged against the registry and
//! against Consul; see `docs/consul-compatibility.md`.

mod acl;
mod acl_http;
mod checks;
mod connect;
mod connect_http;
mod decode;
mod go;
mod http;
mod kv;
mod store;
mod views;

pub use connect::{Action as IntentionAction, CaError};
pub use store::RegistryConfig;

/// The Consul version whose HTTP API the registry implements, reported where Consul
/// reports its version (`/v1/agent/self`, node meta, member tags).
pub const CONSUL_API_VERSION: &str = "1.21.0";

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Errors starting the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// A registry: state plus the background tasks that perform checks and reap instances.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<store::Shared>,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Self {
        let shared = store::Shared::new(config);
        checks::spawn_reaper(&shared);
        Self { shared }
    }

    /// Blocking queries parked now, waiting for a change or the end of their wait: a test
    /// waits for one before making the change it must wake (otherwise a query that arrives
    /// after the change is answered at once, and nothing woke).
    pub fn parked_queries(&self) -> usize {
        self.shared.changes.receiver_count()
    }

    /// Rotates the Connect CA to a fresh root key, like a `PUT /v1/connect/ca/configuration`
    /// with a new `PrivateKey`: the old root stays listed (inactive) so certificates it
    /// signed keep verifying, leaves are re-issued under the new root, and blocked leaf
    /// and roots queries wake.
    pub fn rotate_ca_root(&self) -> Result<(), CaError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let index = self.shared.next_index();
        self.shared.mesh().rotate(key, index)?;
        self.shared.notify(index);
        Ok(())
    }

    /// The Connect trust domain (`<cluster-id>.consul`).
    pub fn trust_domain(&self) -> String {
        self.shared.mesh().trust_domain.clone()
    }

    /// The HTTP API as an axum router, for embedding in another server.
    pub fn router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// Serves the HTTP API on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await?;
        self.shared.stop();
        Ok(())
    }

    /// Starts a registry on `address` (port 0 picks a free port) in the background.
    pub async fn spawn(address: &str, config: RegistryConfig) -> Result<RunningRegistry, Error> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| Error::Bind {
                address: address.to_string(),
                source,
            })?;
        Self::spawn_on(listener, config)
    }

    /// Starts a registry on a listener already bound, in the background: a test that held
    /// the port (so nothing else could take it) starts the registry there without
    /// releasing it first.
    pub fn spawn_on(
        listener: TcpListener,
        config: RegistryConfig,
    ) -> Result<RunningRegistry, Error> {
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            address: "the given listener".to_string(),
            source,
        })?;
        let registry = Registry::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(registry.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        tracing::info!(address = %local_addr, "embedded Consul-compatible registry listening");
        Ok(RunningRegistry {
            address: local_addr,
            registry,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// A registry serving in the background; stopping it (or dropping it) forgets all state,
/// like a `consul agent -dev` restart.
pub struct RunningRegistry {
    address: SocketAddr,
    registry: Registry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningRegistry {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://host:port`, ready for `CONSUL_HTTP_ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Stops serving and waits until the port is released.
    pub async fn stop(mut self) {
        self.shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.registry.shared.stop();
    }
}

impl Drop for RunningRegistry {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
