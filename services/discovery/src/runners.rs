//! How plugworker runners appear in Consul, and how to find them (docs/architecture.md §5).
//!
//! A runner registers its service with `Meta` [`META_ROLE`] = `runner` and tags equal to
//! the algorithm names it serves. Anything that needs runners finds them here, never by a
//! static list.

use plugworker_consul_client::{CheckStatus, ConsulClient, Error, QueryOptions, ServiceEntry};

/// Meta key holding the service's plugworker role; runners set it to [`ROLE_RUNNER`].
pub const META_ROLE: &str = "plugworker_role";
/// Value of [`META_ROLE`] for runners.
pub const ROLE_RUNNER: &str = "runner";
/// Value of [`META_ROLE`] for the controller (registered so Prometheus finds it).
pub const ROLE_CONTROLLER: &str = "controller";
/// Meta key holding the port of the instance's Prometheus `/metrics` endpoint, when it
/// serves one: Prometheus' Consul discovery scrapes `<address>:<this port>`.
pub const META_METRICS_PORT: &str = "plugworker_metrics_port";
/// Meta key holding the runner kit version a runner was built with.
pub const META_KIT_VERSION: &str = "plugworker_kit_version";

/// Which instances the resolver hands out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Connect-native instances only (`/v1/health/connect/:service`): callers dial them
    /// with mTLS and check the service name in their certificate.
    #[default]
    Connect,
    /// Every instance (`/v1/health/service/:service`), for plaintext callers
    /// (`--insecure-plaintext`).
    Plain,
}

/// Whether a health entry is a plugworker runner instance.
pub fn is_runner(entry: &ServiceEntry) -> bool {
    entry.service.meta.get(META_ROLE).map(String::as_str) == Some(ROLE_RUNNER)
}

/// Every runner instance Consul knows, healthy or not, by one catalog read plus one
/// health read per service.
pub async fn all_runner_instances(client: &ConsulClient) -> Result<Vec<ServiceEntry>, Error> {
    let (services, _) = client.catalog_services(QueryOptions::default()).await?;
    let mut instances = Vec::new();
    for name in services.keys() {
        let (entries, _) = client
            .health_service(name, &[], false, QueryOptions::default())
            .await?;
        instances.extend(entries.into_iter().filter(is_runner));
    }
    Ok(instances)
}

/// Healthy runner instances that serve `algorithm`, across every runner service: in
/// [`Mode::Connect`] only the Connect-native ones (`/v1/health/connect/:service`), in
/// [`Mode::Plain`] all of them (`/v1/health/service/:service`).
///
/// Each instance's own tags are checked here: Consul ignores `?tag=` on
/// `/v1/health/connect` (its Connect lookup takes no tags), so the answer there holds every
/// Connect-native instance of the service, the ones lacking `algorithm` included.
pub async fn passing_instances_for(
    client: &ConsulClient,
    algorithm: &str,
    mode: Mode,
) -> Result<Vec<ServiceEntry>, Error> {
    let (services, _) = client.catalog_services(QueryOptions::default()).await?;
    let mut instances = Vec::new();
    for (name, tags) in &services {
        if !tags.iter().any(|t| t == algorithm) {
            continue;
        }
        let options = QueryOptions::default();
        let (entries, _) = match mode {
            Mode::Connect => client.health_connect(name, &[], true, options).await?,
            Mode::Plain => {
                client
                    .health_service(name, &[algorithm], true, options)
                    .await?
            }
        };
        instances.extend(entries.into_iter().filter(|e| {
            is_runner(e)
                && e.aggregated_status() == CheckStatus::Passing
                && e.service.tags.iter().any(|t| t == algorithm)
        }));
    }
    Ok(instances)
}
