//! Calling runners: pick a healthy instance for the job's algorithm from the resolver's
//! snapshot (no Consul round trip), balance by power of two choices on in-flight calls,
//! and retry once on another instance when the first answers `UNAVAILABLE`.
//!
//! Each instance gets one lazily-connected HTTP/2 channel behind a tower concurrency
//! limit, so one slow instance cannot absorb every call.

use crate::classify;
use plugworker_discovery::{Instance, Resolver};
use plugworker_jobs::{ErrorClass, ErrorInfo, Job, RunnerInfo, codes};
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tower::limit::ConcurrencyLimit;
use tracing::Instrument;

type Client = RunnerClient<ConcurrencyLimit<Channel>>;

/// One runner instance's connection and load.
struct Connection {
    address: String,
    client: Client,
    in_flight: AtomicUsize,
}

/// A successful run.
#[derive(Debug)]
pub struct Success {
    pub result: Box<serde_json::value::RawValue>,
    pub algorithm_version: String,
    pub runner: RunnerInfo,
    pub run_micros: u64,
}

/// A failed run, with the runner that failed it if one was reached.
#[derive(Debug)]
pub struct Failure {
    pub error: ErrorInfo,
    pub runner: Option<RunnerInfo>,
}

pub struct Dispatcher {
    resolver: Arc<Resolver>,
    /// By instance ID.
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    per_instance_limit: usize,
    job_timeout: Duration,
}

impl Dispatcher {
    pub fn new(resolver: Arc<Resolver>, per_instance_limit: usize, job_timeout: Duration) -> Self {
        Self {
            resolver,
            connections: Mutex::new(HashMap::new()),
            per_instance_limit: per_instance_limit.max(1),
            job_timeout,
        }
    }

    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// Runs `job` on a healthy instance; on `UNAVAILABLE` (or an instance that lost the
    /// algorithm), once more on a different one.
    pub async fn run(&self, job: &Job) -> Result<Success, Failure> {
        let snapshot = self.resolver.snapshot();
        let candidates = snapshot.instances(&job.algorithm);
        let Some(first) = pick(candidates, None, |i| self.load(i)) else {
            return Err(Failure {
                error: ErrorInfo {
                    code: codes::NO_RUNNER.into(),
                    message: format!("no healthy runner serves {:?} yet", job.algorithm),
                    class: ErrorClass::Transient,
                },
                runner: None,
            });
        };
        match self.call(first, job).await {
            Err((status, runner)) if classify::retry_elsewhere(&status) => {
                match pick(candidates, Some(first), |i| self.load(i)) {
                    Some(second) => {
                        tracing::info!(first = %first.id, second = %second.id, code = ?status.code(), "retrying on another instance");
                        self.call(second, job)
                            .await
                            .map_err(|(status, runner)| failure(&status, runner))
                    }
                    None => Err(failure(&status, runner)),
                }
            }
            other => other.map_err(|(status, runner)| failure(&status, runner)),
        }
    }

    /// Like [`Dispatcher::run`], but when no runner serves the algorithm yet, waits up to
    /// `wait` for one to appear (a runner deployed after its jobs were queued).
    pub async fn run_waiting(&self, job: &Job, wait: Duration) -> Result<Success, Failure> {
        if self
            .resolver
            .snapshot()
            .instances(&job.algorithm)
            .is_empty()
            && !wait.is_zero()
        {
            let mut snapshots = self.resolver.subscribe();
            let appeared = tokio::time::timeout(
                wait,
                snapshots.wait_for(|s| !s.instances(&job.algorithm).is_empty()),
            )
            .await;
            if appeared.is_ok() {
                tracing::info!(algorithm = %job.algorithm, "a runner appeared for a waiting job");
            }
        }
        self.run(job).await
    }

    fn connection(&self, instance: &Instance) -> Arc<Connection> {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(connection) = connections.get(&instance.id)
            && connection.address == instance.address
        {
            return connection.clone();
        }
        if connections.len() > 4096 {
            // Instances come and go; forget idle connections to departed ones.
            connections.retain(|_, c| c.in_flight.load(Ordering::Relaxed) > 0);
        }
        let channel = Endpoint::from_shared(format!("http://{}", instance.address))
            .expect("an address from Consul forms a valid URI")
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect_lazy();
        let service = tower::ServiceBuilder::new()
            .concurrency_limit(self.per_instance_limit)
            .service(channel);
        let connection = Arc::new(Connection {
            address: instance.address.clone(),
            client: RunnerClient::new(service)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
            in_flight: AtomicUsize::new(0),
        });
        connections.insert(instance.id.clone(), connection.clone());
        connection
    }

    fn load(&self, instance: &Instance) -> usize {
        let connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections
            .get(&instance.id)
            .map_or(0, |c| c.in_flight.load(Ordering::Relaxed))
    }

    async fn call(
        &self,
        instance: &Instance,
        job: &Job,
    ) -> Result<Success, (tonic::Status, Option<RunnerInfo>)> {
        let connection = self.connection(instance);
        let runner = RunnerInfo {
            service: instance.service.clone(),
            instance_id: instance.id.clone(),
            address: instance.address.clone(),
        };
        let payload = job.payload.get().as_bytes().to_vec();
        let mut request = tonic::Request::new(RunRequest {
            algorithm: job.algorithm.clone(),
            payload,
        });
        // Sent as `grpc-timeout`: the runner stops waiting when the controller does.
        request.set_timeout(self.job_timeout);
        // The CLIENT span of the job's trace; its context travels in the request metadata
        // so the runner's SERVER span continues it.
        let span = tracing::info_span!(
            "Run",
            otel.kind = "client",
            otel.name = %format!("Run {}", job.algorithm),
            rpc.system = "grpc",
            rpc.service = "plugworker.runner.v1.Runner",
            rpc.method = "Run",
            server.address = %instance.address,
            plugworker.instance_id = %instance.id,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        plugworker_telemetry::propagation::inject_metadata(&span, request.metadata_mut());
        connection.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut client = connection.client.clone();
        let outcome = client.run(request).instrument(span.clone()).await;
        connection.in_flight.fetch_sub(1, Ordering::Relaxed);
        match &outcome {
            Ok(_) => {
                span.record("rpc.grpc.status_code", 0);
            }
            Err(status) => {
                span.record("rpc.grpc.status_code", status.code() as i32);
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", status.message());
            }
        }
        let response = outcome
            .map_err(|status| (status, Some(runner.clone())))?
            .into_inner();
        // Checked to be JSON, but not parsed into a tree: it is embedded verbatim.
        let result = String::from_utf8(response.result)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                serde_json::value::RawValue::from_string(text).map_err(|e| e.to_string())
            })
            .map_err(|e| {
                (
                    tonic::Status::internal(format!(
                        "runner returned a result that is not JSON: {e}"
                    )),
                    Some(runner.clone()),
                )
            })?;
        Ok(Success {
            result,
            algorithm_version: response.algorithm_version,
            runner: RunnerInfo {
                instance_id: if response.instance_id.is_empty() {
                    runner.instance_id
                } else {
                    response.instance_id
                },
                ..runner
            },
            run_micros: response.run_micros,
        })
    }
}

fn failure(status: &tonic::Status, runner: Option<RunnerInfo>) -> Failure {
    Failure {
        error: classify::status_error(status),
        runner,
    }
}

/// Power of two choices: of two random candidates (other than `exclude`), the one with
/// fewer calls in flight.
fn pick<'a>(
    candidates: &'a [Instance],
    exclude: Option<&Instance>,
    load: impl Fn(&Instance) -> usize,
) -> Option<&'a Instance> {
    let eligible = |i: &&Instance| Some(*i) != exclude;
    let nth = |k: usize| candidates.iter().filter(eligible).nth(k);
    match candidates.iter().filter(eligible).count() {
        0 => None,
        1 => nth(0),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> Instance {
        Instance {
            service: "s".into(),
            id: id.into(),
            address: format!("{id}:1"),
        }
    }

    #[test]
    fn two_choices_prefer_the_less_loaded_and_exclude_the_failed() {
        let candidates = vec![instance("a"), instance("b")];
        for _ in 0..50 {
            let chosen = pick(&candidates, None, |i| if i.id == "a" { 5 } else { 0 }).unwrap();
            assert_eq!(chosen.id, "b");
        }
        assert_eq!(
            pick(&candidates, Some(&candidates[1]), |_| 0).unwrap().id,
            "a"
        );
        assert!(pick(&candidates[..1], Some(&candidates[0]), |_| 0).is_none());
        assert!(pick(&[], None, |_| 0).is_none());
    }

    #[test]
    fn load_spreads_over_many_instances() {
        let candidates: Vec<_> = (0..4).map(|i| instance(&i.to_string())).collect();
        let mut counts = HashMap::new();
        for _ in 0..400 {
            *counts
                .entry(pick(&candidates, None, |_| 0).unwrap().id.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4, "{counts:?}");
    }
}
