//! A fake Consul agent for the client's tests: an HTTP(S) server that answers the recorded
//! bodies in `tests/fixtures/` (see its README) the way an agent does (index headers,
//! `?passing`, blocking until `wait` runs out), and remembers every request it got.

#![allow(dead_code)]

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use plugworker_consul_client::config::settings;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::process::Command;

/// The `X-Consul-Index` every fixture answer carries.
pub const INDEX: u64 = 100;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A recorded body, or `None` when there is no such file.
pub fn fixture(name: &str) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures_dir().join(name)).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {name}: {e}")))
}

/// One request as the fake agent saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
}

#[derive(Clone, Default)]
pub struct Agent {
    /// Port to put in the runner's entry (the live runner the test started), if any.
    pub runner_port: Option<u16>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Agent {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The routes a real agent serves for what plugworker reads.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/catalog/services", get(catalog_services))
            .route("/v1/catalog/service/{name}", get(catalog_service))
            .route("/v1/health/service/{name}", get(health_service))
            .route("/v1/agent/services", get(agent_services))
            .route("/v1/status/leader", get(leader))
            .with_state(self.clone())
    }
}

type Params = Query<HashMap<String, String>>;

fn record(agent: &Agent, uri: &Uri, query: &HashMap<String, String>, headers: &HeaderMap) {
    agent.seen.lock().unwrap().push(Seen {
        path: uri.path().to_string(),
        query: query.clone(),
        headers: headers.clone(),
    });
}

/// Answers like an agent: the body with its index, after holding a blocking query whose
/// index is already current until its `wait` runs out (nothing ever changes here).
async fn answer(query: &HashMap<String, String>, body: serde_json::Value) -> Response {
    if let Some(index) = query.get("index").and_then(|i| i.parse::<u64>().ok())
        && index >= INDEX
    {
        let wait = query
            .get("wait")
            .and_then(|w| plugworker_consul_client::duration::parse(w).ok())
            .unwrap_or(Duration::from_secs(300));
        tokio::time::sleep(wait).await;
    }
    (
        StatusCode::OK,
        [
            ("Content-Type", "application/json"),
            ("X-Consul-Index", "100"),
            ("X-Consul-KnownLeader", "true"),
            ("X-Consul-LastContact", "0"),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn catalog_services(
    State(agent): State<Agent>,
    uri: Uri,
    Query(query): Params,
    headers: HeaderMap,
) -> Response {
    record(&agent, &uri, &query, &headers);
    answer(&query, fixture("catalog_services.json").unwrap()).await
}

async fn catalog_service(
    State(agent): State<Agent>,
    Path(name): Path<String>,
    uri: Uri,
    Query(query): Params,
    headers: HeaderMap,
) -> Response {
    record(&agent, &uri, &query, &headers);
    let body =
        fixture(&format!("catalog_service_{name}.json")).unwrap_or_else(|| serde_json::json!([]));
    answer(&query, body).await
}

async fn health_service(
    State(agent): State<Agent>,
    Path(name): Path<String>,
    uri: Uri,
    Query(query): Params,
    headers: HeaderMap,
) -> Response {
    record(&agent, &uri, &query, &headers);
    let mut entries =
        fixture(&format!("health_service_{name}.json")).unwrap_or_else(|| serde_json::json!([]));
    let list = entries.as_array_mut().expect("a health fixture is a list");
    if let Some(port) = agent.runner_port {
        for entry in list.iter_mut() {
            if entry["Service"]["Meta"]["plugworker_role"] == "runner" {
                entry["Service"]["Port"] = port.into();
            }
        }
    }
    // Consul's `?passing`: only entries whose every check passes.
    if query
        .get("passing")
        .is_some_and(|p| p.is_empty() || p == "true" || p == "1")
    {
        list.retain(|entry| {
            entry["Checks"]
                .as_array()
                .is_none_or(|checks| checks.iter().all(|c| c["Status"] == "passing"))
        });
    }
    answer(&query, entries).await
}

async fn agent_services(
    State(agent): State<Agent>,
    uri: Uri,
    Query(query): Params,
    headers: HeaderMap,
) -> Response {
    record(&agent, &uri, &query, &headers);
    answer(&query, fixture("agent_services.json").unwrap()).await
}

async fn leader(
    State(agent): State<Agent>,
    uri: Uri,
    Query(query): Params,
    headers: HeaderMap,
) -> Response {
    record(&agent, &uri, &query, &headers);
    answer(&query, serde_json::json!("10.0.1.10:8300")).await
}

/// Serves `router` over plain HTTP on an ephemeral loopback port.
pub async fn serve_http(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    address
}

/// The `plugworker` binary, with no Consul setting inherited from the environment running
/// the tests. Asynchronous, so the fake agent on the test's runtime keeps answering it.
pub fn plugworker() -> Command {
    let mut command = Command::new(plugworker_testkit::bin_path("plugworker"));
    for setting in settings::ALL {
        command.env_remove(setting.env);
    }
    command.env("RUST_LOG", "warn").kill_on_drop(true);
    command
}
