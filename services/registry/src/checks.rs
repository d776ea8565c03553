//! Performing checks, as an agent does: probe gRPC/HTTP/TCP targets on their interval,
//! expire TTL checks, and reap instances critical for longer than
//! `DeregisterCriticalServiceAfter`.

use crate::store::{NewCheck, Shared};
use plugworker_discovery::{CheckDefinition, CheckStatus};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// Consul's floor for check intervals.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Consul's default check timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts probing newly registered checks. TTL checks need no probe: the reaper expires them.
pub(crate) fn start(shared: &Arc<Shared>, checks: Vec<NewCheck>) {
    for NewCheck {
        check_id,
        definition,
    } in checks
    {
        if definition.ttl.is_some() {
            continue;
        }
        let weak = Arc::downgrade(shared);
        let id = check_id.clone();
        let task = tokio::spawn(probe_loop(weak, id, definition));
        let mut store = shared.lock();
        match store.checks.get_mut(&check_id) {
            Some(record) => record.probe = Some(task.abort_handle()),
            None => task.abort(), // deregistered before the probe started
        }
    }
}

async fn probe_loop(shared: Weak<Shared>, check_id: String, definition: CheckDefinition) {
    let interval = definition
        .interval
        .unwrap_or(MIN_INTERVAL)
        .max(MIN_INTERVAL);
    let timeout = definition.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(http) = shared.upgrade().map(|s| s.http.clone()) else {
            return;
        };
        let (status, output) = match tokio::time::timeout(timeout, probe(&http, &definition)).await
        {
            Ok(result) => result,
            Err(_) => (
                CheckStatus::Critical,
                format!(
                    "Timeout exceeded ({})",
                    plugworker_discovery::duration::format(timeout)
                ),
            ),
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        record(&shared, &check_id, status, &output);
    }
}

/// Applies a probe's verdict and wakes watchers if it changed anything.
pub(crate) fn record(shared: &Shared, check_id: &str, status: CheckStatus, output: &str) {
    let changed = shared.lock().set_check_status(check_id, status, output);
    if let Ok(Some(index)) = changed {
        tracing::debug!(check_id, %status, output, "check changed state");
        shared.notify(index);
    }
}

async fn probe(http: &reqwest::Client, definition: &CheckDefinition) -> (CheckStatus, String) {
    if let Some(target) = &definition.grpc {
        probe_grpc(target, definition.grpc_use_tls).await
    } else if let Some(url) = &definition.http {
        probe_http(http, url).await
    } else if let Some(address) = &definition.tcp {
        match tokio::net::TcpStream::connect(address).await {
            Ok(_) => (
                CheckStatus::Passing,
                format!("TCP connect {address}: Success"),
            ),
            Err(e) => (CheckStatus::Critical, format!("dial tcp {address}: {e}")),
        }
    } else {
        (CheckStatus::Critical, "no probe for this check type".into())
    }
}

/// `grpc.health.v1.Health/Check` against `host:port` or `host:port/service`.
async fn probe_grpc(target: &str, use_tls: bool) -> (CheckStatus, String) {
    if use_tls {
        return (
            CheckStatus::Critical,
            "GRPCUseTLS is not supported by the embedded registry".into(),
        );
    }
    let (address, service) = match target.split_once('/') {
        Some((address, service)) => (address, service),
        None => (target, ""),
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
        Ok(endpoint) => endpoint.connect_timeout(Duration::from_secs(3)),
        Err(e) => {
            return (
                CheckStatus::Critical,
                format!("invalid gRPC target {target:?}: {e}"),
            );
        }
    };
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => {
            return (
                CheckStatus::Critical,
                format!("gRPC {target}: connect: {e}"),
            );
        }
    };
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    match client.check(request).await {
        Ok(response) => {
            let status = response.into_inner().status();
            if status == ServingStatus::Serving {
                (
                    CheckStatus::Passing,
                    format!("gRPC check {target}: success"),
                )
            } else {
                (
                    CheckStatus::Critical,
                    format!(
                        "gRPC check {target}: failed with status {}",
                        status.as_str_name()
                    ),
                )
            }
        }
        Err(status) => (
            CheckStatus::Critical,
            format!(
                "gRPC check {target}: {} {}",
                status.code(),
                status.message()
            ),
        ),
    }
}

/// HTTP GET: 2xx passing, 429 warning, anything else critical (Consul's rule).
async fn probe_http(http: &reqwest::Client, url: &str) -> (CheckStatus, String) {
    match http.get(url).send().await {
        Ok(response) => {
            let code = response.status();
            let output = format!("HTTP GET {url}: {code}");
            if code.is_success() {
                (CheckStatus::Passing, output)
            } else if code.as_u16() == 429 {
                (CheckStatus::Warning, output)
            } else {
                (CheckStatus::Critical, output)
            }
        }
        Err(e) => (CheckStatus::Critical, format!("HTTP GET {url}: {e}")),
    }
}

/// Expires TTL checks and deregisters instances that stayed critical too long.
pub(crate) fn spawn_reaper(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let mut stopped = shared.stopped.subscribe();
    let period = shared.config.reap_interval;
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            let Some(shared) = weak.upgrade() else { return };
            let now = Instant::now();
            let expired = shared.lock().expired_ttl_checks(now);
            for check_id in expired {
                record(&shared, &check_id, CheckStatus::Critical, "TTL expired");
            }
            let doomed = shared.lock().services_to_reap(now);
            for service_id in doomed {
                let index = shared.lock().deregister(&service_id);
                if let Some(index) = index {
                    tracing::info!(
                        service_id,
                        "deregistered: critical for longer than DeregisterCriticalServiceAfter"
                    );
                    shared.notify(index);
                }
            }
        }
    });
}
