//! The `plugworker.runner.v1.Runner` gRPC service: validation, bounded concurrency,
//! deadlines, and the mapping of failures to status codes.
//!
//! The hop's cross-cutting work (the server span, the metrics, the loading/draining gate,
//! the deadline) stays inline here rather than as tower layers around `RunnerServer`:
//! below tonic's codec a layer sees HTTP bodies, not the `RunRequest`, so it could neither
//! name the span nor label metrics by algorithm without decoding the protobuf a second
//! time, and a tower stack over decoded requests would box one future per layer on every
//! call. That per-call cost is what `scripts/bench-kit.sh` measures (issue 15 §4), so
//! each concern is a small function or guard instead: [`server_span`], the cached
//! [`AlgorithmMetrics`] with its in-flight drop guard, [`gate`], and
//! [`deadline::deadline`] on the arrival time [`deadline::StampArrival`] stamps.

use crate::algorithm::{Caller, LoadedAlgorithm, RunContext, RunError};
use crate::catalog::{Catalog, Described};
use crate::deadline;
use crate::metrics::AlgorithmMetrics;
use crate::slots::{RunHold, RunSlots};
use plugworker_rpc::runner::v1::runner_server::Runner;
use plugworker_rpc::runner::v1::{
    ListAlgorithmsRequest, ListAlgorithmsResponse, RunRequest, RunResponse,
};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Violations listed in one `INVALID_ARGUMENT` message, at most.
const MAX_LISTED_VIOLATIONS: usize = 20;
/// Each violation's text is cut to this many characters (messages travel in HTTP/2 headers).
const MAX_VIOLATION_CHARS: usize = 240;

/// State shared by the gRPC service and the runner's lifecycle.
pub(crate) struct RunnerState {
    pub catalog: Catalog,
    pub service_name: String,
    pub instance_id: String,
    /// Set once every algorithm has loaded: each at its [`Described::index`].
    pub loaded: OnceLock<Vec<Arc<dyn LoadedAlgorithm>>>,
    pub draining: AtomicBool,
    pub slots: RunSlots,
    pub metrics: crate::metrics::RunnerMetrics,
}

impl RunnerState {
    /// The catalog's descriptions, each with the version its algorithm answers now once
    /// loaded (it may change while serving: [`crate::Algorithm::version`]).
    pub fn infos(&self) -> Vec<plugworker_rpc::runner::v1::AlgorithmInfo> {
        let mut infos = self.catalog.infos();
        if let Some(loaded) = self.loaded.get() {
            for (info, described) in infos.iter_mut().zip(self.catalog.algorithms.values()) {
                info.version = loaded[described.index].version().into_owned();
            }
        }
        infos
    }

    /// Each loaded algorithm's current version and what it is serving through, if
    /// anything: the runner's health details (empty while loading).
    pub fn details(&self) -> Vec<crate::metrics::AlgorithmDetail> {
        let Some(loaded) = self.loaded.get() else {
            return Vec::new();
        };
        self.catalog
            .algorithms
            .values()
            .map(|described| {
                let algorithm = &loaded[described.index];
                crate::metrics::AlgorithmDetail {
                    algorithm: described.entry.name,
                    version: algorithm.version().into_owned(),
                    degraded: algorithm.degraded(),
                }
            })
            .collect()
    }
}

#[derive(Clone)]
pub(crate) struct RunnerService {
    pub state: Arc<RunnerState>,
}

#[tonic::async_trait]
impl Runner for RunnerService {
    async fn run(&self, request: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        let state = &*self.state;
        let (metadata, extensions, RunRequest { algorithm, payload }) = request.into_parts();
        let caller = Caller::of(&extensions);
        drop(extensions);
        let described = state.catalog.algorithms.get(algorithm.as_str());
        let span = server_span(described, &algorithm, &state.instance_id);
        plugworker_telemetry::propagation::continue_from_metadata(&span, &metadata);
        // Unknown names are not labels: a caller must not be able to grow the series set.
        let metrics = described.map(|described| {
            described
                .metrics
                .get_or_init(|| AlgorithmMetrics::new(&state.metrics, described.entry.name))
        });
        let in_flight = metrics.map(AlgorithmMetrics::in_flight);
        // Stamped by `deadline::StampArrival` as the headers came in: that one clock
        // read serves the queue time, the deadline and the duration metric alike.
        let received = deadline::arrived().unwrap_or_else(Instant::now);
        let deadline = deadline::deadline(&metadata, received);
        // Only the payload lives on into the run: a smaller future to move around.
        drop(metadata);
        let run = Run {
            requested: &algorithm,
            received,
            deadline,
            caller,
        };
        let outcome = run_traced(state, described, run, payload)
            .instrument(span.clone())
            .await;
        drop(in_flight);
        let (code, duration) = match &outcome {
            // From arrival to answer, as the response reports it: no second clock read.
            Ok(response) => (
                tonic::Code::Ok,
                Some(Duration::from_micros(
                    response.get_ref().queued_micros + response.get_ref().run_micros,
                )),
            ),
            Err(status) => (status.code(), None),
        };
        span.record("rpc.grpc.status_code", code as i32);
        if let Err(status) = &outcome {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", status.message());
        }
        if let Some(metrics) = metrics {
            metrics.answered(code, duration);
        }
        outcome
    }

    async fn list_algorithms(
        &self,
        _request: Request<ListAlgorithmsRequest>,
    ) -> Result<Response<ListAlgorithmsResponse>, Status> {
        Ok(Response::new(ListAlgorithmsResponse {
            algorithms: self.state.infos(),
            service_name: self.state.service_name.clone(),
            instance_id: self.state.instance_id.clone(),
        }))
    }
}

/// The SERVER span of the job's trace: a child of the controller's CLIENT span, whose
/// context arrives in the request metadata.
///
/// The OpenTelemetry attributes (kind, name, `rpc.*`, instance) are only set when spans
/// are exported: without an exporter the only reader of the span is the log layer, which
/// formats every field of every span it sees, and those six fields cost as much as the
/// rest of the span (docs/benchmarks.md, the runner hop under h2load). Log lines inside a
/// run carry the span with its algorithm at `debug` level; at the default `info` the span
/// is not created at all (the saving is measured in docs/benchmarks.md). An algorithm's
/// internal failure is logged with the algorithm named either way.
/// The span name is built once per algorithm, in the catalog.
fn server_span(described: Option<&Described>, requested: &str, instance_id: &str) -> tracing::Span {
    let algorithm = described.map_or(requested, |described| described.entry.name);
    if !plugworker_telemetry::traces_exported() {
        return tracing::debug_span!(
            "Run",
            plugworker.algorithm = %algorithm,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
    }
    let name = match described {
        Some(described) => Cow::Borrowed(described.span_name.as_str()),
        None => Cow::Owned(format!("Run {requested}")),
    };
    tracing::info_span!(
        "Run",
        otel.kind = "server",
        otel.name = %name,
        rpc.system = "grpc",
        rpc.service = "plugworker.runner.v1.Runner",
        rpc.method = "Run",
        plugworker.algorithm = %algorithm,
        plugworker.instance_id = %instance_id,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    )
}

/// The loading/draining gate: the algorithm ready to run, or why this runner will not
/// run it now (`UNAVAILABLE`: the controller retries on another instance).
fn gate<'a>(
    state: &'a RunnerState,
    described: &Described,
) -> Result<&'a Arc<dyn LoadedAlgorithm>, Status> {
    if state.draining.load(Ordering::Acquire) {
        return Err(Status::unavailable(
            "runner is shutting down; retry on another instance",
        ));
    }
    state
        .loaded
        .get()
        .and_then(|loaded| loaded.get(described.index))
        .ok_or_else(|| Status::unavailable("runner is still loading its algorithms"))
}

/// One call, as it arrived.
struct Run<'a> {
    /// The algorithm name as the caller gave it.
    requested: &'a str,
    received: Instant,
    /// When the kit answers `DEADLINE_EXCEEDED`, if the caller set a timeout.
    deadline: Option<Instant>,
    caller: Option<Caller>,
}

/// The run of one call.
async fn run_traced(
    state: &RunnerState,
    described: Option<&Described>,
    Run {
        requested,
        received,
        deadline,
        caller,
    }: Run<'_>,
    bytes: Vec<u8>,
) -> Result<Response<RunResponse>, Status> {
    let Some(described) = described else {
        return Err(Status::not_found(format!(
            "algorithm {requested:?} is not served by {} (it serves: {})",
            state.service_name,
            state.catalog.names().join(", ")
        )));
    };
    let algorithm = gate(state, described)?;

    let payload: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Status::invalid_argument(format!("payload is not valid JSON: {e}")))?;
    // The bytes are not needed past this point; an image's are not kept through its run.
    drop(bytes);
    let violations = violations(&described.validator, &payload);
    if !violations.is_empty() {
        return Err(Status::invalid_argument(format!(
            "payload violates the input schema of {}: {violations}",
            described.entry.name
        )));
    }

    let name = described.entry.name;
    let hold = RunHold::new(state.slots.acquire(deadline).await?, name);
    let started = Instant::now();
    if deadline.is_some_and(|deadline| started >= deadline) {
        // The caller is gone (or about to be): starting the work would only occupy
        // the slot for nobody.
        return Err(Status::deadline_exceeded(format!(
            "the deadline passed before {name} could start"
        )));
    }
    // The context shares the slot with every blocking task the run starts: if the
    // caller stops waiting (deadline, cancellation), `hold` goes, but the slot stays
    // taken until that work has ended.
    let context = RunContext::in_slot(name, deadline, hold.slot().clone(), caller);
    let run = algorithm.clone().run(payload, context);
    let outcome = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), run)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("{name} did not finish before the deadline"))
            })?,
        None => run.await,
    };
    hold.finish();
    let (result, reported) = outcome.map_err(|e| status_of(name, e))?;
    let algorithm_version = reported.unwrap_or_else(|| algorithm.version().into_owned());
    Ok(Response::new(RunResponse {
        result,
        algorithm_version,
        instance_id: state.instance_id.clone(),
        queued_micros: started.duration_since(received).as_micros() as u64,
        run_micros: started.elapsed().as_micros() as u64,
    }))
}

/// Every schema violation as `path: message`, joined; empty if the payload is valid.
/// Values are masked so a huge field does not end up in the status message.
fn violations(validator: &jsonschema::Validator, payload: &serde_json::Value) -> String {
    if validator.is_valid(payload) {
        return String::new();
    }
    let mut text = String::new();
    let mut count = 0;
    for error in validator.iter_errors(payload) {
        count += 1;
        if count > MAX_LISTED_VIOLATIONS {
            continue;
        }
        let path = error.instance_path().to_string();
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        let message: String = error
            .masked()
            .to_string()
            .chars()
            .take(MAX_VIOLATION_CHARS)
            .collect();
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "{path}: {message}");
    }
    if count > MAX_LISTED_VIOLATIONS {
        let _ = write!(text, "; and {} more", count - MAX_LISTED_VIOLATIONS);
    }
    text
}

fn status_of(algorithm: &str, error: RunError) -> Status {
    match error {
        RunError::InvalidInput(m) => Status::invalid_argument(m),
        RunError::Unprocessable(m) => Status::failed_precondition(m),
        RunError::Unavailable(m) => Status::unavailable(m),
        RunError::Internal(m) => {
            tracing::error!(algorithm, error = %m, "algorithm failed");
            Status::internal(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::AlgorithmEntry;
    use crate::metrics::{AlgorithmLabel, RunnerMetrics};
    use crate::test_algorithms::Twice;
    use crate::{Algorithm, LoadContext, LoadError};
    use prometheus_client::registry::Registry;

    struct Forever;

    impl Algorithm for Forever {
        type Input = f64;
        type Output = f64;
        const NAME: &'static str = "forever";
        const VERSION: &'static str = "1";
        const DESCRIPTION: &'static str = "Never answers.";
        fn load(_: &LoadContext) -> Result<Self, LoadError> {
            Ok(Self)
        }
        async fn run(&self, _: f64, _: &RunContext) -> Result<f64, RunError> {
            std::future::pending().await
        }
    }

    static TWICE: AlgorithmEntry = AlgorithmEntry::of::<Twice>();
    static FOREVER: AlgorithmEntry = AlgorithmEntry::of::<Forever>();

    fn service() -> (RunnerService, Registry) {
        service_of([&TWICE, &FOREVER])
    }

    fn service_of(
        entries: impl IntoIterator<Item = &'static AlgorithmEntry>,
    ) -> (RunnerService, Registry) {
        let catalog = Catalog::from_entries(entries).unwrap();
        let loaded = catalog.load_all(&LoadContext::new(".")).unwrap();
        let mut registry = Registry::default();
        let state = RunnerState {
            metrics: RunnerMetrics::new(&mut registry),
            catalog,
            service_name: "test".into(),
            instance_id: "test-1".into(),
            loaded: OnceLock::from(loaded),
            draining: false.into(),
            slots: RunSlots::new(4, 4),
        };
        let state = Arc::new(state);
        let weak = Arc::downgrade(&state);
        state.metrics.status.read_from(Box::new(move || {
            weak.upgrade().map(|s| s.details()).unwrap_or_default()
        }));
        (RunnerService { state }, registry)
    }

    /// Data "reloaded" by each run: the generation a run starts with is the one its result
    /// comes from; odd generations are degraded.
    static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    struct Reloading;

    impl Algorithm for Reloading {
        type Input = f64;
        type Output = f64;
        const NAME: &'static str = "reloading";
        const VERSION: &'static str = "2";
        const DESCRIPTION: &'static str = "Reloads its data during every run.";
        fn load(_: &LoadContext) -> Result<Self, LoadError> {
            Ok(Self)
        }
        async fn run(&self, input: f64, context: &RunContext) -> Result<f64, RunError> {
            let generation = GENERATION.fetch_add(1, Ordering::SeqCst);
            context.report_version(format!("2+data.{generation}"));
            Ok(input)
        }
        fn version(&self) -> Cow<'_, str> {
            Cow::Owned(format!("2+data.{}", GENERATION.load(Ordering::SeqCst)))
        }
        fn degraded(&self) -> Option<String> {
            (GENERATION.load(Ordering::SeqCst) % 2 == 1).then(|| "stale data".to_string())
        }
    }

    static RELOADING: AlgorithmEntry = AlgorithmEntry::of::<Reloading>();

    #[tokio::test]
    async fn results_carry_the_version_their_run_reported_and_listings_the_current_one() {
        let (service, registry) = service_of([&RELOADING]);
        let listed = |service: &RunnerService| {
            let service = service.clone();
            async move {
                service
                    .list_algorithms(Request::new(ListAlgorithmsRequest {}))
                    .await
                    .unwrap()
                    .into_inner()
                    .algorithms[0]
                    .version
                    .clone()
            }
        };
        assert_eq!(listed(&service).await, "2+data.0");
        let answer = service.run(call("reloading", "1")).await.unwrap();
        // The data changed during the run: the result still names what it came from.
        assert_eq!(answer.get_ref().algorithm_version, "2+data.0");
        assert_eq!(listed(&service).await, "2+data.1");

        let text = plugworker_telemetry::metrics::render(&registry);
        for line in [
            r#"plugworker_runner_algorithm_version_info{algorithm="reloading",version="2+data.1"} 1"#,
            r#"plugworker_runner_algorithm_degraded{algorithm="reloading"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        let details = service.state.details();
        assert_eq!(details[0].degraded.as_deref(), Some("stale data"));
        service.run(call("reloading", "1")).await.unwrap();
        assert_eq!(service.state.details()[0].degraded, None);
    }

    fn call(algorithm: &str, payload: &str) -> Request<RunRequest> {
        Request::new(RunRequest {
            algorithm: algorithm.into(),
            payload: payload.as_bytes().to_vec(),
        })
    }

    #[tokio::test]
    async fn runs_are_counted_by_algorithm_and_code_and_timed_when_ok() {
        let (service, registry) = service();
        for _ in 0..2 {
            let response = service.run(call("twice", "21")).await.unwrap();
            assert_eq!(response.get_ref().result, b"42.0");
        }
        let refused = service.run(call("twice", r#""not a number""#)).await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);
        let unknown = service.run(call("nobody", "1")).await;
        assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);

        let text = plugworker_telemetry::metrics::render(&registry);
        for line in [
            r#"plugworker_runner_runs_total{algorithm="twice",code="ok"} 2"#,
            r#"plugworker_runner_runs_total{algorithm="twice",code="invalid_argument"} 1"#,
            r#"plugworker_runner_run_duration_seconds_count{algorithm="twice"} 2"#,
            r#"plugworker_runner_runs_in_flight{algorithm="twice"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(
            !text.contains("nobody"),
            "unknown names are not labels:\n{text}"
        );
        assert!(
            !text.contains(r#"code="not_found""#),
            "only codes that happened to a served algorithm are series:\n{text}"
        );
    }

    #[tokio::test]
    async fn a_run_whose_caller_went_away_is_no_longer_in_flight() {
        let (service, _registry) = service();
        let in_flight = service
            .state
            .metrics
            .in_flight
            .get_or_create(&AlgorithmLabel {
                algorithm: "forever",
            })
            .clone();
        let mut run = Box::pin(service.run(call("forever", "1")));
        tokio::select! {
            _ = &mut run => panic!("forever never answers"),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        assert_eq!(in_flight.get(), 1, "the run is in progress");
        // What a caller's cancellation or a transport deadline does: drop the call.
        drop(run);
        assert_eq!(in_flight.get(), 0, "the dropped run is not counted forever");
        assert_eq!(service.state.slots.in_flight(), 0, "and its slot is back");
    }
}
