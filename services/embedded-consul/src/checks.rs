//! Performing checks, as an agent does (`agent/checks`): probe gRPC/HTTP/TCP targets on
//! their interval, expire TTL checks, and reap instances critical for longer than
//! `DeregisterCriticalServiceAfter`.

use crate::decode::CheckType;
use crate::store::{DEFAULT_OUTPUT_MAX_SIZE, NewCheck, Shared, Status, nanos};
use plugworker_consul_client::client::is_loopback;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// Consul's floor for check intervals.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Consul's default check timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// What Consul's HTTP checks send unless the check sets its own.
const USER_AGENT: &str = "Consul Health Check";
const ACCEPT: &str = "text/plain, text/*, */*";

/// Starts probing newly (re-)registered checks. TTL checks need no probe: the reaper
/// expires them.
pub(crate) fn start(shared: &Arc<Shared>, checks: Vec<NewCheck>) {
    for NewCheck {
        check_id,
        definition,
    } in checks
    {
        if definition.ttl > 0 {
            continue;
        }
        let weak = Arc::downgrade(shared);
        let task = tokio::spawn(probe_loop(weak, check_id.clone(), definition));
        let mut store = shared.lock();
        match store.checks.get_mut(&check_id) {
            Some(record) => {
                if let Some(old) = record.probe.replace(task.abort_handle()) {
                    old.abort();
                }
            }
            None => task.abort(), // deregistered before the probe started
        }
    }
}

/// Consul's `StatusHandler`: `SuccessBeforePassing` / `FailuresBeforeWarning` /
/// `FailuresBeforeCritical` consecutive results before a status is reported.
struct Thresholds {
    success_before_passing: i64,
    failures_before_warning: i64,
    failures_before_critical: i64,
    successes: i64,
    failures: i64,
}

impl Thresholds {
    fn new(definition: &CheckType) -> Self {
        let critical = definition.failures_before_critical;
        Self {
            success_before_passing: definition.success_before_passing,
            // Consul defaults FailuresBeforeWarning to FailuresBeforeCritical.
            failures_before_warning: if definition.failures_before_warning == 0 {
                critical
            } else {
                definition.failures_before_warning
            },
            failures_before_critical: critical,
            successes: 0,
            failures: 0,
        }
    }

    /// The status to report for a probe's verdict, or `None` to keep the current one.
    fn apply(&mut self, status: Status) -> Option<Status> {
        if status == Status::Critical {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= self.failures_before_critical {
                Some(Status::Critical)
            } else if self.failures >= self.failures_before_warning {
                Some(Status::Warning)
            } else {
                None
            }
        } else {
            self.successes += 1;
            self.failures = 0;
            (self.successes >= self.success_before_passing).then_some(status)
        }
    }
}

async fn probe_loop(shared: Weak<Shared>, check_id: String, definition: CheckType) {
    let interval = nanos(definition.interval).max(MIN_INTERVAL);
    let timeout = if definition.timeout > 0 {
        nanos(definition.timeout)
    } else {
        DEFAULT_TIMEOUT
    };
    let http = match http_client(&definition, timeout) {
        Ok(client) => client,
        Err(error) => {
            if let Some(shared) = shared.upgrade() {
                record(&shared, &check_id, Status::Critical, &error);
            }
            return;
        }
    };
    let mut thresholds = Thresholds::new(&definition);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if shared.strong_count() == 0 {
            return;
        }
        let (status, output) = match tokio::time::timeout(timeout, probe(&http, &definition)).await
        {
            Ok(result) => result,
            Err(_) => (
                Status::Critical,
                format!(
                    "Timeout exceeded ({})",
                    plugworker_consul_client::duration::format(timeout)
                ),
            ),
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Some(status) = thresholds.apply(status) {
            record(&shared, &check_id, status, &output);
        }
    }
}

/// Applies a verdict and wakes watchers if it changed anything they see.
pub(crate) fn record(shared: &Shared, check_id: &str, status: Status, output: &str) {
    let changed = shared.lock().set_check_status(check_id, status, output);
    if let Some(index) = changed {
        tracing::debug!(
            check_id,
            status = status.as_str(),
            output,
            "check changed state"
        );
        shared.notify(index);
    }
}

/// The HTTP client of an HTTP check: Go's default of following up to 10 redirects
/// unless `DisableRedirects`, and `TLSSkipVerify`. Like Consul's checks (Go's
/// `http.ProxyFromEnvironment`), a check of a loopback URL never goes through a proxy
/// from the environment: a proxy would probe its own host, not this one.
fn http_client(definition: &CheckType, timeout: Duration) -> Result<reqwest::Client, String> {
    let redirects = if definition.disable_redirects {
        reqwest::redirect::Policy::none()
    } else {
        reqwest::redirect::Policy::limited(10)
    };
    let mut builder = reqwest::Client::builder()
        .redirect(redirects)
        .timeout(timeout)
        .danger_accept_invalid_certs(definition.tls_skip_verify);
    if url::Url::parse(&definition.http).is_ok_and(|url| is_loopback(&url)) {
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up the HTTP check: {e}"))
}

async fn probe(http: &reqwest::Client, definition: &CheckType) -> (Status, String) {
    match definition.kind() {
        "grpc" => probe_grpc(&definition.grpc, definition.grpc_use_tls).await,
        "http" => probe_http(http, definition).await,
        "tcp" => {
            let address = &definition.tcp;
            match tokio::net::TcpStream::connect(address).await {
                Ok(_) => (Status::Passing, format!("TCP connect {address}: Success")),
                Err(e) => (Status::Critical, format!("dial tcp {address}: {e}")),
            }
        }
        other => (
            Status::Critical,
            format!("the embedded registry cannot run {other:?} checks"),
        ),
    }
}

/// `grpc.health.v1.Health/Check` against `host:port` or `host:port/service`. The output
/// says why a failing check fails, and changes when the reason does.
async fn probe_grpc(target: &str, use_tls: bool) -> (Status, String) {
    if use_tls {
        return (
            Status::Critical,
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
                Status::Critical,
                format!("invalid gRPC target {target:?}: {e}"),
            );
        }
    };
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            return (
                Status::Critical,
                format!("gRPC {target}: connect: {e}{cause}"),
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
                (Status::Passing, format!("gRPC check {target}: success"))
            } else {
                (
                    Status::Critical,
                    format!(
                        "gRPC application didn't report service healthy: {}",
                        status.as_str_name()
                    ),
                )
            }
        }
        Err(status) => (
            Status::Critical,
            format!(
                "gRPC {target}: rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            ),
        ),
    }
}

/// Consul's HTTP check: `Method` (default GET), `Header`, `Body`; 2xx passing, 429
/// warning, anything else critical; the output names the response and ends with (at
/// most `OutputMaxSize` bytes of) its body.
async fn probe_http(http: &reqwest::Client, definition: &CheckType) -> (Status, String) {
    let url = &definition.http;
    let method_name = if definition.method.is_empty() {
        "GET"
    } else {
        definition.method.as_str()
    };
    let method = match reqwest::Method::from_bytes(method_name.as_bytes()) {
        Ok(method) => method,
        Err(_) => {
            return (
                Status::Critical,
                format!("net/http: invalid method {method_name:?}"),
            );
        }
    };
    let mut request = http.request(method, url.as_str());
    let mut has_user_agent = false;
    let mut has_accept = false;
    for (name, values) in &definition.header {
        has_user_agent |= name.eq_ignore_ascii_case("user-agent");
        has_accept |= name.eq_ignore_ascii_case("accept");
        for value in values {
            request = request.header(name.as_str(), value.as_str());
        }
    }
    if !has_user_agent {
        request = request.header("User-Agent", USER_AGENT);
    }
    if !has_accept {
        request = request.header("Accept", ACCEPT);
    }
    if !definition.body.is_empty() {
        request = request.body(definition.body.clone());
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            return (
                Status::Critical,
                format!("{method_name} {url:?}: {e}{cause}"),
            );
        }
    };
    let code = response.status();
    let body = response.bytes().await.unwrap_or_default();
    // Consul keeps the last OutputMaxSize bytes (a circular buffer).
    let max = if definition.output_max_size > 0 {
        definition.output_max_size as usize
    } else {
        DEFAULT_OUTPUT_MAX_SIZE
    };
    let tail = &body[body.len().saturating_sub(max)..];
    let output = format!(
        "HTTP {method_name} {url}: {code} Output: {}",
        String::from_utf8_lossy(tail)
    );
    let status = if code.is_success() {
        Status::Passing
    } else if code.as_u16() == 429 {
        Status::Warning
    } else {
        Status::Critical
    };
    (status, output)
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
            let expired = shared.lock().expire_ttl_checks(now);
            for (check_id, output) in expired {
                record(&shared, &check_id, Status::Critical, &output);
            }
            reap(&shared, now);
        }
    });
}

fn reap(shared: &Shared, now: Instant) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_hold_back_status_changes_like_consul() {
        let mut t = Thresholds::new(&CheckType {
            success_before_passing: 2,
            failures_before_warning: 1,
            failures_before_critical: 3,
            ..Default::default()
        });
        assert_eq!(t.apply(Status::Passing), None);
        assert_eq!(t.apply(Status::Passing), Some(Status::Passing));
        assert_eq!(t.apply(Status::Critical), Some(Status::Warning));
        assert_eq!(t.apply(Status::Critical), Some(Status::Warning));
        assert_eq!(t.apply(Status::Critical), Some(Status::Critical));
        let mut defaults = Thresholds::new(&CheckType::default());
        assert_eq!(defaults.apply(Status::Critical), Some(Status::Critical));
        assert_eq!(defaults.apply(Status::Passing), Some(Status::Passing));
    }
}
