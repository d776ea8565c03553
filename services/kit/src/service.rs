//! The `plugworker.runner.v1.Runner` gRPC service: validation, bounded concurrency,
//! deadlines, and the mapping of failures to status codes.

use crate::algorithm::{LoadedAlgorithm, RunContext, RunError};
use crate::catalog::Catalog;
use crate::deadline;
use crate::metrics::{AlgorithmLabel, RunLabels, code_label};
use crate::slots::{RunHold, RunSlots};
use plugworker_rpc::runner::v1::runner_server::Runner;
use plugworker_rpc::runner::v1::{
    ListAlgorithmsRequest, ListAlgorithmsResponse, RunRequest, RunResponse,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
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
    /// Set once every algorithm has loaded.
    pub loaded: OnceLock<BTreeMap<&'static str, Arc<dyn LoadedAlgorithm>>>,
    pub draining: AtomicBool,
    pub slots: RunSlots,
    pub metrics: crate::metrics::RunnerMetrics,
}

#[derive(Clone)]
pub(crate) struct RunnerService {
    pub state: Arc<RunnerState>,
}

#[tonic::async_trait]
impl Runner for RunnerService {
    async fn run(&self, request: Request<RunRequest>) -> Result<Response<RunResponse>, Status> {
        // The SERVER span of the job's trace: a child of the controller's CLIENT span,
        // whose context arrives in the request metadata.
        let span = tracing::info_span!(
            "Run",
            otel.kind = "server",
            otel.name = %format!("Run {}", request.get_ref().algorithm),
            rpc.system = "grpc",
            rpc.service = "plugworker.runner.v1.Runner",
            rpc.method = "Run",
            plugworker.algorithm = %request.get_ref().algorithm,
            plugworker.instance_id = %self.state.instance_id,
            rpc.grpc.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        plugworker_telemetry::propagation::continue_from_metadata(&span, request.metadata());
        // Unknown names are not labels: a caller must not be able to grow the series set.
        let algorithm = self
            .state
            .catalog
            .algorithms
            .get(request.get_ref().algorithm.as_str())
            .map(|described| described.entry.name);
        let in_flight = algorithm.map(|algorithm| {
            let gauge = self
                .state
                .metrics
                .in_flight
                .get_or_create(&AlgorithmLabel { algorithm })
                .clone();
            gauge.inc();
            gauge
        });
        let started = Instant::now();
        let outcome = self.run_traced(request).instrument(span.clone()).await;
        let code = match &outcome {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        span.record("rpc.grpc.status_code", code as i32);
        if let Err(status) = &outcome {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", status.message());
        }
        if let (Some(algorithm), Some(in_flight)) = (algorithm, in_flight) {
            in_flight.dec();
            let metrics = &self.state.metrics;
            metrics
                .runs
                .get_or_create(&RunLabels {
                    algorithm,
                    code: code_label(code),
                })
                .inc();
            if outcome.is_ok() {
                metrics
                    .run_seconds
                    .get_or_create(&AlgorithmLabel { algorithm })
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        outcome
    }

    async fn list_algorithms(
        &self,
        _request: Request<ListAlgorithmsRequest>,
    ) -> Result<Response<ListAlgorithmsResponse>, Status> {
        Ok(Response::new(ListAlgorithmsResponse {
            algorithms: self.state.catalog.infos(),
            service_name: self.state.service_name.clone(),
            instance_id: self.state.instance_id.clone(),
        }))
    }
}

impl RunnerService {
    async fn run_traced(
        &self,
        request: Request<RunRequest>,
    ) -> Result<Response<RunResponse>, Status> {
        let received = request
            .extensions()
            .get::<deadline::ArrivedAt>()
            .map(|a| a.0)
            .unwrap_or_else(Instant::now);
        let deadline = deadline::deadline(request.metadata(), received);
        let request = request.into_inner();
        let state = &self.state;

        let Some(described) = state.catalog.algorithms.get(request.algorithm.as_str()) else {
            return Err(Status::not_found(format!(
                "algorithm {:?} is not served by {} (it serves: {})",
                request.algorithm,
                state.service_name,
                state.catalog.names().join(", ")
            )));
        };
        if state.draining.load(Ordering::Acquire) {
            return Err(Status::unavailable(
                "runner is shutting down; retry on another instance",
            ));
        }
        let Some(algorithm) = state.loaded.get().and_then(|l| l.get(described.entry.name)) else {
            return Err(Status::unavailable(
                "runner is still loading its algorithms",
            ));
        };

        let payload: serde_json::Value = serde_json::from_slice(&request.payload)
            .map_err(|e| Status::invalid_argument(format!("payload is not valid JSON: {e}")))?;
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
        let context = RunContext::in_slot(name, deadline, hold.slot().clone());
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
        let result = outcome.map_err(|e| status_of(described.entry.name, e))?;
        Ok(Response::new(RunResponse {
            result,
            algorithm_version: described.entry.version.to_string(),
            instance_id: state.instance_id.clone(),
            queued_micros: started.duration_since(received).as_micros() as u64,
            run_micros: started.elapsed().as_micros() as u64,
        }))
    }
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
