//! Keeping this runner registered in Consul (docs/architecture.md §5): service name = runner name,
//! one instance ID per process, tags = exactly the algorithm names, plugworker meta, a gRPC
//! health check, and `DeregisterCriticalServiceAfter`. In mesh mode the registration says
//! `Connect: {"Native": true}` (so `/v1/health/connect/<service>` lists it) and the check
//! targets the plaintext health port, since Consul's agent has no client certificate.
//!
//! Keeping it registered (retries, re-registering with an agent that forgot it) is
//! `plugworker_discovery::registration`, shared with the controller.

use plugworker_consul_client::{
    CheckDefinition, ConsulClient, ServiceConnect, ServiceRegistration,
};
use plugworker_discovery::{
    META_KIT_VERSION, META_METRICS_PORT, META_ROLE, ROLE_RUNNER, Registration,
};
use std::collections::BTreeMap;

/// The `host:port` Consul's gRPC check dials. An IPv6 literal needs brackets there
/// (`[::1]:50051`: Consul parses the target as an authority), while the service's own
/// `Address` stays the bare address, as Consul expects it.
fn check_target(host: &str, port: u16) -> String {
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(ip) => format!("[{ip}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    }
}

/// Where this runner is reached: the advertised host, its gRPC port, the port of its
/// health check and of its `/metrics` (if served).
pub(crate) struct Ports {
    pub host: String,
    pub port: u16,
    pub health_port: u16,
    pub metrics_port: Option<u16>,
}

/// This runner's registration.
pub(crate) fn runner_registration(
    client: ConsulClient,
    instance_id: &str,
    service_name: &str,
    algorithms: Vec<String>,
    Ports {
        host,
        port,
        health_port,
        metrics_port,
    }: Ports,
    config: &crate::RunnerConfig,
) -> Registration {
    let mut meta = BTreeMap::from([
        (META_ROLE.to_string(), ROLE_RUNNER.to_string()),
        (META_KIT_VERSION.to_string(), crate::KIT_VERSION.to_string()),
    ]);
    if let Some(port) = metrics_port {
        meta.insert(META_METRICS_PORT.to_string(), port.to_string());
    }
    let check = CheckDefinition {
        check_id: format!("service:{instance_id}:grpc-health"),
        name: format!("{service_name} gRPC health"),
        grpc: Some(check_target(&host, health_port)),
        interval: Some(config.check_interval),
        timeout: Some(config.check_timeout),
        deregister_critical_service_after: Some(config.deregister_critical_after),
        ..Default::default()
    };
    Registration {
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
