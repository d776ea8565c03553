//! An embedded, Consul-compatible service registry.
//!
//! No Consul binary can be installed on plugworker's development and CI machines, and no
//! published crate implements Consul's API, so plugworker carries this one: the registry
//! behind `plugworker dev` (like `consul agent -dev`: one node, ACLs off, state in memory)
//! and the stand-in for tests. Production always uses real Consul.
//!
//! It follows Consul's documented HTTP API for the endpoints plugworker and the `consul`
//! CLI's `catalog services` use:
//!
//! | endpoint | notes |
//! |---|---|
//! | `PUT /v1/agent/service/register` | PascalCase and snake_case keys; `Check` / `Checks` |
//! | `PUT /v1/agent/service/deregister/:id` | |
//! | `GET /v1/agent/service/:id`, `/v1/agent/services`, `/v1/agent/checks` | |
//! | `PUT /v1/agent/check/{pass,warn,fail}/:id`, `/v1/agent/check/update/:id` | TTL checks |
//! | `GET /v1/catalog/services`, `/v1/catalog/service/:name` | blocking, repeated `tag` |
//! | `GET /v1/health/service/:name` | blocking, `passing`, repeated `tag` |
//! | `GET /v1/status/leader` | |
//!
//! Blocking queries carry a per-endpoint `X-Consul-Index`: the catalog's service list
//! moves only on registrations and deregistrations; a service's catalog and health views
//! move on changes to that service's instances and check states. Checks are really
//! performed (gRPC health, HTTP, TCP; TTL checks expire), and
//! `DeregisterCriticalServiceAfter` reaps instances whose checks stay critical.
//!
//! Deliberate differences from a real agent, all in the direction of faster tests: the
//! first probe of a check runs at once instead of after a random stagger, the reaper runs
//! every second instead of every 30 s, and `DeregisterCriticalServiceAfter` has no
//! one-minute floor. gRPC checks with `GRPCUseTLS` are reported critical: the embedded
//! registry only speaks plaintext gRPC.

mod checks;
mod http;
mod keys;
mod store;

pub use store::RegistryConfig;

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
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            address: address.to_string(),
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
