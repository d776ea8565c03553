//! Calling runners: pick a healthy instance for the job's algorithm from the resolver's
//! snapshot (no Consul round trip), balance by power of two choices on in-flight calls,
//! and retry once on another instance when the first answers `UNAVAILABLE`.
//!
//! A call the runner provably did not process is sent again before that, up to
//! [`MAX_RESENDS`] times, on any instance (the same one included), and does not spend the
//! retry: a stream refused with `REFUSED_STREAM` or by a GOAWAY, or a request hyper never
//! wrote ([`classify::unprocessed`]). Runners close connections routinely (maximum age,
//! the client certificate's `NotAfter`, idle and capacity limits): calls started as a
//! GOAWAY arrives are refused, not lost. A call that may have run (a reset after the
//! runner received it, a connection lost mid-call) is never sent again here.
//!
//! Each instance gets one lazily-connected HTTP/2 channel behind a tower concurrency
//! limit, so one slow instance cannot absorb every call.
//!
//! Why not `tower::balance::p2c` and `tower::retry`: `Balance` owns one pool of endpoints
//! fed by a `Discover` stream, while here the candidates differ per job (the instances
//! serving its algorithm, read from the resolver's snapshot, which changes under us), and
//! one channel per instance is shared by every algorithm that instance serves; a pool per
//! algorithm would open a connection per (algorithm, instance). And the retry must go to
//! a *different* instance than the one that answered `UNAVAILABLE`, which a `tower::retry`
//! policy cannot express without re-picking inside the balancer. So the choice (`pick`)
//! and the single retry elsewhere are a few explicit lines; the per-instance limit is
//! tower's.
//!
//! In the mesh ([`Transport::Mesh`], the default of `plugworker controller`) each channel
//! dials through a [`MeshConnector`]: mTLS with the controller's leaf certificate, and the
//! runner accepted only if its certificate chains to the Connect CA and its SPIFFE URI
//! names the service the instance was resolved as. A registration that points somewhere
//! else (a rogue listener, a re-registered instance ID) therefore fails the handshake
//! before a byte of the job is written: the call fails with `UNAVAILABLE`, the job is
//! retried at once on another instance, and if none is left it fails *transient*
//! (`RUNNER_UNAVAILABLE`) and is redelivered under the usual delivery rules. The instance
//! that failed its identity check is then left out of the choice for
//! [`IDENTITY_FAILURE_COOL_DOWN`], so it costs one failed handshake, not one per job.

use crate::classify;
use plugworker_discovery::{Instance, Resolver};
use plugworker_jobs::{ErrorInfo, RunnerInfo, codes};
use plugworker_mesh::{Identity, MeshConnector};
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use rand::Rng;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tower::limit::ConcurrencyLimit;
use tracing::Instrument;

type Client = RunnerClient<ConcurrencyLimit<Channel>>;

/// How long an instance that failed the mesh identity check is left out of the choice.
pub const IDENTITY_FAILURE_COOL_DOWN: Duration = Duration::from_secs(10);

/// How many times one call is sent again, at most, because the runner provably did not
/// process it ([`classify::Unprocessed`]: refused stream, GOAWAY, not sent); these do not
/// count as the retry on another instance.
pub const MAX_RESENDS: u32 = 4;

/// The pause before the first such resend; each next one waits 4 times longer (5, 20, 80,
/// 320 ms: 425 ms in all). A GOAWAY fails the calls started just after it at once, until
/// the channel has seen the connection end and dials a new one; the pause lets it.
pub const RESEND_PAUSE: Duration = Duration::from_millis(5);

/// Less than this left before the caller's deadline: no call is sent (again); the last
/// failure is the answer. A call given less could not reach a runner and run anyway.
pub const MIN_CALL_TIME: Duration = Duration::from_millis(1);

/// How the dispatcher reaches runners.
#[derive(Clone)]
pub enum Transport {
    /// Connect-native mTLS with this identity's leaf; each runner must present a
    /// certificate for the service it was resolved as.
    Mesh(Identity),
    /// Plaintext HTTP/2 (`--insecure-plaintext`): anyone who can register an instance or
    /// reach the network between controller and runner can read and answer jobs.
    Plaintext,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Mesh(identity) => {
                f.debug_tuple("Mesh").field(&identity.spiffe_id()).finish()
            }
            Transport::Plaintext => f.write_str("Plaintext"),
        }
    }
}

/// One runner instance's connection and load.
struct Connection {
    address: String,
    client: Client,
    in_flight: AtomicUsize,
    /// Until when the instance is skipped: it failed the mesh identity check.
    refused_until: Mutex<Option<Instant>>,
}

impl Connection {
    fn refused(&self) -> bool {
        lock(&self.refused_until).is_some_and(|until| Instant::now() < until)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Addresses already warned about as undialable.
    undialable: Mutex<std::collections::HashSet<String>>,
    transport: Transport,
}

impl Dispatcher {
    /// A dispatcher calling runners in plaintext; see [`Dispatcher::with_transport`].
    pub fn new(resolver: Arc<Resolver>, per_instance_limit: usize, job_timeout: Duration) -> Self {
        Self {
            resolver,
            connections: Mutex::new(HashMap::new()),
            per_instance_limit: per_instance_limit.max(1),
            job_timeout,
            undialable: Mutex::new(Default::default()),
            transport: Transport::Plaintext,
        }
    }

    /// Calls runners over `transport`. [`Transport::Mesh`] needs a resolver in
    /// [`plugworker_discovery::Mode::Connect`]: plain instances cannot do mTLS.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The longest a job may take (`--job-timeout`): each call's default bound.
    pub fn job_timeout(&self) -> Duration {
        self.job_timeout
    }

    pub fn resolver(&self) -> &Arc<Resolver> {
        &self.resolver
    }

    /// Runs `algorithm` on `payload` on a healthy instance, all of it within `timeout`
    /// from now: each call (its wait for the instance's concurrency permit included) is
    /// bounded by, and sends as `grpc-timeout`, what is left of it. On `UNAVAILABLE` (or
    /// an instance that lost the algorithm), once more on a different one. A call the
    /// runner did not process is sent again first (see the module's documentation). With
    /// under [`MIN_CALL_TIME`] left, nothing more is sent: the last failure is the answer.
    /// Instances whose address cannot be dialled are skipped.
    pub async fn run(
        &self,
        algorithm: &str,
        payload: &RawValue,
        timeout: Duration,
    ) -> Result<Success, Failure> {
        let job = Call {
            algorithm,
            payload,
            deadline: Instant::now() + timeout,
        };
        let snapshot = self.resolver.snapshot();
        let candidates = snapshot.instances(algorithm);
        let mut excluded: Vec<&Instance> = Vec::new();
        let mut first_failure: Option<(tonic::Status, Option<RunnerInfo>)> = None;
        // Instances that just failed the identity check count as already tried.
        let refused = self.refused(candidates);
        excluded.extend(refused.iter().copied());
        let skipped_refused = !refused.is_empty();
        // Calls sent again because the runner provably did not process them.
        let mut resent = 0u32;
        // What the last call sent failed with: the answer if the deadline comes first.
        let mut last_failure: Option<(tonic::Status, Option<RunnerInfo>)> = None;
        loop {
            if job.left() < MIN_CALL_TIME {
                let (status, runner) = last_failure.unwrap_or_else(|| {
                    (
                        tonic::Status::deadline_exceeded(format!(
                            "no time left to call a runner (the job's {timeout:?})"
                        )),
                        None,
                    )
                });
                return Err(failure(&status, runner));
            }
            let Some(instance) = pick(candidates, &excluded, |i| self.load(i)) else {
                return Err(match first_failure {
                    Some((status, runner)) => failure(&status, runner),
                    None => Failure {
                        error: ErrorInfo::transient(
                            codes::NO_RUNNER,
                            format!(
                                "no healthy runner serves {:?} yet{}",
                                job.algorithm,
                                if skipped_refused {
                                    " (instances registered under its service failed the mesh identity check)"
                                } else if excluded.is_empty() {
                                    ""
                                } else {
                                    " (the instances registered have addresses that cannot be dialled)"
                                }
                            ),
                        ),
                        runner: None,
                    },
                });
            };
            excluded.push(instance);
            let Some(connection) = self.connection(instance) else {
                continue;
            };
            match self.call(&connection, instance, &job).await {
                Ok(success) => return Ok(success),
                Err((status, runner)) => {
                    let status = match classify::unprocessed(&status) {
                        Some(why) if resent < MAX_RESENDS => {
                            // Never reached the runner's service: sent again, this
                            // instance included (the runner closing the connection is
                            // usually healthy), after a pause that lets the channel see
                            // the GOAWAY and dial a new connection.
                            tracing::info!(instance = %instance.id, reason = why.label(), error = %status.message(), "the runner did not process the call; sending it again on a new connection");
                            excluded.pop();
                            last_failure = Some((status, runner));
                            tokio::time::sleep((RESEND_PAUSE * 4u32.pow(resent)).min(job.left()))
                                .await;
                            resent += 1;
                            continue;
                        }
                        // Refused every time: an instance that stays unreachable, which
                        // the retry on another instance is for.
                        Some(why) => tonic::Status::unavailable(format!(
                            "the runner did not process the call {} times in a row ({}): {}",
                            resent + 1,
                            why.label(),
                            status.message()
                        )),
                        None => status,
                    };
                    if let Some(refusal) = identity_refusal(&status) {
                        let mut until = lock(&connection.refused_until);
                        if until.is_none_or(|t| t <= Instant::now()) {
                            tracing::warn!(instance = %instance.id, service = %instance.service, address = %instance.address, error = %refusal, cool_down = ?IDENTITY_FAILURE_COOL_DOWN, "runner instance failed the mesh identity check; no jobs go to it for a while");
                        }
                        *until = Some(Instant::now() + IDENTITY_FAILURE_COOL_DOWN);
                    }
                    let again = classify::retry_elsewhere(&status) && first_failure.is_none();
                    if !again {
                        return Err(failure(&status, runner));
                    }
                    tracing::info!(instance = %instance.id, code = ?status.code(), error = %status.message(), "retrying on another instance");
                    last_failure = Some((status.clone(), runner.clone()));
                    first_failure = Some((status, runner));
                }
            }
        }
    }

    /// Resolves once the resolver has heard from Consul (at once if it has): before that,
    /// an empty view says nothing about runners.
    pub async fn wait_ready(&self) {
        let mut ready = self.resolver.readiness();
        if !*ready.borrow() {
            tracing::info!("waiting for the first answer from Consul before receiving jobs");
            // Err only if the resolver is gone, which it is not while `self` holds it.
            let _ = ready.wait_for(|ready| *ready).await;
        }
    }

    /// Waits up to `wait` for a runner of `algorithm` to appear (a runner deployed after
    /// its jobs were queued); true if one did.
    pub async fn wait_for_runner(&self, algorithm: &str, wait: Duration) -> bool {
        if !self.resolver.snapshot().instances(algorithm).is_empty() {
            return true;
        }
        let mut snapshots = self.resolver.subscribe();
        tokio::time::timeout(
            wait,
            snapshots.wait_for(|s| !s.instances(algorithm).is_empty()),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// The instance's connection; `None` (with a warning, once per address) if its
    /// address cannot be dialled.
    fn connection(&self, instance: &Instance) -> Option<Arc<Connection>> {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(connection) = connections.get(&instance.id)
            && connection.address == instance.address
        {
            return Some(connection.clone());
        }
        if connections.len() > 4096 {
            // Instances come and go; forget idle connections to departed ones.
            connections.retain(|_, c| c.in_flight.load(Ordering::Relaxed) > 0);
        }
        let endpoint = match endpoint(&instance.address) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                let mut warned = self.undialable.lock().unwrap_or_else(|e| e.into_inner());
                if warned.len() < 4096 && warned.insert(instance.address.clone()) {
                    tracing::warn!(instance = %instance.id, address = %plugworker_jobs::text::cap(&instance.address, 200), %error, "skipping a runner instance whose address cannot be dialled");
                }
                return None;
            }
        };
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true);
        let channel = match &self.transport {
            Transport::Plaintext => endpoint.connect_lazy(),
            // The connector checks the server's certificate names `instance.service`; the
            // URI stays `http://`, so tonic itself does no TLS.
            Transport::Mesh(identity) => endpoint.connect_with_connector_lazy(MeshConnector::new(
                identity.clone(),
                &instance.service,
            )),
        };
        let service = tower::ServiceBuilder::new()
            .concurrency_limit(self.per_instance_limit)
            .service(channel);
        let connection = Arc::new(Connection {
            address: instance.address.clone(),
            client: RunnerClient::new(service)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
            in_flight: AtomicUsize::new(0),
            refused_until: Mutex::new(None),
        });
        connections.insert(instance.id.clone(), connection.clone());
        Some(connection)
    }

    /// The candidates currently left out for failing the identity check.
    fn refused<'a>(&self, candidates: &'a [Instance]) -> Vec<&'a Instance> {
        let connections = lock(&self.connections);
        candidates
            .iter()
            .filter(|i| {
                connections
                    .get(&i.id)
                    .is_some_and(|c| c.address == i.address && c.refused())
            })
            .collect()
    }

    fn load(&self, instance: &Instance) -> usize {
        let connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections
            .get(&instance.id)
            .map_or(0, |c| c.in_flight.load(Ordering::Relaxed))
    }

    async fn call(
        &self,
        connection: &Connection,
        instance: &Instance,
        job: &Call<'_>,
    ) -> Result<Success, (tonic::Status, Option<RunnerInfo>)> {
        let runner = RunnerInfo {
            service: instance.service.clone(),
            instance_id: instance.id.clone(),
            address: instance.address.clone(),
        };
        let payload = job.payload.get().as_bytes().to_vec();
        let mut request = tonic::Request::new(RunRequest {
            algorithm: job.algorithm.to_string(),
            payload,
        });
        // Sent as `grpc-timeout`: the runner stops waiting when the controller does.
        let left = job.left();
        request.set_timeout(left);
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
        let mut client = connection.client.clone();
        let outcome = {
            // Counted down however the call ends, cancelled futures included.
            let _in_flight = InFlightCall::new(&connection.in_flight);
            // The instance's concurrency permit is waited for inside `client.run`, before
            // tonic's own timeout starts: bounded here, so a call ends by the deadline
            // however long the permit takes.
            tokio::time::timeout(left, client.run(request).instrument(span.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::deadline_exceeded(format!(
                        "the call did not end within the {left:?} left before the job's deadline"
                    )))
                })
        };
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

/// One algorithm run: what [`Dispatcher::run`] sends, and when its caller stops waiting.
struct Call<'a> {
    algorithm: &'a str,
    payload: &'a RawValue,
    deadline: Instant,
}

impl Call<'_> {
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// One call in flight on an instance, for power of two choices.
struct InFlightCall<'a>(&'a AtomicUsize);

impl<'a> InFlightCall<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlightCall<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gRPC endpoint of a runner at `address` as Consul hands it out: `host:port` where
/// host is an IPv4 address, a hostname, or an IPv6 address with or without brackets
/// (`[::1]:50051`, `::1:50051`: the port is after the last colon).
fn endpoint(address: &str) -> Result<Endpoint, String> {
    let authority = match address.parse::<std::net::SocketAddr>() {
        Ok(socket) => socket.to_string(),
        Err(_) => {
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| "no port (expected host:port)".to_string())?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
                Err(_) if !host.is_empty() && !host.contains(':') => format!("{host}:{port}"),
                Err(_) => return Err(format!("{host:?} is neither an IP address nor a host name")),
            }
        }
    };
    Endpoint::from_shared(format!("http://{authority}")).map_err(|e| e.to_string())
}

/// The mesh error in a failed call's cause chain if the connector refused the server's
/// certificate (wrong service, untrusted chain or trust domain), as opposed to a runner
/// that is merely down.
fn identity_refusal(status: &tonic::Status) -> Option<&plugworker_mesh::Error> {
    let mesh = classify::causes(status).find_map(|e| e.downcast_ref::<plugworker_mesh::Error>())?;
    matches!(
        mesh,
        plugworker_mesh::Error::WrongService { .. }
            | plugworker_mesh::Error::UntrustedChain(_)
            | plugworker_mesh::Error::WrongTrustDomain { .. }
            | plugworker_mesh::Error::PeerRefused { .. }
    )
    .then_some(mesh)
}

fn failure(status: &tonic::Status, runner: Option<RunnerInfo>) -> Failure {
    Failure {
        error: classify::status_error(status),
        runner,
    }
}

/// Power of two choices: of two random candidates (other than those in `exclude`), the
/// one with fewer calls in flight.
fn pick<'a>(
    candidates: &'a [Instance],
    exclude: &[&Instance],
    load: impl Fn(&Instance) -> usize,
) -> Option<&'a Instance> {
    let eligible = |i: &&Instance| !exclude.contains(i);
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
            let chosen = pick(&candidates, &[], |i| if i.id == "a" { 5 } else { 0 }).unwrap();
            assert_eq!(chosen.id, "b");
        }
        assert_eq!(pick(&candidates, &[&candidates[1]], |_| 0).unwrap().id, "a");
        assert!(pick(&candidates[..1], &[&candidates[0]], |_| 0).is_none());
        assert!(pick(&[], &[], |_| 0).is_none());
    }

    #[test]
    fn load_spreads_over_many_instances() {
        let candidates: Vec<_> = (0..4).map(|i| instance(&i.to_string())).collect();
        let mut counts = HashMap::new();
        for _ in 0..400 {
            *counts
                .entry(pick(&candidates, &[], |_| 0).unwrap().id.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4, "{counts:?}");
    }

    #[test]
    fn addresses_in_every_form_consul_hands_out() {
        let uri = |a: &str| endpoint(a).map(|e| e.uri().to_string());
        assert_eq!(uri("127.0.0.1:50051").unwrap(), "http://127.0.0.1:50051/");
        assert_eq!(uri("::1:50051").unwrap(), "http://[::1]:50051/");
        assert_eq!(uri("[::1]:50051").unwrap(), "http://[::1]:50051/");
        assert_eq!(uri("fe80::1:2:3:443").unwrap(), "http://[fe80::1:2:3]:443/");
        assert_eq!(
            uri("runner.service.consul:50051").unwrap(),
            "http://runner.service.consul:50051/"
        );
        for bad in [
            "",
            "no-port",
            "host:99999",
            "two words:1",
            "::g:1",
            ":50051",
        ] {
            assert!(uri(bad).is_err(), "{bad:?} accepted");
        }
    }
}
