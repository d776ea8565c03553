//! The Connect endpoints: CA roots and configuration, leaf certificates, authorize,
//! `service-intentions` config entries, the legacy intentions API, and the Connect views
//! of the catalog and health (`/v1/catalog/connect/:service`, `/v1/health/connect/:service`).
//! Handlers and messages follow `agent/agent_endpoint.go`, `agent/connect_ca_endpoint.go`,
//! `agent/config_endpoint.go` and `agent/intentions_endpoint.go`.

use crate::acl::{Access, Authz, Resource, Scope};
use crate::connect::{self, Action, IntentionsEntry, Mesh, Source};
use crate::http::{
    ApiError, Blocking, Query, bad_request, filter_items, internal, not_found, require,
    require_scope, with_index, with_index_filtered,
};
use crate::store::Shared;
use axum::Extension;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use rand::Rng;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

type AppState = Arc<Shared>;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/agent/connect/ca/roots", get(ca_roots))
        .route("/v1/connect/ca/roots", get(ca_roots))
        .route("/v1/agent/connect/ca/leaf/{service}", get(ca_leaf))
        .route(
            "/v1/connect/ca/configuration",
            get(ca_configuration).put(ca_set_configuration),
        )
        .route("/v1/agent/connect/authorize", post(authorize))
        .route("/v1/config", put(config_apply))
        .route("/v1/config/{kind}", get(config_list))
        .route(
            "/v1/config/{kind}/{name}",
            get(config_get).delete(config_delete),
        )
        .route("/v1/connect/intentions", get(intentions_list))
        .route("/v1/connect/intentions/match", get(intentions_match))
        .route("/v1/connect/intentions/check", get(intentions_check))
        .route(
            "/v1/connect/intentions/exact",
            get(intention_exact_get)
                .put(intention_exact_put)
                .delete(intention_exact_delete),
        )
        .route("/v1/health/connect/{service}", get(health_connect))
        .route("/v1/catalog/connect/{service}", get(catalog_connect))
}

// ---------------------------------------------------------------- CA

async fn ca_roots(
    State(shared): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::new(query);
    let blocking = Blocking::parse(&shared, &query)?;
    let (view, index) = blocking
        .run_with(&shared, || {
            let mesh = shared.mesh();
            (mesh.roots_view(), mesh.roots_index)
        })
        .await;
    Ok(with_index(Json(view), index))
}

/// `GET /v1/agent/connect/ca/leaf/:service`: the service's leaf from the agent's cache,
/// issued or renewed as needed. With `?index=` it blocks until a leaf with a higher index
/// exists: the cached one is renewed (60–90 % of its lifetime) or the root rotates.
async fn ca_leaf(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(service): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    require(&authz, Resource::Service, &service, Access::Write)?;
    let query = Query::new(query);
    let blocking = Blocking::parse(&shared, &query)?;
    let jitter = rand::rng().random_range(Duration::ZERO..=blocking.wait / 16);
    let deadline = tokio::time::Instant::now() + blocking.wait + jitter;
    let mut changes = shared.changes.subscribe();
    loop {
        let leaf = current_or_new_leaf(&shared, &service)?;
        let renew_at = tokio::time::Instant::from_std(leaf.renew_at);
        if blocking.index == 0 || leaf.modify_index > blocking.index {
            return Ok(with_index(
                Json(connect::leaf_view(&leaf)),
                leaf.modify_index,
            ));
        }
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(with_index(Json(connect::leaf_view(&leaf)), leaf.modify_index));
                }
            }
            _ = tokio::time::sleep_until(renew_at.min(deadline)) => {
                if tokio::time::Instant::now() >= deadline {
                    return Ok(with_index(Json(connect::leaf_view(&leaf)), leaf.modify_index));
                }
            }
        }
    }
}

fn current_or_new_leaf(shared: &Shared, service: &str) -> Result<connect::Leaf, ApiError> {
    let now = std::time::Instant::now();
    if let Some(leaf) = shared.mesh().current_leaf(service, now) {
        return Ok(leaf.clone());
    }
    let index = shared.next_index();
    let mut mesh = shared.mesh();
    // Another request may have issued one meanwhile.
    if let Some(leaf) = mesh.current_leaf(service, now) {
        return Ok(leaf.clone());
    }
    let leaf = mesh
        .issue_leaf(service, index)
        .map_err(|e| internal(e.to_string()))?;
    tracing::info!(
        service,
        serial = leaf.serial,
        valid_before = %connect::go_time(leaf.valid_before),
        "issued Connect leaf certificate"
    );
    Ok(leaf)
}

fn ca_config_view(mesh: &Mesh) -> Value {
    json!({
        "Provider": "consul",
        "Config": {
            "IntermediateCertTTL": "8760h",
            "LeafCertTTL": plugworker_consul_client::duration::format(mesh.leaf_ttl),
            "PrivateKeyType": "ec",
            "PrivateKeyBits": 256,
            "RootCertTTL": "87600h",
        },
        "State": null,
        "ForceWithoutCrossSigning": false,
        "CreateIndex": mesh.config_create_index,
        "ModifyIndex": mesh.config_modify_index,
    })
}

async fn ca_configuration(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
) -> Result<Response, ApiError> {
    require_scope(&authz, Scope::Operator, Access::Read)?;
    let mesh = shared.mesh();
    let index = mesh.config_modify_index;
    Ok(with_index(Json(ca_config_view(&mesh)), index))
}

/// `PUT /v1/connect/ca/configuration` (`structs.CAConfiguration`): `Config.LeafCertTTL`
/// changes the lifetime of leaves issued from now on; `Config.PrivateKey` (an EC P-256
/// key in PEM) rotates the root: the new root signs every leaf from now on, leaves are
/// renewed at once, and the old root stays in `Roots`, inactive.
async fn ca_set_configuration(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_scope(&authz, Scope::Operator, Access::Write)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("Request decode failed: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad_request("Request decode failed: expected an object"))?;
    let mut provider = String::new();
    let mut config = Map::new();
    for (key, value) in object {
        match key.to_ascii_lowercase().as_str() {
            "provider" => provider = value.as_str().unwrap_or_default().to_string(),
            "config" => config = value.as_object().cloned().unwrap_or_default(),
            "forcewithoutcrosssigning" | "state" | "createindex" | "modifyindex" => {}
            _ => {
                return Err(bad_request(format!(
                    "Request decode failed: json: unknown field {key:?}"
                )));
            }
        }
    }
    if provider != "consul" {
        return Err(bad_request(format!(
            "CA provider {provider:?} is not supported by the embedded registry (only \"consul\")"
        )));
    }
    let mut leaf_ttl = None;
    let mut key = None;
    for (name, value) in &config {
        match name.to_ascii_lowercase().as_str() {
            "leafcertttl" | "leaf_cert_ttl" => {
                let text = value.as_str().unwrap_or_default();
                let nanos = plugworker_consul_client::duration::parse_nanos(text).map_err(|e| {
                    bad_request(format!("error parsing Consul CA config: LeafCertTTL: {e}"))
                })?;
                if nanos <= 0 {
                    return Err(bad_request("LeafCertTTL must be positive"));
                }
                leaf_ttl = Some(Duration::from_nanos(nanos as u64));
            }
            "privatekey" | "private_key" => {
                let pem = value.as_str().unwrap_or_default();
                if !pem.is_empty() {
                    let pair = Mesh::parse_key(pem).map_err(|e| bad_request(e.to_string()))?;
                    if pair.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
                        return Err(bad_request(
                            "the embedded registry's CA signs with EC P-256 keys only",
                        ));
                    }
                    key = Some(pair);
                }
            }
            // Accepted by Consul's provider; fixed in the embedded registry.
            _ => {}
        }
    }
    let index = shared.next_index();
    {
        let mut mesh = shared.mesh();
        if let Some(ttl) = leaf_ttl {
            mesh.leaf_ttl = ttl;
        }
        if let Some(key) = key {
            mesh.rotate(key, index)
                .map_err(|e| internal(e.to_string()))?;
            tracing::info!(root = mesh.active_root().id, "Connect CA root rotated");
        }
        mesh.config_modify_index = index;
    }
    shared.notify(index);
    Ok(StatusCode::OK.into_response())
}

// ---------------------------------------------------------------- authorize

/// `POST /v1/agent/connect/authorize` (`structs.ConnectAuthorizeRequest`).
async fn authorize(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = crate::decode::connect_authorize(&body)
        .map_err(|e| bad_request(format!("Request decode failed: {e}")))?;
    if request.target.is_empty() {
        return Err(bad_request("Target service must be specified"));
    }
    // Only the target itself may ask who may connect to it.
    require(&authz, Resource::Service, &request.target, Access::Write)?;
    if request.client_cert_uri.is_empty() {
        return Err(bad_request("Client URI must be specified"));
    }
    let client = match connect::parse_service_uri(&request.client_cert_uri) {
        Err(()) => {
            return Err(bad_request("ClientCertURI not a valid Connect identifier"));
        }
        Ok(None) => {
            return Err(bad_request("ClientCertURI not a valid Service identifier"));
        }
        Ok(Some(id)) => id,
    };
    let (authorized, reason) = decide(&shared, &authz, &client.service, &request.target);
    Ok(Json(json!({"Authorized": authorized, "Reason": reason})).into_response())
}

/// Whether intentions let `source` connect to `destination`, and why: the matching
/// intention of highest precedence, else the default intention policy, else the caller's
/// ACL default (Consul's `IntentionDefaultAllow`). One decision for the agent's authorize
/// endpoint and the intention check, as in Consul (`agent/consul/intention_endpoint.go`).
fn decide(shared: &Shared, authz: &Authz, source: &str, destination: &str) -> (bool, String) {
    let mesh = shared.mesh();
    match mesh.matching(source, destination) {
        Some((destination, source, _)) => (
            source.action == Action::Allow,
            format!(
                "Matched L4 intention: {}",
                connect::intention_string(&source.name, &destination, &source)
            ),
        ),
        None => match shared.config.default_intention_policy {
            Some(policy) => (
                policy == Action::Allow,
                "Default intention policy".to_string(),
            ),
            // `IntentionDefaultAllow` of the caller's authorizer: the ACL default
            // policy, or allow for "manage all" (ACLs off, management tokens).
            None => (
                authz.rules.is_none() || authz.default_allow,
                "Default behavior configured by ACLs".to_string(),
            ),
        },
    }
}

// ---------------------------------------------------------------- intentions

const INTENTIONS: &str = "service-intentions";

fn source_view(destination: &str, source: &Source) -> Value {
    let mut out = Map::new();
    out.insert("Name".into(), json!(source.name));
    out.insert("Action".into(), json!(source.action.as_str()));
    out.insert(
        "Precedence".into(),
        json!(connect::precedence(&source.name, destination)),
    );
    out.insert("Type".into(), json!("consul"));
    if !source.description.is_empty() {
        out.insert("Description".into(), json!(source.description));
    }
    Value::Object(out)
}

fn entry_view(name: &str, entry: &IntentionsEntry) -> Value {
    let mut out = Map::new();
    out.insert("Kind".into(), json!(INTENTIONS));
    out.insert("Name".into(), json!(name));
    out.insert(
        "Sources".into(),
        entry
            .sources
            .iter()
            .map(|s| source_view(name, s))
            .collect::<Vec<_>>()
            .into(),
    );
    if !entry.meta.is_empty() {
        out.insert("Meta".into(), json!(entry.meta));
    }
    out.insert("CreateIndex".into(), json!(entry.create_index));
    out.insert("ModifyIndex".into(), json!(entry.modify_index));
    Value::Object(out)
}

/// `structs.Intention` as the legacy API renders one source of an entry.
fn intention_view(destination: &str, entry: &IntentionsEntry, source: &Source) -> Value {
    json!({
        "Description": source.description,
        "SourceNS": "default",
        "SourceName": source.name,
        "DestinationNS": "default",
        "DestinationName": destination,
        "SourceType": "consul",
        "Action": source.action.as_str(),
        "Precedence": connect::precedence(&source.name, destination),
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    })
}

fn refuse_other_kinds(kind: &str) -> Result<(), ApiError> {
    if kind == INTENTIONS {
        return Ok(());
    }
    if crate::decode::CONFIG_ENTRY_KINDS.contains(&kind) {
        return Err(bad_request(format!(
            "config entry kind {kind:?} is not supported by the embedded registry (only {INTENTIONS:?})"
        )));
    }
    Err(bad_request(format!("invalid config entry kind: {kind}")))
}

/// Stores `sources` as the entry for `name` (or removes it when empty) and announces it.
fn put_entry(
    shared: &Shared,
    name: &str,
    sources: Vec<Source>,
    meta: Option<std::collections::BTreeMap<String, String>>,
) -> u64 {
    let index = shared.next_index();
    {
        let mut mesh = shared.mesh();
        if sources.is_empty() {
            mesh.intentions.remove(name);
        } else {
            let create_index = mesh.intentions.get(name).map_or(index, |e| e.create_index);
            let meta = meta
                .or_else(|| mesh.intentions.get(name).map(|e| e.meta.clone()))
                .unwrap_or_default();
            mesh.intentions.insert(
                name.to_string(),
                IntentionsEntry {
                    sources,
                    meta,
                    create_index,
                    modify_index: index,
                },
            );
        }
        mesh.intentions_index = index;
    }
    shared.notify(index);
    index
}

/// `PUT /v1/config`: applies a config entry (`service-intentions` only).
async fn config_apply(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let entry = crate::decode::config_entry(&body)
        .map_err(|e| bad_request(format!("Request decoding failed: {e}")))?;
    refuse_other_kinds(&entry.kind)?;
    require(&authz, Resource::Intention, &entry.name, Access::Write)?;
    if entry.name.is_empty() {
        return Err(internal("Name is required"));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut sources = Vec::new();
    for (i, source) in entry.sources.iter().enumerate() {
        if source.name.is_empty() {
            return Err(internal(format!("Sources[{i}].Name is required")));
        }
        if !seen.insert(source.name.clone()) {
            return Err(internal(format!(
                "Sources[{i}] defines {:?} more than once",
                source.name
            )));
        }
        if source.has_permissions {
            return Err(bad_request(
                "L7 intentions (Sources[].Permissions) are not supported by the embedded registry",
            ));
        }
        let action = Action::parse(&source.action).ok_or_else(|| {
            internal(format!(
                "Sources[{i}].Action must be set to 'allow' or 'deny'"
            ))
        })?;
        sources.push(Source {
            name: source.name.clone(),
            action,
            description: source.description.clone(),
        });
    }
    let name = entry.name.clone();
    put_entry(&shared, &name, sources, Some(entry.meta));
    tracing::info!(destination = name, "service-intentions entry applied");
    Ok(Json(true).into_response())
}

async fn config_list(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(kind): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    refuse_other_kinds(&kind)?;
    let (_, blocking) = Blocking::for_read(&shared, query)?;
    let (view, index) = blocking
        .run_with(&shared, || {
            let mesh = shared.mesh();
            let (entries, filtered) =
                filter_items(mesh.intentions.iter().collect(), |(name, _)| {
                    authz.allows(Resource::Intention, name, Access::Read)
                });
            let view: Vec<Value> = entries
                .into_iter()
                .map(|(name, entry)| entry_view(name, entry))
                .collect();
            ((view, filtered), mesh.intentions_index)
        })
        .await;
    Ok(with_index_filtered(Json(view.0), index, view.1))
}

async fn config_get(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path((kind, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    refuse_other_kinds(&kind)?;
    require(&authz, Resource::Intention, &name, Access::Read)?;
    let query = Query::new(query);
    let blocking = Blocking::parse(&shared, &query)?;
    let (view, index) = blocking
        .run_with(&shared, || {
            let mesh = shared.mesh();
            (
                mesh.intentions
                    .get(&name)
                    .map(|entry| entry_view(&name, entry)),
                mesh.intentions_index,
            )
        })
        .await;
    match view {
        Some(view) => Ok(with_index(Json(view), index)),
        None => Err(not_found(format!(
            "Config entry not found for {kind:?} / {name:?}"
        ))),
    }
}

async fn config_delete(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    refuse_other_kinds(&kind)?;
    require(&authz, Resource::Intention, &name, Access::Write)?;
    put_entry(&shared, &name, Vec::new(), None);
    Ok(Json(json!({})).into_response())
}

async fn intentions_list(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (_, blocking) = Blocking::for_read(&shared, query)?;
    let (view, index) = blocking
        .run_with(&shared, || {
            let mesh = shared.mesh();
            let mut view: Vec<(u32, Value)> = mesh
                .intentions
                .iter()
                .filter(|(name, _)| authz.allows(Resource::Intention, name, Access::Read))
                .flat_map(|(name, entry)| {
                    entry.sources.iter().map(move |s| {
                        (
                            connect::precedence(&s.name, name),
                            intention_view(name, entry, s),
                        )
                    })
                })
                .collect();
            view.sort_by_key(|v| std::cmp::Reverse(v.0));
            (
                view.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
                mesh.intentions_index,
            )
        })
        .await;
    Ok(with_index(Json(view), index))
}

/// `GET /v1/connect/intentions/match?by=source|destination&name=...`: the intentions that
/// apply to each name, highest precedence first.
async fn intentions_match(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::new(query);
    let by = match query.get("by") {
        None | Some("") => return Err(bad_request("required query parameter 'by' not set")),
        Some("source") => true,
        Some("destination") => false,
        Some(other) => {
            return Err(bad_request(format!(
                "'by' parameter must be one of 'source' or 'destination': {other}"
            )));
        }
    };
    let names = query.all("name");
    if names.is_empty() {
        return Err(bad_request("required query parameter 'name' not set"));
    }
    for name in &names {
        require(&authz, Resource::Intention, name, Access::Read)?;
    }
    let blocking = Blocking::parse(&shared, &query)?;
    let (view, index) = blocking
        .run_with(&shared, || {
            let mesh = shared.mesh();
            let mut out = Map::new();
            for wanted in &names {
                let mut found: Vec<(u32, Value)> = Vec::new();
                for (destination, entry) in &mesh.intentions {
                    for source in &entry.sources {
                        let this = if by { &source.name } else { destination };
                        if this == wanted || this == "*" {
                            found.push((
                                connect::precedence(&source.name, destination),
                                intention_view(destination, entry, source),
                            ));
                        }
                    }
                }
                found.sort_by_key(|f| std::cmp::Reverse(f.0));
                out.insert(
                    wanted.clone(),
                    found.into_iter().map(|(_, v)| v).collect::<Vec<_>>().into(),
                );
            }
            (Value::Object(out), mesh.intentions_index)
        })
        .await;
    Ok(with_index(Json(view), index))
}

/// `GET /v1/connect/intentions/check?source=&destination=`: `{"Allowed": bool}`, decided
/// as the agent's authorize endpoint decides. Consul asks only `service:read` on the
/// destination, since the answer reveals no intention.
async fn intentions_check(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (source, destination) = exact_names(&Query::new(query))?;
    require(&authz, Resource::Service, &destination, Access::Read)?;
    let (allowed, _) = decide(&shared, &authz, &source, &destination);
    Ok(Json(json!({ "Allowed": allowed })).into_response())
}

fn exact_names(query: &Query) -> Result<(String, String), ApiError> {
    let source = query.get("source").unwrap_or_default();
    let destination = query.get("destination").unwrap_or_default();
    if source.is_empty() {
        return Err(bad_request("required query parameter 'source' not set"));
    }
    if destination.is_empty() {
        return Err(bad_request(
            "required query parameter 'destination' not set",
        ));
    }
    Ok((source.to_string(), destination.to_string()))
}

async fn intention_exact_get(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (source, destination) = exact_names(&Query::new(query))?;
    require(&authz, Resource::Intention, &destination, Access::Read)?;
    let mesh = shared.mesh();
    let found = mesh.intentions.get(&destination).and_then(|entry| {
        entry
            .sources
            .iter()
            .find(|s| s.name == source)
            .map(|s| intention_view(&destination, entry, s))
    });
    let index = mesh.intentions_index.max(1);
    match found {
        Some(view) => Ok(with_index(Json(view), index)),
        None => Err(not_found("Intention not found")),
    }
}

/// `PUT /v1/connect/intentions/exact?source=&destination=` with `{"Action": ...}`:
/// upserts one source of the destination's `service-intentions` entry.
async fn intention_exact_put(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (source, destination) = exact_names(&Query::new(query))?;
    require(&authz, Resource::Intention, &destination, Access::Write)?;
    let request = crate::decode::intention(&body)
        .map_err(|e| bad_request(format!("Failed to decode request body: {e}")))?;
    let action = Action::parse(&request.action)
        .ok_or_else(|| internal("Action must be set to 'allow' or 'deny'"))?;
    let mut sources = shared
        .mesh()
        .intentions
        .get(&destination)
        .map(|e| e.sources.clone())
        .unwrap_or_default();
    let new = Source {
        name: source.clone(),
        action,
        description: request.description,
    };
    match sources.iter_mut().find(|s| s.name == source) {
        Some(existing) => *existing = new,
        None => sources.push(new),
    }
    put_entry(&shared, &destination, sources, None);
    Ok(Json(true).into_response())
}

async fn intention_exact_delete(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (source, destination) = exact_names(&Query::new(query))?;
    require(&authz, Resource::Intention, &destination, Access::Write)?;
    let sources: Vec<Source> = shared
        .mesh()
        .intentions
        .get(&destination)
        .map(|e| e.sources.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.name != source)
        .collect();
    put_entry(&shared, &destination, sources, None);
    Ok(Json(true).into_response())
}

// ---------------------------------------------------------------- Connect views

/// `GET /v1/health/connect/:service`: like `/v1/health/service/:service`, with the same ACL
/// filter, but only the instances that accept Connect (here: Connect-native ones; the
/// registry has no proxies). `?tag=` is ignored, as Consul ignores it there.
async fn health_connect(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    crate::http::health_service_view(shared, authz, name, query, true).await
}

/// `GET /v1/catalog/connect/:service`: `/v1/catalog/service/:service` restricted to the
/// Connect-native instances.
async fn catalog_connect(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    crate::http::catalog_service_view(shared, authz, name, query, true).await
}
