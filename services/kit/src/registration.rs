//! Keeping this runner registered in Consul (docs/architecture.md §5): service name = runner name,
//! one instance ID per process, tags = exactly the algorithm names, plugworker meta, a gRPC
//! health check, and `DeregisterCriticalServiceAfter`. In mesh mode the registration says
//! `Connect: {"Native": true}` (so `/v1/health/connect/<service>` lists it) and the check
//! targets the plaintext health port, since Consul's agent has no client certificate.
//!
//! Consul may be down when the runner starts, or restart and forget it later; the runner
//! must not care about start-up order. So registration retries until it succeeds, and
//! every check interval the runner asks the agent whether it still knows the instance,
//! registering again if not.

use plugworker_discovery::runners::{META_KIT_VERSION, META_ROLE, ROLE_RUNNER};
use plugworker_discovery::{CheckDefinition, ConsulClient, ServiceConnect, ServiceRegistration};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What to register, and where.
#[derive(Clone)]
pub(crate) struct Registration {
    pub client: ConsulClient,
    pub service: ServiceRegistration,
    pub interval: Duration,
}

/// The `host:port` Consul's gRPC check dials. An IPv6 literal needs brackets there
/// (`[::1]:50051`: Consul parses the target as an authority), while the service's own
/// `Address` stays the bare address, as Consul expects it.
fn check_target(host: &str, port: u16) -> String {
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(ip) => format!("[{ip}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    }
}

impl Registration {
    pub fn new(
        client: ConsulClient,
        instance_id: &str,
        service_name: &str,
        algorithms: Vec<String>,
        (host, port): (String, u16),
        health_port: u16,
        config: &crate::RunnerConfig,
    ) -> Self {
        let meta = BTreeMap::from([
            (META_ROLE.to_string(), ROLE_RUNNER.to_string()),
            (META_KIT_VERSION.to_string(), crate::KIT_VERSION.to_string()),
        ]);
        let check = CheckDefinition {
            check_id: format!("service:{instance_id}:grpc-health"),
            name: format!("{service_name} gRPC health"),
            grpc: Some(check_target(&host, health_port)),
            interval: Some(config.check_interval),
            timeout: Some(config.check_timeout),
            deregister_critical_service_after: Some(config.deregister_critical_after),
            ..Default::default()
        };
        Self {
            client,
            service: ServiceRegistration {
                id: instance_id.to_string(),
                name: service_name.to_string(),
                tags: algorithms,
                address: host,
                port,
                meta,
                check: Some(check),
                checks: Vec::new(),
                connect: (!config.insecure_plaintext).then_some(ServiceConnect { native: true }),
            },
            interval: config.check_interval,
        }
    }

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
                            tracing::warn!(instance = %self.service.id, "Consul agent no longer knows this runner; registering again");
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
                    // Retry quickly at first: a runner that is not registered gets no work.
                    (Duration::from_millis(200) * 2u32.saturating_pow(failures.min(6)))
                        .min(self.interval)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    pub async fn deregister(&self) {
        match self.client.deregister_service(&self.service.id).await {
            Ok(()) => tracing::info!(instance = %self.service.id, "deregistered from Consul"),
            Err(error) => {
                tracing::warn!(%error, "could not deregister from Consul; its check will expire the instance")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_target;

    #[test]
    fn ipv6_check_targets_are_bracketed_and_others_are_not() {
        assert_eq!(check_target("::1", 50051), "[::1]:50051");
        assert_eq!(check_target("fd00::7", 1), "[fd00::7]:1");
        assert_eq!(check_target("10.0.1.7", 50051), "10.0.1.7:50051");
        assert_eq!(
            check_target("runner.internal", 50051),
            "runner.internal:50051"
        );
    }
}
