//! The HTTP API: routing, query parameters, blocking queries and Consul's response headers.

use crate::checks;
use crate::keys;
use crate::store::{Shared, Store};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use plugworker_discovery::{CheckStatus, ServiceRegistration, duration};
use rand::Rng;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

type AppState = Arc<Shared>;

/// Consul's default and maximum `wait` for blocking queries.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

pub(crate) fn router(shared: AppState) -> Router {
    Router::new()
        .route("/v1/agent/service/register", put(register))
        .route("/v1/agent/service/deregister/{id}", put(deregister))
        .route("/v1/agent/service/{id}", get(agent_service))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/checks", get(agent_checks))
        .route(
            "/v1/agent/check/pass/{id}",
            put(
                |State(s): State<AppState>, Path(id): Path<String>, RawQuery(q): RawQuery| {
                    check_ttl(s, id, q, CheckStatus::Passing)
                },
            ),
        )
        .route(
            "/v1/agent/check/warn/{id}",
            put(
                |State(s): State<AppState>, Path(id): Path<String>, RawQuery(q): RawQuery| {
                    check_ttl(s, id, q, CheckStatus::Warning)
                },
            ),
        )
        .route(
            "/v1/agent/check/fail/{id}",
            put(
                |State(s): State<AppState>, Path(id): Path<String>, RawQuery(q): RawQuery| {
                    check_ttl(s, id, q, CheckStatus::Critical)
                },
            ),
        )
        .route("/v1/agent/check/update/{id}", put(check_update))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/status/leader", get(leader))
        .with_state(shared)
}

/// An error answered the way Consul does: a status and a plain-text reason.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// Query parameters, parsed by hand because Consul repeats `tag` and uses bare flags.
#[derive(Default)]
struct Params {
    index: u64,
    wait: Duration,
    tags: Vec<String>,
    passing: bool,
    note: String,
}

impl Params {
    fn parse(raw: Option<String>) -> Result<Self, ApiError> {
        let mut params = Params {
            wait: DEFAULT_WAIT,
            ..Default::default()
        };
        let raw = raw.unwrap_or_default();
        for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            match key.as_ref() {
                "index" => {
                    params.index = value
                        .parse()
                        .map_err(|_| bad_request(format!("Invalid index: {value:?}")))?
                }
                "wait" => {
                    params.wait = duration::parse(&value)
                        .map_err(|e| bad_request(format!("Invalid wait time: {e}")))?
                        .min(MAX_WAIT)
                }
                "tag" => params.tags.push(value.into_owned()),
                "passing" => params.passing = !matches!(value.as_ref(), "false" | "0"),
                "note" => params.note = value.into_owned(),
                _ => {}
            }
        }
        Ok(params)
    }
}

/// Runs `read` now and, for a blocking query, again after each change until its index
/// passes the client's or the wait (plus Consul's up-to-1/16 jitter) runs out.
async fn blocking<T: Serialize>(
    shared: &Shared,
    params: &Params,
    read: impl Fn(&Store) -> (T, u64),
) -> Response {
    let mut changes = shared.changes.subscribe();
    let (mut value, mut index) = read(&shared.lock());
    if params.index > 0 && index <= params.index {
        let jitter = rand::rng().random_range(Duration::ZERO..=params.wait / 16);
        let deadline = tokio::time::Instant::now() + params.wait + jitter;
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() { break; }
                    (value, index) = read(&shared.lock());
                    if index > params.index { break; }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    with_index(Json(value), index)
}

fn with_index(body: impl IntoResponse, index: u64) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    (headers, body).into_response()
}

/// A request body in PascalCase or snake_case (see [`keys`]), as Consul accepts both.
fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let decode_failed = |e: serde_json::Error| bad_request(format!("Request decode failed: {e}"));
    let value: serde_json::Value = serde_json::from_slice(body).map_err(decode_failed)?;
    serde_json::from_value(keys::normalize(value)).map_err(decode_failed)
}

async fn register(State(shared): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let registration: ServiceRegistration = decode_body(&body)?;
    let name = registration.name.clone();
    let (index, new_checks) = shared
        .lock()
        .register(registration, &shared.config)
        .map_err(bad_request)?;
    checks::start(&shared, new_checks);
    shared.notify(index);
    tracing::info!(service = name, "service registered");
    Ok(StatusCode::OK.into_response())
}

async fn deregister(
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let index = shared.lock().deregister(&id).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."),
        )
    })?;
    shared.notify(index);
    tracing::info!(service_id = id, "service deregistered");
    Ok(StatusCode::OK.into_response())
}

async fn agent_service(
    State(shared): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let service = shared
        .lock()
        .agent_service(&id)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("unknown service ID: {id}")))?;
    let index = service.modify_index;
    Ok(with_index(Json(service), index))
}

async fn agent_services(State(shared): State<AppState>) -> Response {
    Json(shared.lock().agent_services()).into_response()
}

async fn agent_checks(State(shared): State<AppState>) -> Response {
    Json(shared.lock().agent_checks()).into_response()
}

fn update_check(
    shared: &Shared,
    id: &str,
    status: CheckStatus,
    output: &str,
) -> Result<Response, ApiError> {
    let changed = shared
        .lock()
        .set_check_status(id, status, output)
        .map_err(|e| ApiError(StatusCode::NOT_FOUND, e))?;
    if let Some(index) = changed {
        shared.notify(index);
    }
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/{pass,warn,fail}/:id?note=`: a TTL check's heartbeat.
async fn check_ttl(
    shared: AppState,
    id: String,
    query: Option<String>,
    status: CheckStatus,
) -> Result<Response, ApiError> {
    let params = Params::parse(query)?;
    update_check(&shared, &id, status, &params.note)
}

async fn check_update(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Update {
        status: CheckStatus,
        #[serde(default)]
        output: String,
    }
    let update: Update = decode_body(&body)?;
    update_check(&shared, &id, update.status, &update.output)
}

async fn catalog_services(
    State(shared): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query)?;
    Ok(blocking(&shared, &params, |store| store.catalog_services()).await)
}

async fn catalog_service(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query)?;
    let node = shared.node();
    Ok(blocking(&shared, &params, |store| {
        store.catalog_service(&name, &params.tags, &node)
    })
    .await)
}

async fn health_service(
    State(shared): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query)?;
    let node = shared.node();
    Ok(blocking(&shared, &params, |store| {
        store.health_service(&name, &params.tags, params.passing, &node)
    })
    .await)
}

async fn leader(State(shared): State<AppState>) -> Response {
    Json(format!("{}:8300", shared.config.node_address)).into_response()
}
