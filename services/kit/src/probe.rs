//! `--health-probe`: the runner binary checking a running instance of itself.
//!
//! Container runtimes (Docker's HEALTHCHECK, ECS health checks) run a command inside the
//! container. Asking the runner's own gRPC health service, the one Consul probes, means
//! the image needs no extra tool and "healthy" means the same thing everywhere.

use crate::RunnerConfig;
use anyhow::{Context, bail};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The address to probe: the listen address, with "all interfaces" replaced by loopback.
fn probe_address(listen: SocketAddr) -> SocketAddr {
    match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => (Ipv4Addr::LOCALHOST, a.port()).into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => (Ipv6Addr::LOCALHOST, a.port()).into(),
        other => other,
    }
}

/// Ok when the runner's health service reports SERVING within `config.check_timeout`.
/// That is the plaintext health port in mesh mode (the mTLS port would need a client
/// certificate), the main port with `--insecure-plaintext`.
pub async fn check(config: &RunnerConfig) -> anyhow::Result<()> {
    let address = probe_address(config.health_address());
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(config.check_timeout)
        .timeout(config.check_timeout);
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("no runner answers at {address}"))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .with_context(|| format!("health check of {address} failed"))?
        .into_inner()
        .status();
    if status != ServingStatus::Serving {
        bail!("runner at {address} is {}", status.as_str_name());
    }
    println!("runner at {address} is SERVING");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_interfaces_are_probed_on_loopback_and_named_addresses_as_given() {
        assert_eq!(
            probe_address("0.0.0.0:50051".parse().unwrap()),
            "127.0.0.1:50051".parse().unwrap()
        );
        assert_eq!(
            probe_address("[::]:7".parse().unwrap()),
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(
            probe_address("10.1.2.3:9".parse().unwrap()),
            "10.1.2.3:9".parse().unwrap()
        );
    }
}
