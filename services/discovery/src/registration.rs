//! Keeping one service instance registered with the local Consul agent, whoever it is
//! (a runner through the kit, the controller): register, retrying with backoff until the
//! agent answers; then every `interval` ask the agent whether it still knows the instance
//! and register again if not (an agent that restarted forgets its services); stop when
//! told, then deregister.
//!
//! Consul may be down when the process starts, or restart later; the process must not
//! care about start-up order, so nothing here ever gives up on its own.

use plugworker_consul_client::{ConsulClient, ServiceRegistration};
use plugworker_lifecycle::Backoff;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What to keep registered, and where.
#[derive(Clone, Debug)]
pub struct Registration {
    pub client: ConsulClient,
    pub service: ServiceRegistration,
    /// How often the agent is asked whether it still knows the instance.
    pub interval: Duration,
}

impl Registration {
    /// Registers, then keeps the registration alive until `stop` is cancelled.
    pub async fn maintain(self, stop: CancellationToken) {
        let mut registered = false;
        let mut failures = 0u32;
        loop {
            let step = async {
                if registered {
                    match self.client.agent_service(&self.service.id).await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => {
                            tracing::warn!(instance = %self.service.id, "Consul agent no longer knows this instance; registering again");
                            self.client.register_service(&self.service).await
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    self.client.register_service(&self.service).await
                }
            };
            // A request hanging on an unreachable agent must not hold up shutdown.
            let outcome = tokio::select! {
                outcome = step => outcome,
                () = stop.cancelled() => return,
            };
            let delay = match outcome {
                Ok(()) => {
                    if !registered || failures > 0 {
                        tracing::info!(
                            instance = %self.service.id,
                            service = %self.service.name,
                            tags = ?self.service.tags,
                            consul = %self.client.base_url(),
                            "registered in Consul"
                        );
                    }
                    registered = true;
                    failures = 0;
                    self.interval
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, attempt = failures, "Consul registration failed; will retry");
                    // Retry quickly at first: an instance that is not registered gets no work.
                    Backoff::new(Duration::from_millis(400), self.interval).delay(failures)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Deregisters; a failure is logged, not returned (the check's
    /// `DeregisterCriticalServiceAfter` removes the instance anyway).
    pub async fn deregister(&self) {
        match self.client.deregister_service(&self.service.id).await {
            Ok(()) => tracing::info!(instance = %self.service.id, "deregistered from Consul"),
            Err(error) => {
                tracing::warn!(%error, "could not deregister from Consul; its check will expire the instance")
            }
        }
    }
}

/// The address to register for a process listening on `ip`: `ip` itself, or, when it
/// listens on all interfaces, the first non-loopback IPv4 address this host's name
/// resolves to (loopback if none).
pub async fn host_address(ip: std::net::IpAddr) -> std::net::IpAddr {
    if !ip.is_unspecified() {
        return ip;
    }
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    tokio::net::lookup_host((hostname.as_str(), 0))
        .await
        .ok()
        .and_then(|mut addrs| addrs.find(|a| a.is_ipv4() && !a.ip().is_loopback()))
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}
