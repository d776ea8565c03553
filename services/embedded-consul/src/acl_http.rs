//! The ACL endpoints (`agent/acl_endpoint.go`) and the token resolution every request goes
//! through (`agent/http.go` `parseToken`).

use crate::acl::{
    ANONYMOUS_ACCESSOR_ID, Access, AclToken, Authz, MANAGEMENT_POLICY_ID, Policy, Scope,
    parse_rules,
};
use crate::http::{ApiError, Query, bad_request, internal, not_found};
use crate::store::Shared;
use axum::Extension;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Map, Value};
use std::sync::Arc;

type AppState = Arc<Shared>;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/acl/bootstrap", put(bootstrap))
        .route("/v1/acl/policy", put(policy_create))
        .route("/v1/acl/policies", get(policy_list))
        .route(
            "/v1/acl/policy/{id}",
            get(policy_read).put(policy_update).delete(policy_delete),
        )
        .route("/v1/acl/policy/name/{name}", get(policy_read_by_name))
        .route("/v1/acl/token", put(token_create))
        .route("/v1/acl/tokens", get(token_list))
        .route("/v1/acl/token/self", get(token_self))
        .route(
            "/v1/acl/token/{id}",
            get(token_read).put(token_update).delete(token_delete),
        )
}

/// The secret a request carries: `?token=`, then `X-Consul-Token`, then
/// `Authorization: Bearer`, as Consul reads them.
fn secret_of(headers: &HeaderMap, query: Option<&str>) -> String {
    let query = Query::new(query.map(str::to_string));
    if let Some(token) = query.get("token").filter(|t| !t.is_empty()) {
        return token.to_string();
    }
    if let Some(token) = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
    {
        return token.to_string();
    }
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let parts: Vec<&str> = value.split(' ').collect();
        if parts.len() == 2 && parts[0].eq_ignore_ascii_case("bearer") {
            return parts[1].trim().to_string();
        }
    }
    String::new()
}

/// Resolves the request's token into an [`Authz`] extension; an unknown secret is
/// refused with Consul's `403 ACL not found`.
pub(crate) async fn resolve_token(
    State(shared): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let secret = secret_of(request.headers(), request.uri().query());
    let authz = shared.acl().resolve(&secret);
    match authz {
        Some(authz) => {
            request.extensions_mut().insert(authz);
            next.run(request).await
        }
        None => (StatusCode::FORBIDDEN, "ACL not found").into_response(),
    }
}

fn require_enabled(shared: &Shared) -> Result<(), ApiError> {
    if shared.acl().enabled {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "ACL support disabled".into(),
        ))
    }
}

fn require_acl(shared: &Shared, authz: &Authz, access: Access) -> Result<(), ApiError> {
    require_enabled(shared)?;
    if authz.allows_scope(Scope::Acl, access) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::FORBIDDEN,
            authz.denied_scope(Scope::Acl, access),
        ))
    }
}

fn new_uuid() -> String {
    crate::connect::uuid(&mut rand::rng())
}

fn now() -> String {
    crate::connect::go_time(time::OffsetDateTime::now_utc())
}

/// A JSON object body, keys lowercased (Go's case-insensitive field matching); `known`
/// lists the accepted (lowercase) keys.
fn object(body: &[u8], known: &[&str]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("Request decode failed: {e}")))?;
    let Value::Object(map) = value else {
        return Err(bad_request("Request decode failed: expected an object"));
    };
    let mut out = Map::new();
    for (key, value) in map {
        let lower = key.to_ascii_lowercase();
        if !known.contains(&lower.as_str()) {
            return Err(bad_request(format!(
                "Request decode failed: json: unknown field {key:?}"
            )));
        }
        out.insert(lower, value);
    }
    Ok(out)
}

fn text(map: &Map<String, Value>, key: &str) -> String {
    map.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// `PUT /v1/acl/bootstrap`: the first management token. Allowed once (and not at all
/// when the registry was started with a bootstrap token: that token is the bootstrap).
async fn bootstrap(State(shared): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    require_enabled(&shared)?;
    let request = object(&body, &["bootstrapsecret"])?;
    let index = shared.next_index();
    let mut acl = shared.acl();
    if let Some(reset) = acl.bootstrapped_at {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("Permission denied: ACL bootstrap no longer allowed (reset index: {reset})"),
        ));
    }
    let secret = match text(&request, "bootstrapsecret") {
        s if s.is_empty() => new_uuid(),
        s => s,
    };
    let token = AclToken {
        accessor_id: new_uuid(),
        secret_id: secret,
        description: "Bootstrap Token (Global Management)".into(),
        policy_ids: vec![MANAGEMENT_POLICY_ID.into()],
        service_identities: Vec::new(),
        local: false,
        create_time: now(),
        create_index: index,
        modify_index: index,
    };
    acl.tokens.insert(token.accessor_id.clone(), token.clone());
    acl.bootstrapped_at = Some(index);
    acl.index = index;
    tracing::info!(accessor = token.accessor_id, "ACLs bootstrapped");
    Ok(Json(acl.token_view(&token)).into_response())
}

// ---------------------------------------------------------------- policies

const POLICY_FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "rules",
    "datacenters",
    "hash",
    "createindex",
    "modifyindex",
];

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn write_policy(shared: &Shared, id: Option<String>, body: &[u8]) -> Result<Response, ApiError> {
    let request = object(body, POLICY_FIELDS)?;
    let name = text(&request, "name");
    if !valid_name(&name) {
        return Err(internal("Invalid Policy: invalid Name"));
    }
    let rules_text = text(&request, "rules");
    let rules = parse_rules(&rules_text).map_err(|e| internal(format!("Invalid Policy: {e}")))?;
    let datacenters = request
        .get("datacenters")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let index = shared.next_index();
    let mut acl = shared.acl();
    let id = match id {
        Some(id) => {
            if id == MANAGEMENT_POLICY_ID {
                return Err(internal(
                    "Changing the Rules for the builtin global-management policy is not permitted",
                ));
            }
            if !acl.policies.contains_key(&id) {
                return Err(internal(format!("Cannot find policy {id}")));
            }
            id
        }
        None => new_uuid(),
    };
    if acl
        .policy_by_name(&name)
        .is_some_and(|existing| existing.id != id)
    {
        return Err(internal(format!(
            "Invalid Policy: A Policy with Name {name:?} already exists"
        )));
    }
    let create_index = acl.policies.get(&id).map_or(index, |p| p.create_index);
    let policy = Policy {
        id: id.clone(),
        name,
        description: text(&request, "description"),
        rules_text,
        rules,
        datacenters,
        create_index,
        modify_index: index,
    };
    acl.policies.insert(id, policy.clone());
    acl.index = index;
    Ok(Json(acl.policy_view(&policy, true)).into_response())
}

async fn policy_create(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Write)?;
    write_policy(&shared, None, &body)
}

async fn policy_update(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Write)?;
    write_policy(&shared, Some(id), &body)
}

async fn policy_read(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Read)?;
    let acl = shared.acl();
    let policy = acl
        .policies
        .get(&id)
        .ok_or_else(|| not_found("ACL policy not found"))?;
    Ok(crate::http::with_index(
        Json(acl.policy_view(policy, true)),
        acl.index,
    ))
}

async fn policy_read_by_name(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Read)?;
    let acl = shared.acl();
    let policy = acl
        .policy_by_name(&name)
        .ok_or_else(|| not_found("ACL policy not found"))?;
    Ok(crate::http::with_index(
        Json(acl.policy_view(policy, true)),
        acl.index,
    ))
}

async fn policy_list(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Read)?;
    let acl = shared.acl();
    let view: Vec<Value> = acl
        .policies
        .values()
        .map(|p| acl.policy_view(p, false))
        .collect();
    Ok(crate::http::with_index(Json(view), acl.index))
}

async fn policy_delete(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Write)?;
    if id == MANAGEMENT_POLICY_ID {
        return Err(internal(
            "Delete operation not permitted on the builtin global-management policy",
        ));
    }
    let index = shared.next_index();
    let mut acl = shared.acl();
    if acl.policies.remove(&id).is_some() {
        for token in acl.tokens.values_mut() {
            token.policy_ids.retain(|p| *p != id);
        }
        acl.index = index;
    }
    Ok(Json(true).into_response())
}

// ---------------------------------------------------------------- tokens

const TOKEN_FIELDS: &[&str] = &[
    "accessorid",
    "secretid",
    "description",
    "policies",
    "roles",
    "serviceidentities",
    "nodeidentities",
    "local",
    "createtime",
    "hash",
    "createindex",
    "modifyindex",
    "expirationtime",
    "expirationttl",
    "templatedpolicies",
];

/// Policy links (`[{"ID": ...} | {"Name": ...}]`) resolved to IDs.
fn policy_ids(acl: &crate::acl::Acl, links: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::new();
    for link in links.and_then(Value::as_array).into_iter().flatten() {
        let field = |key: &str| {
            link.as_object().and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .and_then(|(_, v)| v.as_str())
                    .filter(|v| !v.is_empty())
            })
        };
        let id = if let Some(id) = field("ID") {
            if !acl.policies.contains_key(id) {
                return Err(internal(format!("No such ACL policy with ID {id:?}")));
            }
            id.to_string()
        } else if let Some(name) = field("Name") {
            acl.policy_by_name(name)
                .ok_or_else(|| internal(format!("No such ACL policy with name {name:?}")))?
                .id
                .clone()
        } else {
            return Err(internal(
                "Invalid Token: Policy links must have an ID or Name",
            ));
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn service_identities(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for identity in value.and_then(Value::as_array).into_iter().flatten() {
        let name = identity
            .as_object()
            .and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("ServiceName"))
                    .and_then(|(_, v)| v.as_str())
            })
            .unwrap_or_default();
        if name.is_empty() {
            return Err(internal(
                "Invalid Token: Service identity is missing the service name field on this token",
            ));
        }
        out.push(name.to_string());
    }
    Ok(out)
}

fn write_token(
    shared: &Shared,
    accessor: Option<String>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let request = object(body, TOKEN_FIELDS)?;
    if request
        .get("roles")
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty())
        || request
            .get("nodeidentities")
            .and_then(Value::as_array)
            .is_some_and(|r| !r.is_empty())
        || request
            .get("templatedpolicies")
            .and_then(Value::as_array)
            .is_some_and(|r| !r.is_empty())
    {
        return Err(bad_request(
            "ACL roles, node identities and templated policies are not supported by the embedded registry",
        ));
    }
    let index = shared.next_index();
    let mut acl = shared.acl();
    let policy_ids = policy_ids(&acl, request.get("policies"))?;
    let service_identities = service_identities(request.get("serviceidentities"))?;
    let existing = match &accessor {
        Some(id) => Some(
            acl.tokens
                .get(id)
                .cloned()
                .ok_or_else(|| internal(format!("Cannot find token {id:?}")))?,
        ),
        None => None,
    };
    let accessor_id = match (&existing, text(&request, "accessorid")) {
        (Some(t), _) => t.accessor_id.clone(),
        (None, a) if !a.is_empty() => a,
        (None, _) => new_uuid(),
    };
    let secret_id = match (&existing, text(&request, "secretid")) {
        (Some(t), _) => t.secret_id.clone(),
        (None, s) if !s.is_empty() => s,
        (None, _) => new_uuid(),
    };
    if existing.is_none()
        && (acl.tokens.contains_key(&accessor_id) || acl.token_by_secret(&secret_id).is_some())
    {
        return Err(internal(
            "Invalid Token: AccessorID or SecretID already in use",
        ));
    }
    let token = AclToken {
        accessor_id: accessor_id.clone(),
        secret_id,
        description: text(&request, "description"),
        policy_ids,
        service_identities,
        local: request
            .get("local")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        create_time: existing
            .as_ref()
            .map_or_else(now, |t| t.create_time.clone()),
        create_index: existing.as_ref().map_or(index, |t| t.create_index),
        modify_index: index,
    };
    acl.tokens.insert(accessor_id, token.clone());
    acl.index = index;
    Ok(Json(acl.token_view(&token)).into_response())
}

async fn token_create(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Write)?;
    write_token(&shared, None, &body)
}

async fn token_update(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Write)?;
    write_token(&shared, Some(id), &body)
}

async fn token_read(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Read)?;
    let acl = shared.acl();
    let token = acl
        .tokens
        .get(&id)
        .ok_or_else(|| not_found("ACL token not found"))?;
    Ok(crate::http::with_index(
        Json(acl.token_view(token)),
        acl.index,
    ))
}

/// `GET /v1/acl/token/self`: the caller's own token, whatever its rules.
async fn token_self(
    State(shared): State<AppState>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    require_enabled(&shared)?;
    let secret = secret_of(&headers, query.as_deref());
    let acl = shared.acl();
    let token = if secret.is_empty() {
        acl.tokens.get(ANONYMOUS_ACCESSOR_ID)
    } else {
        acl.token_by_secret(&secret)
    }
    .ok_or_else(|| ApiError(StatusCode::FORBIDDEN, "ACL not found".into()))?;
    Ok(Json(acl.token_view(token)).into_response())
}

async fn token_list(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Read)?;
    let acl = shared.acl();
    let view: Vec<Value> = acl.tokens.values().map(|t| acl.token_view(t)).collect();
    Ok(crate::http::with_index(Json(view), acl.index))
}

async fn token_delete(
    State(shared): State<AppState>,
    Extension(authz): Extension<Authz>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_acl(&shared, &authz, Access::Write)?;
    if id == ANONYMOUS_ACCESSOR_ID {
        return Err(internal(
            "Delete operation not permitted on the anonymous token",
        ));
    }
    let index = shared.next_index();
    let mut acl = shared.acl();
    if acl.tokens.remove(&id).is_some() {
        acl.index = index;
    }
    Ok(Json(true).into_response())
}
