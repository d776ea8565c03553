//! The HTTP API: routing, query parameters, blocking queries, Consul's response headers
//! and Consul's error answers (status and text, from `agent/*_endpoint.go`).

use crate::acl::{Access, Authz, Resource, Scope};
use crate::decode::{self, ServiceDefinition};
use crate::go;
use crate::store::{RegisterError, Shared, Status, Store, TtlUpdateError, truncate_output};
use crate::{checks, views};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use plugworker_consul_client::duration;
use rand::Rng;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

type AppState = Arc<Shared>;

/// Consul's default and maximum `wait` for blocking queries.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul's default `kv_max_value_size`.
const KV_MAX_VALUE_SIZE: usize = 512 * 1024;
/// Consul's limit on a check update's output (`CheckBufSize`).
const CHECK_BUF_SIZE: i64 = 4 * 1024;

pub(crate) fn router(shared: AppState) -> Router {
    Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/agent/members", get(agent_members))
        .route("/v1/agent/service/register", put(register))
        .route("/v1/agent/service/deregister/{id}", put(deregister))
        .route("/v1/agent/service/{id}", get(agent_service))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/checks", get(agent_checks))
        .route(
            "/v1/agent/check/pass/{id}",
            put(
                |s: State<AppState>, a: Extension<Authz>, p: Path<String>, q: RawQuery| {
                    check_ttl(s, a, p, q, Status::Passing)
                },
            ),
        )
        .route(
            "/v1/agent/check/warn/{id}",
            put(
                |s: State<AppState>, a: Extension<Authz>, p: Path<String>, q: RawQuery| {
                    check_ttl(s, a, p, q, Status::Warning)
                },
            ),
        )
        .route(
            "/v1/agent/check/fail/{id}",
            put(
                |s: State<AppState>, a: Extension<Authz>, p: Path<String>, q: RawQuery| {
                    check_ttl(s, a, p, q, Status::Critical)
                },
            ),
        )
        .route("/v1/agent/check/update/{id}", put(check_update))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/catalog/service/{name}", get(catalog_service))
        .route("/v1/catalog/nodes", get(catalog_nodes))
        .route("/v1/catalog/node/{node}", get(catalog_node))
        .route("/v1/health/service/{name}", get(health_service))
        .route("/v1/health/checks/{service}", get(health_checks))
        .route("/v1/health/state/{state}", get(health_state))
        .route("/v1/health/node/{node}", get(health_node))
        .route("/v1/status/leader", get(leader))
        .route("/v1/status/peers", get(peers))
        .route("/v1/kv/", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .merge(crate::connect_http::routes())
        .merge(crate::acl_http::routes())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::acl_http::resolve_token,
        ))
        .with_state(shared)
}

/// An error answered the way Consul does: a status and a plain-text reason.
pub(crate) struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, message.into())
}

/// Consul answers plain Go errors (not `HTTPError`s) with a 500 and the error text.
pub(crate) fn internal(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, message.into())
}

/// The query string, read like Go's `url.Values`: `get` is the first value, `has` is
/// presence (Consul's bare flags: `?recurse`, `?raw`, `?passing`).
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn new(raw: Option<String>) -> Self {
        let raw = raw.unwrap_or_default();
        Self(
            url::form_urlencoded::parse(raw.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    pub(crate) fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Go's `Values.Encode`: sorted by key.
    fn encode(&self) -> String {
        let mut pairs = self.0.clone();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    }

    /// `?passing`, `?passing=true` ... as `getBoolQueryParam` reads it.
    pub(crate) fn bool_flag(&self, key: &str) -> Option<bool> {
        if !self.has(key) {
            return Some(false);
        }
        match self.get(key).unwrap_or_default() {
            "" => Some(true),
            value => go::parse_bool(value),
        }
    }

    /// The registry has no bexpr engine; refusing beats answering unfiltered data.
    pub(crate) fn refuse_filter(&self) -> Result<(), ApiError> {
        match self.get("filter") {
            Some(filter) if !filter.is_empty() => Err(bad_request(
                "?filter expressions are not supported by the embedded registry",
            )),
            _ => Ok(()),
        }
    }
}

/// `index` and `wait` of a blocking query (Consul's `parseWait`), and `dc`.
pub(crate) struct Blocking {
    pub index: u64,
    pub wait: Duration,
}

impl Blocking {
    /// The start of a blocking read: `?filter` is refused ([`Query::refuse_filter`]),
    /// then `dc`, `index` and `wait` are parsed; the query is handed back for the rest.
    pub(crate) fn for_read(
        shared: &Shared,
        raw: Option<String>,
    ) -> Result<(Query, Self), ApiError> {
        let query = Query::new(raw);
        query.refuse_filter()?;
        let blocking = Blocking::parse(shared, &query)?;
        Ok((query, blocking))
    }

    pub(crate) fn parse(shared: &Shared, query: &Query) -> Result<Self, ApiError> {
        if let Some(dc) = query.get("dc")
            && !dc.is_empty()
            && dc != shared.config.datacenter
        {
            return Err(internal("No path to datacenter"));
        }
        let mut blocking = Blocking {
            index: 0,
            wait: DEFAULT_WAIT,
        };
        if let Some(wait) = query.get("wait").filter(|w| !w.is_empty()) {
            let nanos =
                duration::parse_nanos(wait).map_err(|_| bad_request("Invalid wait time"))?;
            if nanos > 0 {
                blocking.wait = crate::store::nanos(nanos).min(MAX_WAIT);
            }
        }
        if let Some(index) = query.get("index").filter(|i| !i.is_empty()) {
            blocking.index = index.parse().map_err(|_| bad_request("Invalid index"))?;
        }
        Ok(blocking)
    }

    /// Runs `read` now and, for a blocking query, again after each change until its
    /// index passes the client's or the wait (plus Consul's up-to-1/16 jitter) runs out.
    pub(crate) async fn run<T>(
        &self,
        shared: &Shared,
        read: impl Fn(&Store) -> (T, u64),
    ) -> (T, u64) {
        self.run_with(shared, || read(&shared.lock())).await
    }

    /// [`Blocking::run`] over any state that announces changes through `shared.notify`.
    pub(crate) async fn run_with<T>(
        &self,
        shared: &Shared,
        read: impl Fn() -> (T, u64),
    ) -> (T, u64) {
        let mut changes = shared.changes.subscribe();
        let (mut value, mut index) = read();
        if self.index > 0 && index <= self.index {
            let jitter = rand::rng().random_range(Duration::ZERO..=self.wait / 16);
            let deadline = tokio::time::Instant::now() + self.wait + jitter;
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() { break; }
                        (value, index) = read();
                        if index > self.index { break; }
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        (value, index.max(1))
    }
}

pub(crate) fn index_headers(index: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    headers
}

pub(crate) fn with_index(body: impl IntoResponse, index: u64) -> Response {
    (index_headers(index), body).into_response()
}

/// Refuses with Consul's `403 Permission denied: ...` unless `authz` grants `access`.
pub(crate) fn require(
    authz: &Authz,
    resource: Resource,
    name: &str,
    access: Access,
) -> Result<(), ApiError> {
    if authz.allows(resource, name, access) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            authz.denied(resource, name, access),
        ))
    }
}

pub(crate) fn require_scope(authz: &Authz, scope: Scope, access: Access) -> Result<(), ApiError> {
    if authz.allows_scope(scope, access) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            authz.denied_scope(scope, access),
        ))
    }
}

/// A view some of whose items the token could not read: Consul drops them and says so
/// with `X-Consul-Results-Filtered-By-ACLs: true`.
pub(crate) fn with_index_filtered(body: impl IntoResponse, index: u64, filtered: bool) -> Response {
    let mut headers = index_headers(index);
    if filtered {
        headers.insert(
            "X-Consul-Results-Filtered-By-ACLs",
            HeaderValue::from_static("true"),
        );
    }
    (headers, body).into_response()
}

/// `items` without those `keep` refuses, and whether any were dropped.
pub(crate) fn filter_items<T>(items: Vec<T>, keep: impl Fn(&T) -> bool) -> (Vec<T>, bool) {
    let before = items.len();
    let kept: Vec<T> = items.into_iter().filter(|i| keep(i)).collect();
    let filtered = kept.len() != before;
    (kept, filtered)
}

// ---------------------------------------------------------------- agent

async fn agent_self(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
) -> Result<Response, ApiError> {
    require(
        &authz,
        Resource::Agent,
        &shared.config.node_name,
        Access::Read,
    )?;
    let store = shared.lock();
    let config = &shared.config;
    let services = store.services().filter(|r| r.local).count();
    Ok(Json(json!({
        "Config": {
            "Datacenter": config.datacenter,
            "PrimaryDatacenter": config.datacenter,
            "NodeName": config.node_name,
            "NodeID": shared.node_id,
            "Revision": format!("plugworker-embedded-consul-{}", env!("CARGO_PKG_VERSION")),
            "Server": true,
            "Version": crate::CONSUL_API_VERSION,
            "BuildDate": "1970-01-01T00:00:00Z",
        },
        "DebugConfig": {
            "Datacenter": config.datacenter,
            "NodeName": config.node_name,
            "NodeID": shared.node_id,
            "DevMode": true,
            "ServerMode": true,
            "ACLsEnabled": shared.acl().enabled,
            "AdvertiseAddrLAN": config.node_address,
        },
        "Coord": {"Vec": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "Error": 1.5, "Adjustment": 0.0, "Height": 1e-5},
        "Member": views::member(&shared, false),
        "Stats": {
            "agent": {
                "check_monitors": "0",
                "check_ttls": store.checks.values().filter(|c| c.definition.ttl > 0).count().to_string(),
                "checks": store.local_check_count().to_string(),
                "services": services.to_string(),
            },
            "consul": {
                "bootstrap": "false",
                "known_datacenters": "1",
                "leader": "true",
                "leader_addr": format!("{}:8300", config.node_address),
                "server": "true",
            },
        },
        "Meta": {"consul-network-segment": "", "consul-version": crate::CONSUL_API_VERSION},
    }))
    .into_response())
}

async fn agent_members(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if !authz.allows(Resource::Node, &shared.config.node_name, Access::Read) {
        return Ok(with_filtered_header(Json(json!([])), true));
    }
    let query = Query::new(query);
    query.refuse_filter()?;
    let wan = query.get("wan").is_some_and(|w| !w.is_empty());
    let segment = query.get("segment").unwrap_or_default();
    if wan && !matches!(segment, "" | "_all") {
        return Err(bad_request("Cannot provide a segment with wan=true"));
    }
    Ok(Json(json!([views::member(&shared, wan)])).into_response())
}

/// `PUT /v1/agent/service/register`, validated in Consul's order with Consul's answers.
async fn register(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let query = Query::new(query);
    let def = decode::service_definition(&body)
        .map_err(|e| bad_request(format!("Request decode failed: {e}")))?;
    validate_registration(&def)?;
    // Consul's `vetServiceRegister`: write on the new name and, when the ID exists,
    // on the name registered under it, so no token can take over another's instance.
    require(&authz, Resource::Service, &def.name, Access::Write)?;
    let id = if def.id.is_empty() {
        &def.name
    } else {
        &def.id
    };
    let existing = shared.lock().service(id).map(|r| r.service.name.clone());
    if let Some(existing) = existing {
        require(&authz, Resource::Service, &existing, Access::Write)?;
    }
    let replace = query.has("replace-existing-checks")
        && matches!(
            query.get("replace-existing-checks").unwrap_or_default(),
            "" | "true"
        );
    let name = def.name.clone();
    let (index, new_checks) =
        shared
            .lock()
            .register(def, replace)
            .map_err(|error| match error {
                RegisterError::Unsupported(message) => bad_request(message),
                RegisterError::Internal(message) => internal(message),
            })?;
    checks::start(&shared, new_checks);
    if let Some(index) = index {
        shared.notify(index);
    }
    tracing::info!(service = name, "service registered");
    Ok(StatusCode::OK.into_response())
}

fn validate_registration(def: &ServiceDefinition) -> Result<(), ApiError> {
    if def.name.is_empty() {
        return Err(bad_request("Missing service name"));
    }
    if go::is_any_address(&def.address) {
        return Err(bad_request("Invalid service address"));
    }
    if let Some(weights) = def.weights {
        let problem = if weights.passing < 1 {
            Some("Passing must be greater than 0")
        } else if weights.warning < 0 {
            Some("Warning must be greater or equal than 0")
        } else if weights.passing > 65535 || weights.warning > 65535 {
            Some("DNS Weight must be between 0 and 65535")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(bad_request(format!("Invalid Weights: {problem}")));
        }
    }
    if let Some(meta) = &def.meta {
        validate_meta(meta).map_err(|e| bad_request(format!("Invalid Service Meta: {e}")))?;
    }
    let checks = (!def.check.is_empty())
        .then_some(&def.check)
        .into_iter()
        .chain(def.checks.iter());
    for check in checks.clone() {
        check
            .validate()
            .map_err(|e| bad_request(format!("Invalid check: {e}")))?;
    }
    for check in checks {
        if !check.status.is_empty() && Status::parse(&check.status).is_none() {
            return Err(bad_request(
                "Status for checks must 'passing', 'warning', 'critical'",
            ));
        }
    }
    // The agent's own validation, answered as a plain error (500) by Consul.
    for (key, family) in [
        ("lan_ipv4", 4),
        ("wan_ipv4", 4),
        ("lan_ipv6", 6),
        ("wan_ipv6", 6),
    ] {
        if let Some(tagged) = def.tagged_addresses.get(key) {
            let ok = match tagged.address.parse::<std::net::IpAddr>() {
                Ok(ip) => ip.is_ipv4() == (family == 4),
                Err(_) => false,
            };
            if !ok {
                return Err(internal(format!(
                    "Service tagged address {key:?} must be a valid ipv{family} address"
                )));
            }
        }
    }
    Ok(())
}

/// Consul's `validateMetadata` (limits and messages of `agent/structs/structs.go`).
fn validate_meta(meta: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err("Node metadata cannot contain more than 64 key/value pairs".into());
    }
    for (key, value) in meta {
        let problem = if key.is_empty() {
            Some("Key cannot be blank".to_string())
        } else if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            Some("Key contains invalid characters".to_string())
        } else if key.len() > 128 {
            Some("Key is too long (limit: 128 characters)".to_string())
        } else if key.starts_with("consul-") {
            Some("Key prefix 'consul-' is reserved for internal use".to_string())
        } else if value.len() > 512 {
            Some("Value is too long (limit: 512 characters)".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!(
                "Couldn't load metadata pair ('{key}', '{value}'): {problem}"
            ));
        }
    }
    Ok(())
}

async fn deregister(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let existing = shared
        .lock()
        .service(&id)
        .filter(|r| r.local)
        .map(|r| r.service.name.clone());
    if let Some(name) = existing {
        require(&authz, Resource::Service, &name, Access::Write)?;
    }
    let index = shared.lock().deregister(&id).ok_or_else(|| {
        not_found(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        ))
    })?;
    shared.notify(index);
    tracing::info!(service_id = id, "service deregistered");
    Ok(StatusCode::OK.into_response())
}

/// FNV-1a over the view's canonical JSON: an opaque content hash, like Consul's.
fn content_hash(view: &serde_json::Map<String, Value>) -> String {
    let bytes = serde_json::to_vec(view).unwrap_or_default();
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("{hash:x}")
}

/// `GET /v1/agent/service/:id`: the service with its `ContentHash`; with `?hash=` the
/// request blocks until the content hash differs or `wait` runs out.
async fn agent_service(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let name = shared.lock().service(&id).map(|r| r.service.name.clone());
    if let Some(name) = name {
        require(&authz, Resource::Service, &name, Access::Read)?;
    }
    let query = Query::new(query);
    let blocking = Blocking::parse(&shared, &query)?;
    let hash = query.get("hash").unwrap_or_default().to_string();
    let read = |store: &Store| {
        store.service(&id).filter(|r| r.local).map(|record| {
            let mut view = views::agent_service(&shared, record);
            let hash = content_hash(&view);
            view.insert("ContentHash".into(), json!(hash));
            (hash, view)
        })
    };
    let mut changes = shared.changes.subscribe();
    let mut current = read(&shared.lock());
    if !hash.is_empty() {
        let jitter = rand::rng().random_range(Duration::ZERO..=blocking.wait / 16);
        let deadline = tokio::time::Instant::now() + blocking.wait + jitter;
        while current.as_ref().is_some_and(|(h, _)| *h == hash) {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() { break; }
                    current = read(&shared.lock());
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    let (hash, view) = current.ok_or_else(|| not_found(format!("unknown service ID: {id}")))?;
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&hash) {
        headers.insert("X-Consul-ContentHash", value);
    }
    Ok((headers, Json(view)).into_response())
}

async fn agent_services(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Query::new(query).refuse_filter()?;
    let store = shared.lock();
    let (records, filtered) = filter_items(store.services().filter(|r| r.local).collect(), |r| {
        authz.allows(Resource::Service, &r.service.name, Access::Read)
    });
    let view: serde_json::Map<String, Value> = records
        .into_iter()
        .map(|r| {
            (
                r.service.id.clone(),
                Value::Object(views::agent_service(&shared, r)),
            )
        })
        .collect();
    Ok(with_filtered_header(Json(view), filtered))
}

fn with_filtered_header(body: impl IntoResponse, filtered: bool) -> Response {
    let mut response = body.into_response();
    if filtered {
        response.headers_mut().insert(
            "X-Consul-Results-Filtered-By-ACLs",
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// The service name a check belongs to ("" for node checks).
fn check_service_name(store: &Store, check: &crate::store::CheckRecord) -> String {
    store
        .service(&check.service_id)
        .map(|r| r.service.name.clone())
        .unwrap_or_default()
}

/// Consul's check filter: service checks need `service:read`, node checks `node:read`.
fn may_read_check(
    shared: &Shared,
    authz: &Authz,
    store: &Store,
    check: &crate::store::CheckRecord,
) -> bool {
    if check.service_id.is_empty() {
        authz.allows(Resource::Node, &shared.config.node_name, Access::Read)
    } else {
        authz.allows(
            Resource::Service,
            &check_service_name(store, check),
            Access::Read,
        )
    }
}

async fn agent_checks(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    Query::new(query).refuse_filter()?;
    let store = shared.lock();
    let (checks, filtered) = filter_items(store.checks.values().collect(), |c| {
        may_read_check(&shared, &authz, &store, c)
    });
    let view: serde_json::Map<String, Value> = checks
        .into_iter()
        .map(|c| {
            (
                c.check_id.clone(),
                views::health_check(&shared, &store, c, false),
            )
        })
        .collect();
    Ok(with_filtered_header(Json(view), filtered))
}

fn update_ttl(
    shared: &Shared,
    authz: &Authz,
    id: &str,
    status: Status,
    output: &str,
) -> Result<Response, ApiError> {
    // Updating a service's check needs write on the service (Consul's `vetCheckUpdate`).
    let service = {
        let store = shared.lock();
        store
            .checks
            .get(id)
            .map(|c| (c.service_id.is_empty(), check_service_name(&store, c)))
    };
    match service {
        Some((false, name)) => require(authz, Resource::Service, &name, Access::Write)?,
        Some((true, _)) => require(
            authz,
            Resource::Node,
            &shared.config.node_name,
            Access::Write,
        )?,
        None => {}
    }
    let changed = shared.lock().update_ttl_check(id, status, output).map_err(
        |error| match error {
            TtlUpdateError::Unknown => not_found(format!(
                "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
            )),
            TtlUpdateError::NotTtl => {
                internal(format!("CheckID {id:?} does not have associated TTL"))
            }
        },
    )?;
    if let Some(index) = changed {
        shared.notify(index);
    }
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/{pass,warn,fail}/:id?note=`: a TTL check's heartbeat.
async fn check_ttl(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    status: Status,
) -> Result<Response, ApiError> {
    let query = Query::new(query);
    update_ttl(
        &shared,
        &authz,
        &id,
        status,
        query.get("note").unwrap_or_default(),
    )
}

async fn check_update(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let update = decode::check_update(&body)
        .map_err(|e| bad_request(format!("Request decode failed: {e}")))?;
    let status = Status::parse(&update.status)
        .ok_or_else(|| bad_request(format!("Invalid check status: '{}'", update.status)))?;
    let output = truncate_output(&update.output, CHECK_BUF_SIZE);
    update_ttl(&shared, &authz, &id, status, &output)
}

// ---------------------------------------------------------------- catalog and health

async fn catalog_services(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (_, blocking) = Blocking::for_read(&shared, query)?;
    let (view, index) = blocking
        .run(&shared, |store| {
            let mut services: std::collections::BTreeMap<String, Vec<String>> =
                std::collections::BTreeMap::new();
            let mut filtered = false;
            for record in store.services() {
                if !authz.allows(Resource::Service, &record.service.name, Access::Read) {
                    filtered = true;
                    continue;
                }
                let tags = services.entry(record.service.name.clone()).or_default();
                for tag in &record.service.tags {
                    if !tags.contains(tag) {
                        tags.push(tag.clone());
                    }
                }
            }
            ((services, filtered), store.catalog_index())
        })
        .await;
    Ok(with_index_filtered(Json(view.0), index, view.1))
}

async fn catalog_service(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    catalog_service_view(shared, authz, name, query, false).await
}

/// Consul's ACL filter for service instances (catalog and health): `service:read` on the
/// service and `node:read` on its node.
fn may_read_instance(shared: &Shared, authz: &Authz, record: &crate::store::ServiceRecord) -> bool {
    authz.allows(Resource::Service, &record.service.name, Access::Read)
        && authz.allows(Resource::Node, &shared.config.node_name, Access::Read)
}

/// `/v1/catalog/service/:service` and its Connect variant (`connect`: Connect-native
/// instances only), under Consul's ACL filter for service nodes (`service:read` and
/// `node:read`), which Consul applies to both. `?tag=` filters the plain view only: Consul's
/// Connect lookup (`ConnectServiceNodes`) takes no tags and ignores them.
pub(crate) async fn catalog_service_view(
    shared: AppState,
    authz: Authz,
    name: String,
    query: Option<String>,
    connect: bool,
) -> Result<Response, ApiError> {
    let (query, blocking) = Blocking::for_read(&shared, query)?;
    let tags = if connect {
        Vec::new()
    } else {
        query.all("tag")
    };
    let (view, index) = blocking
        .run(&shared, |store| {
            let (records, filtered) = filter_items(
                store
                    .instances(&name, &tags)
                    .filter(|r| r.service.connect_native || !connect)
                    .collect(),
                |r| may_read_instance(&shared, &authz, r),
            );
            let view: Vec<Value> = records
                .into_iter()
                .map(|r| views::catalog_service(&shared, store, r))
                .collect();
            ((view, filtered), store.name_index(&name))
        })
        .await;
    Ok(with_index_filtered(Json(view.0), index, view.1))
}

async fn catalog_nodes(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (_, blocking) = Blocking::for_read(&shared, query)?;
    let (view, index) = blocking
        .run(&shared, |store| {
            let readable = authz.allows(Resource::Node, &shared.config.node_name, Access::Read);
            let nodes = if readable {
                vec![views::node(&shared, store)]
            } else {
                Vec::new()
            };
            ((nodes, !readable), store.node_index)
        })
        .await;
    Ok(with_index_filtered(Json(view.0), index, view.1))
}

/// `GET /v1/catalog/node/:node`: the node and its services, or `null` for another node.
async fn catalog_node(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(node): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (_, blocking) = Blocking::for_read(&shared, query)?;
    let (view, index) = blocking
        .run(&shared, |store| {
            let filtered;
            let view = if node == shared.config.node_name
                && authz.allows(Resource::Node, &node, Access::Read)
            {
                let (records, dropped) = filter_items(store.services().collect(), |r| {
                    authz.allows(Resource::Service, &r.service.name, Access::Read)
                });
                filtered = dropped;
                let services: serde_json::Map<String, Value> = records
                    .into_iter()
                    .map(|r| (r.service.id.clone(), views::node_service(r)))
                    .collect();
                json!({"Node": views::node(&shared, store), "Services": services})
            } else {
                filtered = node == shared.config.node_name;
                Value::Null
            };
            ((view, filtered), store.catalog_index())
        })
        .await;
    Ok(with_index_filtered(Json(view.0), index, view.1))
}

async fn health_service(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    health_service_view(shared, authz, name, query, false).await
}

/// `/v1/health/service/:service` and its Connect variant (`connect`: Connect-native
/// instances only): the health entries of the instances of `name`, under the same ACL
/// filter (`service:read` and `node:read`), as Consul runs one health query with one ACL
/// filter for both. `?tag=` filters the plain view only: for Connect, Consul's
/// `Health.ServiceNodes` picks `serviceNodesConnect`, which takes no tags, so they are
/// ignored.
pub(crate) async fn health_service_view(
    shared: AppState,
    authz: Authz,
    name: String,
    query: Option<String>,
    connect: bool,
) -> Result<Response, ApiError> {
    let (query, blocking) = Blocking::for_read(&shared, query)?;
    let passing_only = query
        .bool_flag("passing")
        .ok_or_else(|| bad_request("Invalid value for ?passing"))?;
    let tags = if connect {
        Vec::new()
    } else {
        query.all("tag")
    };
    let (view, index) = blocking
        .run(&shared, |store| {
            let (records, filtered) = filter_items(
                store
                    .instances(&name, &tags)
                    .filter(|r| r.service.connect_native || !connect)
                    .collect(),
                |r| may_read_instance(&shared, &authz, r),
            );
            let view: Vec<Value> = records
                .into_iter()
                .map(|r| views::health_entry(&shared, store, r))
                .filter(|(_, passing)| *passing || !passing_only)
                .map(|(entry, _)| entry)
                .collect();
            ((view, filtered), store.name_index(&name))
        })
        .await;
    Ok(with_index_filtered(Json(view.0), index, view.1))
}

/// Checks selected from the whole table, indexed by the checks table like Consul.
async fn health_checks_where(
    shared: AppState,
    authz: Authz,
    query: Option<String>,
    include_node_check: impl Fn(&Store) -> bool + Send + Sync,
    keep: impl Fn(&Store, &crate::store::CheckRecord) -> bool + Send + Sync,
) -> Result<Response, ApiError> {
    let (_, blocking) = Blocking::for_read(&shared, query)?;
    let (view, index) = blocking
        .run(&shared, |store| {
            let mut view = Vec::new();
            let mut filtered = false;
            if include_node_check(store) {
                if authz.allows(Resource::Node, &shared.config.node_name, Access::Read) {
                    view.push(views::serf_health(&shared, store));
                } else {
                    filtered = true;
                }
            }
            let (checks, dropped) = filter_items(
                store.checks.values().filter(|c| keep(store, c)).collect(),
                |c| may_read_check(&shared, &authz, store, c),
            );
            view.extend(
                checks
                    .into_iter()
                    .map(|c| views::health_check(&shared, store, c, true)),
            );
            ((view, filtered || dropped), store.checks_index())
        })
        .await;
    Ok(with_index_filtered(Json(view.0), index, view.1))
}

async fn health_checks(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(service): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    health_checks_where(
        shared,
        authz,
        query,
        |_| false,
        |store, check| {
            store
                .service(&check.service_id)
                .is_some_and(|r| r.service.name == service)
        },
    )
    .await
}

async fn health_state(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(state): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let wanted = state.clone();
    health_checks_where(
        shared,
        authz,
        query,
        move |_| matches!(wanted.as_str(), "any" | "passing"),
        move |_, check| state == "any" || check.status.as_str() == state,
    )
    .await
}

async fn health_node(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(node): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let ours = node == shared.config.node_name;
    health_checks_where(shared, authz, query, move |_| ours, move |_, _| ours).await
}

async fn leader(State(shared): State<AppState>) -> Response {
    Json(format!("{}:8300", shared.config.node_address)).into_response()
}

async fn peers(State(shared): State<AppState>) -> Response {
    Json(json!([format!("{}:8300", shared.config.node_address)])).into_response()
}

// ---------------------------------------------------------------- KV

fn kv_key(key: Option<Path<String>>) -> String {
    key.map(|Path(k)| k).unwrap_or_default()
}

/// `strconv.ParseUint` of a query value; Consul answers a bad one with a plain error (500).
fn parse_u64(query: &Query, key: &str) -> Result<Option<u64>, ApiError> {
    if !query.has(key) {
        return Ok(None);
    }
    let value = query.get(key).unwrap_or_default();
    value.parse().map(Some).map_err(|_| {
        internal(format!(
            "strconv.ParseUint: parsing {value:?}: invalid syntax"
        ))
    })
}

fn conflicting(query: &Query, flags: &[&str]) -> Result<(), ApiError> {
    if flags.iter().filter(|f| query.has(f)).count() > 1 {
        return Err(bad_request(format!(
            "Conflicting flags: {}",
            query.encode()
        )));
    }
    Ok(())
}

async fn kv_get(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    key: Option<Path<String>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let key = kv_key(key);
    let query = Query::new(query);
    let blocking = Blocking::parse(&shared, &query)?;
    if query.has("keys") {
        let separator = query
            .get("separator")
            .or_else(|| query.get("seperator"))
            .unwrap_or_default()
            .to_string();
        let (keys, index) = blocking
            .run(&shared, |store| store.kv_keys(&key, &separator))
            .await;
        let (keys, filtered) = filter_items(keys, |k| authz.allows(Resource::Key, k, Access::Read));
        if keys.is_empty() && !key.is_empty() {
            return Ok(with_index_filtered(StatusCode::NOT_FOUND, index, filtered));
        }
        return Ok(with_index_filtered(Json(keys), index, filtered));
    }
    if query.has("recurse") {
        let (entries, index) = blocking.run(&shared, |store| store.kv_list(&key)).await;
        let (entries, filtered) = filter_items(entries, |(k, _)| {
            authz.allows(Resource::Key, k, Access::Read)
        });
        if entries.is_empty() {
            return Ok(with_index_filtered(StatusCode::NOT_FOUND, index, filtered));
        }
        let view: Vec<Value> = entries.iter().map(|(k, e)| views::kv_entry(k, e)).collect();
        return Ok(with_index_filtered(Json(view), index, filtered));
    }
    if key.is_empty() {
        return Err(bad_request("Missing key name"));
    }
    require(&authz, Resource::Key, &key, Access::Read)?;
    let (entry, index) = blocking.run(&shared, |store| store.kv_get(&key)).await;
    let Some((key, entry)) = entry else {
        return Ok(with_index(StatusCode::NOT_FOUND, index));
    };
    if query.has("raw") {
        let mut headers = index_headers(index);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(
            "X-Content-Type-Options",
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            "Content-Security-Policy",
            HeaderValue::from_static("sandbox"),
        );
        return Ok((headers, entry.value).into_response());
    }
    Ok(with_index(
        Json(json!([views::kv_entry(&key, &entry)])),
        index,
    ))
}

async fn kv_put(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    key: Option<Path<String>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = kv_key(key);
    let query = Query::new(query);
    if let Some(dc) = query.get("dc")
        && !dc.is_empty()
        && dc != shared.config.datacenter
    {
        return Err(internal("No path to datacenter"));
    }
    if key.is_empty() {
        return Err(bad_request("Missing key name"));
    }
    conflicting(&query, &["cas", "acquire", "release"])?;
    require(&authz, Resource::Key, &key, Access::Write)?;
    let flags = parse_u64(&query, "flags")?.unwrap_or(0);
    let cas = parse_u64(&query, "cas")?;
    // Locks need sessions, which the registry does not have: every session ID is
    // unknown, and Consul answers an unknown one like this.
    for lock in ["acquire", "release"] {
        if query.has(lock) {
            return Err(internal(format!(
                "Invalid session {:?}",
                query.get(lock).unwrap_or_default()
            )));
        }
    }
    if body.len() > KV_MAX_VALUE_SIZE {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {KV_MAX_VALUE_SIZE} bytes. See https://www.consul.io/docs/agent/config/config-files#kv_max_value_size.",
                body.len()
            ),
        ));
    }
    let (written, index) = shared.lock().kv_put(&key, body.to_vec(), flags, cas);
    if let Some(index) = index {
        shared.notify(index);
    }
    Ok(Json(written).into_response())
}

async fn kv_delete(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    key: Option<Path<String>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let key = kv_key(key);
    let query = Query::new(query);
    if let Some(dc) = query.get("dc")
        && !dc.is_empty()
        && dc != shared.config.datacenter
    {
        return Err(internal("No path to datacenter"));
    }
    conflicting(&query, &["recurse", "cas"])?;
    // A recursive delete needs write on the prefix (Consul's `KeyWritePrefix`).
    require(&authz, Resource::Key, &key, Access::Write)?;
    if query.has("recurse") {
        let index = shared.lock().kv_delete_tree(&key);
        if let Some(index) = index {
            shared.notify(index);
        }
        return Ok(Json(true).into_response());
    }
    if key.is_empty() {
        return Err(bad_request("Missing key name"));
    }
    let cas = parse_u64(&query, "cas")?;
    let (deleted, index) = shared.lock().kv_delete(&key, cas);
    if let Some(index) = index {
        shared.notify(index);
    }
    Ok(Json(deleted).into_response())
}
