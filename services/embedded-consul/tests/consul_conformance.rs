//! Conformance of the typed Consul client (`plugworker-consul-client`) and the embedded
//! registry with Consul's behaviour, as Consul's source defines it.
//!
//! By default the suite runs against an embedded registry started per test. Set
//! `CONSUL_HTTP_ADDR` (e.g. a `consul agent -dev` in Docker with `--network host`) to run
//! the same assertions against a real agent and confirm the stand-in is faithful. Checks
//! target servers this test starts on 127.0.0.1, so the agent must share the host network.
//!
//! Every test holds against a real, busy, shared agent and parallel runs: names and KV
//! prefixes are unique per test, raw request bodies use only spellings Consul's strict
//! decoder accepts, and no test expects an index to stay put where other registrations
//! may move it (the catalog's index is max(nodes, services); a service with no instances
//! reports the index of the last time any service lost its last instance). Indexes that
//! only this test can move (one KV key, one instance's `ModifyIndex`) are compared exactly.

use plugworker_consul_client::{
    CheckDefinition, CheckStatus, ConsulClient, ConsulConfig, QueryOptions, ServiceRegistration,
};
use plugworker_embedded_consul::{Registry, RegistryConfig, RunningRegistry};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic_health::ServingStatus;

/// The registry under test: an embedded one, or the real agent at `CONSUL_HTTP_ADDR`.
struct Target {
    client: ConsulClient,
    api: Api,
    embedded: Option<RunningRegistry>,
}

impl Target {
    fn is_real_consul(&self) -> bool {
        self.embedded.is_none()
    }

    /// The embedded registry, for [`parked`] (none against a real agent).
    fn registry(&self) -> Option<plugworker_embedded_consul::Registry> {
        self.embedded.as_ref().map(|r| r.registry().clone())
    }
}

/// Waits until a blocking query is parked at `registry`, so that the change a test makes
/// next wakes a held query instead of meeting a new one that would answer at once. A real
/// agent does not say how many queries it holds: there, a bounded 300 ms.
async fn parked(registry: Option<plugworker_embedded_consul::Registry>) {
    let Some(registry) = registry else {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry.parked_queries() == 0 {
        assert!(Instant::now() < deadline, "no blocking query was parked");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn target() -> Target {
    let (address, embedded) = match std::env::var("CONSUL_HTTP_ADDR") {
        Ok(address) => (address, None),
        Err(_) => {
            let registry = Registry::spawn("127.0.0.1:0", RegistryConfig::default())
                .await
                .unwrap();
            (registry.url(), Some(registry))
        }
    };
    let client = ConsulClient::new(ConsulConfig {
        address: address.clone(),
        token: std::env::var("CONSUL_HTTP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        ..Default::default()
    })
    .unwrap();
    let api = Api {
        base: client
            .base_url()
            .to_string()
            .trim_end_matches('/')
            .to_string(),
        http: reqwest::Client::new(),
    };
    Target {
        client,
        api,
        embedded,
    }
}

/// Raw HTTP against the agent: what any Consul tool sends, without our client in between.
struct Api {
    base: String,
    http: reqwest::Client,
}

/// A response: status, headers, body text.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn index(&self) -> u64 {
        self.headers
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-Consul-Index in {:?}", self.headers))
    }
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Ok(token) = std::env::var("CONSUL_HTTP_TOKEN") {
            request = request.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn put(&self, path: &str, body: impl Into<Vec<u8>>) -> Answer {
        self.send(reqwest::Method::PUT, path, Some(body.into()))
            .await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// `PUT /v1/agent/service/register` with a raw JSON body; panics unless it succeeds.
    async fn register(&self, body: Value) {
        let answer = self
            .put("/v1/agent/service/register", body.to_string())
            .await;
        assert_eq!(answer.status, 200, "{body}: {}", answer.body);
    }

    async fn deregister(&self, id: &str) {
        self.put(&format!("/v1/agent/service/deregister/{id}"), "")
            .await;
    }

    async fn agent_checks(&self) -> Value {
        self.get("/v1/agent/checks").await.json()
    }
}

/// A name no other test (or earlier run against a real agent) uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:06x}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (nanos ^ NEXT.fetch_add(7919, Ordering::Relaxed)) & 0xff_ffff
}

/// A `grpc.health.v1` server on `listener` whose status the test controls.
fn serve_health(listener: tokio::net::TcpListener) -> tonic_health::server::HealthReporter {
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    reporter
}

async fn health_server() -> (String, tonic_health::server::HealthReporter) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (address, serve_health(listener))
}

fn registration(
    id: &str,
    name: &str,
    tags: &[&str],
    check: Option<CheckDefinition>,
) -> ServiceRegistration {
    ServiceRegistration {
        id: id.into(),
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: "127.0.0.1".into(),
        port: 9000,
        meta: BTreeMap::from([("plugworker_role".into(), "runner".into())]),
        check,
        ..Default::default()
    }
}

async fn wait_for_status(
    client: &ConsulClient,
    name: &str,
    status: CheckStatus,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let (entries, _) = client
            .health_service(name, &[], false, QueryOptions::default())
            .await
            .unwrap();
        if entries
            .first()
            .is_some_and(|e| e.aggregated_status() == status)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {status}: {entries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the agent's view of one check until `done` holds for it.
async fn wait_for_check(
    api: &Api,
    check_id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let checks = api.agent_checks().await;
        let check = &checks[check_id];
        if done(check) {
            return check.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{check_id}: never {what}: {check}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn grpc_check_follows_the_served_status_and_passing_filters_on_it() {
    let target = target().await;
    let client = &target.client;
    let (address, health) = health_server().await;
    let name = unique("conf-grpc");
    let check = CheckDefinition {
        grpc: Some(address),
        interval: Some(Duration::from_secs(1)),
        timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    client
        .register_service(&registration(&name, &name, &["alpha"], Some(check)))
        .await
        .unwrap();

    // A new check starts critical; the probe turns it passing.
    wait_for_status(client, &name, CheckStatus::Passing, Duration::from_secs(10)).await;
    let (passing, _) = client
        .health_service(&name, &[], true, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(passing.len(), 1);
    let entry = &passing[0];
    assert_eq!(entry.service.id, name);
    assert_eq!(entry.service.tags, vec!["alpha"]);
    assert_eq!(
        entry
            .service
            .meta
            .get("plugworker_role")
            .map(String::as_str),
        Some("runner")
    );
    let service_check = entry
        .checks
        .iter()
        .find(|c| c.service_id == name)
        .expect("service check listed");
    assert_eq!(service_check.check_type, "grpc");
    assert_eq!(service_check.check_id, format!("service:{name}"));
    assert!(
        entry.checks.iter().any(|c| c.check_id == "serfHealth"),
        "node check included"
    );

    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    wait_for_status(
        client,
        &name,
        CheckStatus::Critical,
        Duration::from_secs(10),
    )
    .await;
    let (passing, _) = client
        .health_service(&name, &[], true, QueryOptions::default())
        .await
        .unwrap();
    assert!(passing.is_empty(), "?passing hides critical instances");
    let (all, _) = client
        .health_service(&name, &[], false, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        1,
        "without ?passing the instance is still listed"
    );

    client.deregister_service(&name).await.unwrap();
}

#[tokio::test]
async fn tag_filters_require_every_tag_and_catalog_lists_the_union() {
    let target = target().await;
    let client = &target.client;
    let name = unique("conf-tags");
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    client
        .register_service(&registration(&a, &name, &["ocr", "meme_classifier"], None))
        .await
        .unwrap();
    client
        .register_service(&registration(&b, &name, &["ocr"], None))
        .await
        .unwrap();

    let (both, _) = client
        .catalog_service(&name, &["ocr"], QueryOptions::default())
        .await
        .unwrap();
    let mut ids: Vec<_> = both.iter().map(|s| s.service_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec![a.clone(), b.clone()]);
    let (one, _) = client
        .catalog_service(&name, &["ocr", "meme_classifier"], QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(one.len(), 1, "repeated tag parameters must all match");
    assert_eq!(one[0].service_id, a);
    assert_eq!(one[0].service_port, 9000);
    let (none, _) = client
        .health_service(&name, &["nope"], false, QueryOptions::default())
        .await
        .unwrap();
    assert!(none.is_empty());

    let (services, _) = client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    let mut tags = services.get(&name).cloned().expect("service listed");
    tags.sort();
    assert_eq!(tags, vec!["meme_classifier", "ocr"]);
    assert!(services.contains_key("consul"), "Consul lists itself");

    client.deregister_service(&a).await.unwrap();
    client.deregister_service(&b).await.unwrap();
    let (services, _) = client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    assert!(
        !services.contains_key(&name),
        "a service with no instances leaves the catalog"
    );
}

/// Issue 11 item 4: Consul's `serviceTagFilter` lower-cases both sides.
#[tokio::test]
async fn tag_filters_ignore_case_on_health_and_catalog() {
    let target = target().await;
    let name = unique("conf-tagcase");
    target
        .client
        .register_service(&registration(
            &name,
            &name,
            &["OCR", "Meme_Classifier"],
            None,
        ))
        .await
        .unwrap();
    let (health, _) = target
        .client
        .health_service(&name, &["ocr"], false, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(health.len(), 1, "?tag=ocr matches the tag OCR");
    assert_eq!(
        health[0].service.tags,
        vec!["OCR", "Meme_Classifier"],
        "tags keep their case"
    );
    let (catalog, _) = target
        .client
        .catalog_service(&name, &["meme_CLASSIFIER", "Ocr"], QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(catalog.len(), 1);
    let (none, _) = target
        .client
        .catalog_service(&name, &["ocr2"], QueryOptions::default())
        .await
        .unwrap();
    assert!(none.is_empty());
    target.client.deregister_service(&name).await.unwrap();
}

#[tokio::test]
async fn blocking_queries_wake_on_change_and_otherwise_hold_for_the_wait() {
    let target = target().await;
    let client = &target.client;
    let name = unique("conf-block");
    let (_, meta) = client
        .health_service(&name, &[], false, QueryOptions::default())
        .await
        .unwrap();
    assert!(
        meta.last_index > 0,
        "X-Consul-Index is always set and positive"
    );

    // Nothing changes for this service: the query is held for `wait`. On a shared agent
    // another service losing its last instance moves a missing service's index, which
    // may end the wait early, but only with a larger index.
    let started = Instant::now();
    let wait = QueryOptions {
        index: meta.last_index,
        wait: Some(Duration::from_secs(1)),
    };
    let (_, held) = client
        .health_service(&name, &[], false, wait)
        .await
        .unwrap();
    assert!(held.last_index >= meta.last_index, "indexes never go back");
    assert!(
        started.elapsed() >= Duration::from_millis(900) || held.last_index > meta.last_index,
        "returned early ({:?}) without a change",
        started.elapsed()
    );

    // A registration wakes a held query at once with a larger index.
    let waiter = {
        let client = client.clone();
        let name = name.clone();
        let mut index = held.last_index;
        tokio::spawn(async move {
            let started = Instant::now();
            // Other services' removals may end a wait early on a shared agent; block
            // again from the index that came back.
            loop {
                let options = QueryOptions {
                    index,
                    wait: Some(Duration::from_secs(30)),
                };
                let (entries, after) = client
                    .health_service(&name, &[], false, options)
                    .await
                    .unwrap();
                if !entries.is_empty() {
                    return (entries, after, started.elapsed());
                }
                index = after.last_index;
            }
        })
    };
    parked(target.registry()).await;
    client
        .register_service(&registration(&name, &name, &["x"], None))
        .await
        .unwrap();
    let (entries, after, elapsed) = waiter.await.unwrap();
    assert_eq!(entries.len(), 1);
    assert!(after.last_index > held.last_index);
    assert!(
        elapsed < Duration::from_secs(5),
        "woke on the change, not the wait ({elapsed:?})"
    );

    // Deregistration moves the index of that service's view too, so watchers see removals.
    let options = QueryOptions {
        index: after.last_index,
        wait: Some(Duration::from_secs(30)),
    };
    let waiter = {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move {
            client
                .health_service(&name, &[], false, options)
                .await
                .unwrap()
        })
    };
    parked(target.registry()).await;
    client.deregister_service(&name).await.unwrap();
    let (entries, gone) = waiter.await.unwrap();
    assert!(entries.is_empty());
    assert!(gone.last_index > after.last_index);
}

/// A check's state change moves that service's health index and the check's
/// `ModifyIndex`, but does not rewrite the service instance itself.
#[tokio::test]
async fn check_state_changes_move_health_but_not_the_instance() {
    let target = target().await;
    let client = &target.client;
    let name = unique("conf-index");
    let check = CheckDefinition {
        check_id: format!("{name}-ttl"),
        ttl: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    client
        .register_service(&registration(&name, &name, &["x"], Some(check)))
        .await
        .unwrap();
    let (before, health_before) = client
        .health_service(&name, &[], false, QueryOptions::default())
        .await
        .unwrap();
    let (catalog_before, _) = client
        .catalog_service(&name, &[], QueryOptions::default())
        .await
        .unwrap();

    client
        .update_ttl_check(&format!("{name}-ttl"), CheckStatus::Passing, "ok")
        .await
        .unwrap();
    let (entries, health_after) = client
        .health_service(&name, &[], true, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        entries.len(),
        1,
        "a passed TTL check makes the instance passing"
    );
    assert!(health_after.last_index > health_before.last_index);
    let check_index = |entries: &[plugworker_consul_client::ServiceEntry]| {
        entries[0]
            .checks
            .iter()
            .find(|c| c.check_id == format!("{name}-ttl"))
            .map(|c| c.modify_index)
            .unwrap()
    };
    assert!(check_index(&entries) > check_index(&before));
    let (catalog_after, _) = client
        .catalog_service(&name, &[], QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        catalog_after[0].modify_index, catalog_before[0].modify_index,
        "a health change does not rewrite the instance"
    );

    client.deregister_service(&name).await.unwrap();
}

#[tokio::test]
async fn ttl_checks_expire_to_critical() {
    let target = target().await;
    let client = &target.client;
    let name = unique("conf-ttl");
    let check_id = format!("{name}-ttl");
    let check = CheckDefinition {
        check_id: check_id.clone(),
        ttl: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    client
        .register_service(&registration(&name, &name, &[], Some(check)))
        .await
        .unwrap();
    client
        .update_ttl_check(&check_id, CheckStatus::Passing, "alive")
        .await
        .unwrap();
    wait_for_status(client, &name, CheckStatus::Passing, Duration::from_secs(2)).await;
    wait_for_status(client, &name, CheckStatus::Critical, Duration::from_secs(6)).await;
    let check = wait_for_check(&target.api, &check_id, "expired", |c| {
        c["Status"] == "critical"
    })
    .await;
    assert_eq!(
        check["Output"], "TTL expired (last output before timeout follows): alive",
        "Consul quotes the last output"
    );
    client.deregister_service(&name).await.unwrap();
}

#[tokio::test]
async fn critical_instances_are_reaped_after_deregister_critical_service_after() {
    let target = target().await;
    if target.is_real_consul() {
        // Consul enforces a one-minute minimum and reaps every 30 s: too slow for a test.
        eprintln!("skipped against a real agent");
        return;
    }
    let client = &target.client;
    let name = unique("conf-reap");
    let check = CheckDefinition {
        tcp: Some("127.0.0.1:1".into()), // nothing listens on port 1
        interval: Some(Duration::from_secs(1)),
        deregister_critical_service_after: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    client
        .register_service(&registration(&name, &name, &[], Some(check)))
        .await
        .unwrap();
    assert!(client.agent_service(&name).await.unwrap().is_some());
    let started = Instant::now();
    while client.agent_service(&name).await.unwrap().is_some() {
        assert!(started.elapsed() < Duration::from_secs(8), "never reaped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "reaped too early"
    );
}

/// Consul matches keys to Go field names case-insensitively and accepts the snake_case
/// aliases its decoders declare (`deregister_critical_service_after`, `grpc_use_tls`,
/// `tagged_addresses`, `enable_tag_override`, ...), and nothing else.
#[tokio::test]
async fn lowercase_keys_and_consuls_snake_case_aliases_are_understood() {
    let target = target().await;
    let name = unique("conf-snake");
    target
        .api
        .register(json!({
            "id": name, "name": name, "tags": ["snake"], "port": 1234,
            "meta": {"plugworker_role": "runner"}, "enable_tag_override": true,
            "check": {"checkid": format!("{name}-ttl"), "ttl": "30s", "status": "passing",
                      "deregister_critical_service_after": "1m"}
        }))
        .await;
    let service = target
        .client
        .agent_service(&name)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(service.tags, vec!["snake"]);
    assert_eq!(service.port, 1234);
    let view = target
        .api
        .get(&format!("/v1/agent/service/{name}"))
        .await
        .json();
    assert_eq!(view["EnableTagOverride"], true);
    let (passing, _) = target
        .client
        .health_service(&name, &[], true, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(passing.len(), 1, "lowercase `status` was honoured");
    assert!(
        target
            .api
            .agent_checks()
            .await
            .get(format!("{name}-ttl"))
            .is_some()
    );
    target.client.deregister_service(&name).await.unwrap();
}

/// Issue 11 item 2: `service:<id>` for a service's only check, whether it came as `Check`
/// or as a one-element `Checks`; `service:<id>:<n>` (1-based, `Check` first) for several.
#[tokio::test]
async fn default_check_ids_follow_consul() {
    let target = target().await;
    let api = &target.api;
    let single = unique("conf-ids-single");
    let mixed = unique("conf-ids-mixed");
    let listed = unique("conf-ids-listed");
    api.register(json!({"Name": single, "Checks": [{"TTL": "30s"}]}))
        .await;
    api.register(
        json!({"Name": mixed, "Check": {"TTL": "30s", "Notes": "first"},
                        "Checks": [{"TTL": "30s", "Notes": "second"}]}),
    )
    .await;
    api.register(
        json!({"Name": listed, "Checks": [{"TTL": "30s", "Notes": "a"},
                                                   {"TTL": "30s", "Notes": "b"}]}),
    )
    .await;

    let checks = api.agent_checks().await;
    assert_eq!(checks[format!("service:{single}")]["ServiceID"], single);
    assert!(checks.get(format!("service:{single}:1")).is_none());
    assert_eq!(checks[format!("service:{mixed}:1")]["Notes"], "first");
    assert_eq!(checks[format!("service:{mixed}:2")]["Notes"], "second");
    assert!(checks.get(format!("service:{mixed}")).is_none());
    assert_eq!(checks[format!("service:{listed}:1")]["Notes"], "a");
    assert_eq!(checks[format!("service:{listed}:2")]["Notes"], "b");
    assert_eq!(
        checks[format!("service:{single}")]["Name"],
        format!("Service '{single}' check")
    );

    // What py-consul users write: pass the single check by `service:<id>`.
    let answer = api
        .put(&format!("/v1/agent/check/pass/service:{single}"), "")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let passing = api
        .get(&format!("/v1/health/service/{single}?passing"))
        .await
        .json();
    assert_eq!(
        passing.as_array().map(Vec::len),
        Some(1),
        "the pass reached the service's check: {passing}"
    );
    assert_eq!(
        passing[0]["Service"]["Meta"],
        Value::Null,
        "registered without meta: Consul answers null"
    );

    for id in [&single, &mixed, &listed] {
        api.deregister(id).await;
    }
}

/// Issue 11 item 5: what Consul refuses, refused with Consul's status and text, and
/// nothing registered.
#[tokio::test]
async fn invalid_requests_are_refused_with_consuls_messages() {
    let target = target().await;
    let api = &target.api;
    let name = unique("conf-invalid");
    let cases = [
        (
            json!({"Name": name, "Bogus": 1}),
            r#"Request decode failed: json: unknown field "Bogus""#,
        ),
        (
            json!({"Name": name, "Check": {"check_id": "x", "TTL": "10s"}}),
            r#"Request decode failed: json: unknown field "check_id""#,
        ),
        (
            json!({"Name": name, "Check": {"TTL": "10s", "Interval": "10s"}}),
            "Invalid check: Interval and TTL cannot both be specified",
        ),
        (
            json!({"Name": name, "Checks": [{"TTL": "10s", "Status": "maintenance"}]}),
            "Status for checks must 'passing', 'warning', 'critical'",
        ),
        (
            json!({"Name": name, "Address": "0.0.0.0"}),
            "Invalid service address",
        ),
        (json!({"ID": name}), "Missing service name"),
        (
            json!({"Name": name, "Check": {"HTTP": "http://127.0.0.1:1/"}}),
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
        ),
        (
            json!({"Name": name, "Weights": {"Passing": 0, "Warning": 1}}),
            "Invalid Weights: Passing must be greater than 0",
        ),
    ];
    for (body, message) in cases {
        let answer = api
            .put("/v1/agent/service/register", body.to_string())
            .await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert_eq!(answer.body.trim(), message, "{body}");
    }
    assert_eq!(
        api.get(&format!("/v1/agent/service/{name}")).await.status,
        404
    );

    let answer = api
        .get(&format!("/v1/health/service/{name}?passing=maybe"))
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body.trim(), "Invalid value for ?passing");
    for accepted in ["passing", "passing=1", "passing=false", "passing=T"] {
        let answer = api
            .get(&format!("/v1/health/service/{name}?{accepted}"))
            .await;
        assert_eq!(answer.status, 200, "?{accepted}: {}", answer.body);
    }

    let ttl = format!("{name}-ttl");
    api.register(json!({"Name": name, "Check": {"CheckID": ttl, "TTL": "30s"}}))
        .await;
    let answer = api
        .put(
            &format!("/v1/agent/check/update/{ttl}"),
            json!({"Status": "maintenance"}).to_string(),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body.trim(), "Invalid check status: 'maintenance'");
    api.deregister(&name).await;
}

/// Issue 11 item 6: the output follows the latest probe even when the status does not
/// change, so a critical check says why it is critical now.
#[tokio::test]
async fn check_output_updates_while_the_status_stays_the_same() {
    let target = target().await;
    let api = &target.api;
    let name = unique("conf-output");
    let ttl = format!("{name}-ttl");
    api.register(json!({"Name": name, "Check": {"CheckID": ttl, "TTL": "60s"}}))
        .await;
    api.put(&format!("/v1/agent/check/fail/{ttl}?note=first"), "")
        .await;
    api.put(&format!("/v1/agent/check/fail/{ttl}?note=second"), "")
        .await;
    let check = &api.agent_checks().await[&ttl];
    assert_eq!(check["Status"], "critical");
    assert_eq!(check["Output"], "second");

    // A gRPC check: first nothing listens, then a server answers NOT_SERVING. Critical
    // throughout, and the output says which.
    let grpc = unique("conf-output-grpc");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    api.register(
        json!({"Name": grpc, "Check": {"GRPC": address.to_string(), "Interval": "1s",
                                                "Timeout": "2s"}}),
    )
    .await;
    let check_id = format!("service:{grpc}");
    let unreachable = wait_for_check(api, &check_id, "probed", |c| {
        c["Status"] == "critical" && !c["Output"].as_str().unwrap_or_default().is_empty()
    })
    .await;
    assert!(
        !unreachable["Output"]
            .as_str()
            .unwrap()
            .contains("NOT_SERVING")
    );
    let health = serve_health(tokio::net::TcpListener::bind(address).await.unwrap());
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let not_serving = wait_for_check(api, &check_id, "reporting NOT_SERVING", |c| {
        c["Output"]
            .as_str()
            .unwrap_or_default()
            .contains("NOT_SERVING")
    })
    .await;
    assert_eq!(not_serving["Status"], "critical");
    api.deregister(&name).await;
    api.deregister(&grpc).await;
}

/// A small HTTP server for HTTP checks: `/redirect` redirects to `/ok`; `/echo` answers
/// 200 only to `PUT` with header `X-Plugworker: yes` and body `ping`.
async fn check_target() -> String {
    use axum::http::{HeaderMap, Method, StatusCode};
    use axum::response::Redirect;
    use axum::routing::{any, get};
    let app = axum::Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route("/redirect", get(|| async { Redirect::to("/ok") }))
        .route(
            "/echo",
            any(
                |method: Method, headers: HeaderMap, body: String| async move {
                    let header = headers.get("X-Plugworker").and_then(|v| v.to_str().ok());
                    if method == Method::PUT && header == Some("yes") && body == "ping" {
                        (StatusCode::OK, "pong".to_string())
                    } else {
                        (
                            StatusCode::BAD_REQUEST,
                            format!("wrong request: {method} {header:?} {body:?}"),
                        )
                    }
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Issue 11 item 6: HTTP checks follow redirects unless `DisableRedirects`, and send the
/// check's `Method`, `Header` and `Body`.
#[tokio::test]
async fn http_checks_follow_redirects_and_send_method_header_and_body() {
    let target = target().await;
    let api = &target.api;
    let base = check_target().await;
    let name = unique("conf-http");
    api.register(json!({"Name": name, "Checks": [
        {"CheckID": format!("{name}-follow"), "HTTP": format!("{base}/redirect"), "Interval": "1s"},
        {"CheckID": format!("{name}-nofollow"), "HTTP": format!("{base}/redirect"), "Interval": "1s",
         "DisableRedirects": true},
        {"CheckID": format!("{name}-echo"), "HTTP": format!("{base}/echo"), "Interval": "1s",
         "Method": "PUT", "Header": {"X-Plugworker": ["yes"]}, "Body": "ping"},
    ]}))
    .await;
    let passing = |c: &Value| c["Status"] == "passing";
    let follow = wait_for_check(api, &format!("{name}-follow"), "passing", passing).await;
    assert!(
        follow["Output"].as_str().unwrap().contains("fine"),
        "{follow}"
    );
    let echo = wait_for_check(api, &format!("{name}-echo"), "passing", passing).await;
    assert!(echo["Output"].as_str().unwrap().contains("pong"), "{echo}");
    assert_eq!(echo["Type"], "http");
    let nofollow = wait_for_check(api, &format!("{name}-nofollow"), "probed", |c| {
        !c["Output"].as_str().unwrap_or_default().is_empty()
    })
    .await;
    assert_eq!(
        nofollow["Status"], "critical",
        "a redirect is not followed: {nofollow}"
    );
    api.deregister(&name).await;
}

/// Issue 11 item 6: re-registering keeps the checks the new definition leaves out, unless
/// `?replace-existing-checks`.
#[tokio::test]
async fn reregistering_keeps_checks_unless_replace_existing_checks() {
    let target = target().await;
    let api = &target.api;
    let name = unique("conf-replace");
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    api.register(
        json!({"Name": name, "Checks": [{"CheckID": a, "TTL": "60s"},
                                                 {"CheckID": b, "TTL": "60s"}]}),
    )
    .await;
    api.put(&format!("/v1/agent/check/pass/{a}?note=kept"), "")
        .await;
    api.register(json!({"Name": name, "Checks": [{"CheckID": a, "TTL": "60s"}]}))
        .await;
    let checks = api.agent_checks().await;
    assert!(checks.get(&b).is_some(), "a left-out check stays");
    assert_eq!(
        checks[&a]["Status"], "passing",
        "a re-registered check keeps its state"
    );
    assert_eq!(checks[&a]["Output"], "kept");

    let answer = api
        .put(
            "/v1/agent/service/register?replace-existing-checks",
            json!({"Name": name, "Checks": [{"CheckID": a, "TTL": "60s"}]}).to_string(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let checks = api.agent_checks().await;
    assert!(
        checks.get(&b).is_none(),
        "?replace-existing-checks drops it"
    );
    assert!(checks.get(&a).is_some());
    api.deregister(&name).await;
}

/// Issue 11 item 7: agent views carry `Weights`, `EnableTagOverride` and (for anything
/// but a typical service) `Kind`; `/v1/agent/service/:id` answers `X-Consul-ContentHash`
/// and blocks on `?hash=` until the service changes.
#[tokio::test]
async fn agent_service_views_carry_weights_and_block_on_the_content_hash() {
    let target = target().await;
    let api = &target.api;
    let name = unique("conf-agentview");
    let plain = unique("conf-agentview-plain");
    api.register(json!({"Name": name, "Tags": ["a"], "Port": 7000,
                        "Weights": {"Passing": 3, "Warning": 2}, "EnableTagOverride": true}))
        .await;
    api.register(json!({"Name": plain})).await;

    let services = api.get("/v1/agent/services").await.json();
    let view = &services[&name];
    assert_eq!(view["Weights"], json!({"Passing": 3, "Warning": 2}));
    assert_eq!(view["EnableTagOverride"], true);
    assert!(view.get("Kind").is_none(), "typical services have no Kind");
    assert_eq!(view["Service"], name);
    assert_eq!(view["Port"], 7000);
    assert_eq!(
        services[&plain]["Weights"],
        json!({"Passing": 1, "Warning": 1}),
        "Consul's default weights"
    );
    assert_eq!(
        services[&plain]["Meta"],
        json!({}),
        "agent views fill in Meta"
    );
    assert_eq!(services[&plain]["Tags"], json!([]));

    let answer = api.get(&format!("/v1/agent/service/{name}")).await;
    let hash = answer
        .headers
        .get("X-Consul-ContentHash")
        .expect("X-Consul-ContentHash")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(answer.json()["ContentHash"], hash);
    assert_eq!(
        answer.json()["Weights"],
        json!({"Passing": 3, "Warning": 2})
    );

    // Unchanged: held for the wait, same hash.
    let started = Instant::now();
    let held = api
        .get(&format!("/v1/agent/service/{name}?hash={hash}&wait=1s"))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(held.json()["ContentHash"], hash);

    // Changed while blocked: answered at once with the new content.
    let blocked = {
        let path = format!("{}/v1/agent/service/{name}?hash={hash}&wait=30s", api.base);
        tokio::spawn(async move {
            let started = Instant::now();
            let body: Value = reqwest::get(path).await.unwrap().json().await.unwrap();
            (body, started.elapsed())
        })
    };
    parked(target.registry()).await;
    api.register(json!({"Name": name, "Tags": ["b"], "Port": 7000,
                        "Weights": {"Passing": 3, "Warning": 2}, "EnableTagOverride": true}))
        .await;
    let (body, elapsed) = blocked.await.unwrap();
    assert_eq!(body["Tags"], json!(["b"]));
    assert_ne!(body["ContentHash"], hash);
    assert!(
        elapsed < Duration::from_secs(5),
        "woke on the change ({elapsed:?})"
    );
    api.deregister(&name).await;
    api.deregister(&plain).await;
}

/// Issue 11 item 8: what `consul members`, `consul catalog nodes` and monitoring tools
/// read, in the request shapes of Consul's `api` package.
#[tokio::test]
async fn agent_catalog_and_status_read_endpoints_answer_like_consul() {
    let target = target().await;
    let api = &target.api;
    let this = api.get("/v1/agent/self").await.json();
    let node = this["Config"]["NodeName"].as_str().unwrap().to_string();
    assert!(!this["Config"]["Datacenter"].as_str().unwrap().is_empty());
    assert_eq!(this["Member"]["Name"], node);

    // `consul members` asks for every segment.
    let members = api.get("/v1/agent/members?segment=_all").await.json();
    let member = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Name"] == node)
        .expect("the agent is a member");
    assert_eq!(member["Status"], 1, "alive");
    assert!(member["Tags"]["dc"].is_string());

    let name = unique("conf-node");
    api.register(json!({"Name": name, "Port": 1})).await;
    // `consul catalog nodes`
    let nodes = api.get("/v1/catalog/nodes").await;
    assert!(nodes.index() > 0);
    assert!(
        nodes
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["Node"] == node && n["Address"].is_string())
    );
    let services = api.get(&format!("/v1/catalog/node/{node}")).await;
    assert!(services.index() > 0);
    let services = services.json();
    assert_eq!(services["Node"]["Node"], node);
    assert_eq!(services["Services"][&name]["Service"], name);

    let leader = api.get("/v1/status/leader").await.json();
    let leader = leader.as_str().unwrap();
    assert!(!leader.is_empty());
    let peers = api.get("/v1/status/peers").await.json();
    assert!(peers.as_array().unwrap().iter().any(|p| p == leader));
    api.deregister(&name).await;
}

#[tokio::test]
async fn health_checks_state_and_node_endpoints_list_checks() {
    let target = target().await;
    let api = &target.api;
    let node = api.get("/v1/agent/self").await.json()["Config"]["NodeName"]
        .as_str()
        .unwrap()
        .to_string();
    let name = unique("conf-healthviews");
    let ttl = format!("{name}-ttl");
    api.register(json!({"Name": name, "Tags": ["t"], "Check": {"CheckID": ttl, "TTL": "60s"}}))
        .await;
    let ids = |answer: &Answer| -> Vec<String> {
        answer
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["CheckID"].as_str().unwrap().to_string())
            .collect()
    };

    let checks = api.get(&format!("/v1/health/checks/{name}")).await;
    assert!(checks.index() > 0);
    assert_eq!(
        ids(&checks),
        vec![ttl.clone()],
        "only this service's checks"
    );
    let check = &checks.json()[0];
    assert_eq!(check["ServiceName"], name);
    assert_eq!(check["ServiceTags"], json!(["t"]));
    assert_eq!(check["Status"], "critical");
    assert_eq!(check["Type"], "ttl");
    assert!(ids(&api.get("/v1/health/state/critical").await).contains(&ttl));
    assert!(ids(&api.get("/v1/health/state/any").await).contains(&ttl));
    let on_node = ids(&api.get(&format!("/v1/health/node/{node}")).await);
    assert!(on_node.contains(&ttl) && on_node.contains(&"serfHealth".to_string()));

    api.put(&format!("/v1/agent/check/pass/{ttl}"), "").await;
    assert!(ids(&api.get("/v1/health/state/passing").await).contains(&ttl));
    assert!(!ids(&api.get("/v1/health/state/critical").await).contains(&ttl));
    api.deregister(&name).await;
    assert!(ids(&api.get(&format!("/v1/health/checks/{name}")).await).is_empty());
}

fn kv_value(entry: &Value) -> Vec<u8> {
    let text = entry["Value"].as_str().unwrap_or_default();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = alphabet.iter().position(|a| *a == byte).expect("base64") as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

/// Issue 11 item 8: the KV store as `consul kv get/put` and Consul's `api.KV` use it.
#[tokio::test]
async fn kv_get_put_delete_with_cas_flags_keys_and_recurse() {
    let target = target().await;
    let api = &target.api;
    let prefix = unique("conf-kv");
    let key = format!("{prefix}/settings/threshold");

    let missing = api.get(&format!("/v1/kv/{key}")).await;
    assert_eq!(missing.status, 404, "a missing key is a 404");
    assert!(missing.index() > 0, "with an index to block on");

    let put = api.put(&format!("/v1/kv/{key}"), "hello").await;
    assert_eq!((put.status, put.body.trim()), (200, "true"));
    let got = api.get(&format!("/v1/kv/{key}")).await;
    let entry = &got.json()[0];
    assert_eq!(entry["Key"], key);
    assert_eq!(entry["Value"], "aGVsbG8=", "base64 of the raw body");
    assert_eq!(kv_value(entry), b"hello");
    assert_eq!(
        (entry["Flags"].as_u64(), entry["LockIndex"].as_u64()),
        (Some(0), Some(0))
    );
    let created = entry["CreateIndex"].as_u64().unwrap();
    assert_eq!(entry["ModifyIndex"].as_u64(), Some(created));
    assert_eq!(got.index(), created, "a key's index is its ModifyIndex");
    assert_eq!(api.get(&format!("/v1/kv/{key}?raw")).await.body, "hello");

    // Flags, and check-and-set on ModifyIndex (`consul kv put -cas -modify-index=N`).
    api.put(&format!("/v1/kv/{key}?flags=42"), "v2").await;
    let entry = api.get(&format!("/v1/kv/{key}")).await.json()[0].clone();
    assert_eq!(entry["Flags"], 42);
    assert_eq!(entry["CreateIndex"].as_u64(), Some(created));
    let modified = entry["ModifyIndex"].as_u64().unwrap();
    assert!(modified > created);
    let stale = api
        .put(&format!("/v1/kv/{key}?cas={created}"), "lost")
        .await;
    assert_eq!(stale.body.trim(), "false");
    let fresh = api
        .put(&format!("/v1/kv/{key}?cas={modified}"), "won")
        .await;
    assert_eq!(fresh.body.trim(), "true");
    assert_eq!(api.get(&format!("/v1/kv/{key}?raw")).await.body, "won");
    assert_eq!(
        api.put(&format!("/v1/kv/{key}?cas=0"), "x")
            .await
            .body
            .trim(),
        "false"
    );
    let created_only = format!("{prefix}/settings/new");
    assert_eq!(
        api.put(&format!("/v1/kv/{created_only}?cas=0"), "")
            .await
            .body
            .trim(),
        "true",
        "cas=0 creates a missing key"
    );
    let empty = api.get(&format!("/v1/kv/{created_only}")).await.json();
    assert!(
        empty[0]["Value"].is_null() || empty[0]["Value"] == "",
        "an empty value: {empty}"
    );

    // Listing.
    api.put(&format!("/v1/kv/{prefix}/top"), "t").await;
    let keys = api
        .get(&format!("/v1/kv/{prefix}/?keys&separator=/"))
        .await
        .json();
    assert_eq!(
        keys,
        json!([format!("{prefix}/settings/"), format!("{prefix}/top")])
    );
    let all = api.get(&format!("/v1/kv/{prefix}/?keys")).await.json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let recursed = api.get(&format!("/v1/kv/{prefix}?recurse")).await;
    assert_eq!(recursed.json().as_array().unwrap().len(), 3);
    assert_eq!(
        api.get(&format!("/v1/kv/{prefix}/nothing/?keys"))
            .await
            .status,
        404
    );

    // Deleting.
    let now = api.get(&format!("/v1/kv/{key}")).await.json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    let refused = api.delete(&format!("/v1/kv/{key}?cas={}", now - 1)).await;
    assert_eq!(refused.body.trim(), "false");
    assert_eq!(
        api.delete(&format!("/v1/kv/{key}?cas={now}"))
            .await
            .body
            .trim(),
        "true"
    );
    assert_eq!(api.get(&format!("/v1/kv/{key}")).await.status, 404);
    assert_eq!(
        api.delete(&format!("/v1/kv/{prefix}?recurse"))
            .await
            .body
            .trim(),
        "true"
    );
    assert_eq!(
        api.get(&format!("/v1/kv/{prefix}?recurse")).await.status,
        404
    );
    let conflict = api.delete(&format!("/v1/kv/{prefix}?recurse&cas=1")).await;
    assert_eq!(conflict.status, 400);
    assert!(
        conflict.body.starts_with("Conflicting flags"),
        "{}",
        conflict.body
    );
}

#[tokio::test]
async fn kv_blocking_reads_wake_on_a_write_and_otherwise_hold() {
    let target = target().await;
    let api = &target.api;
    let key = format!("{}/watched", unique("conf-kvblock"));
    api.put(&format!("/v1/kv/{key}"), "one").await;
    let index = api.get(&format!("/v1/kv/{key}")).await.index();

    let started = Instant::now();
    let held = api
        .get(&format!("/v1/kv/{key}?index={index}&wait=1s"))
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held for the wait"
    );
    assert_eq!(held.index(), index, "nothing else moves one key's index");

    let blocked = {
        let path = format!("{}/v1/kv/{key}?index={index}&wait=30s", api.base);
        tokio::spawn(async move {
            let started = Instant::now();
            let response = reqwest::get(path).await.unwrap();
            let index: u64 = response.headers()["X-Consul-Index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body: Value = response.json().await.unwrap();
            (body, index, started.elapsed())
        })
    };
    parked(target.registry()).await;
    api.put(&format!("/v1/kv/{key}"), "two").await;
    let (body, after, elapsed) = blocked.await.unwrap();
    assert_eq!(kv_value(&body[0]), b"two");
    assert!(after > index);
    assert!(
        elapsed < Duration::from_secs(5),
        "woke on the write ({elapsed:?})"
    );
    api.delete(&format!("/v1/kv/{key}")).await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let target = target().await;
    let client = &target.client;
    let missing_name = ServiceRegistration {
        id: unique("conf-bad"),
        ..Default::default()
    };
    let error = client.register_service(&missing_name).await.unwrap_err();
    assert!(error.to_string().contains("400"), "{error}");
    assert!(
        matches!(error, plugworker_consul_client::Error::Status { .. }),
        "{error}"
    );

    assert!(
        client
            .agent_service(&unique("conf-unknown"))
            .await
            .unwrap()
            .is_none()
    );
    let error = client
        .deregister_service(&unique("conf-unknown"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("404"), "{error}");
    let answer = target.api.get("/v1/health/service/x?index=abc").await;
    assert_eq!((answer.status, answer.body.trim()), (400, "Invalid index"));
    let answer = target.api.get("/v1/health/service/x?index=1&wait=10").await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (400, "Invalid wait time")
    );
}

#[tokio::test]
async fn an_unreachable_agent_is_a_transient_error() {
    let client = ConsulClient::new(ConsulConfig {
        address: "127.0.0.1:1".into(),
        ..Default::default()
    })
    .unwrap();
    let error = client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, plugworker_consul_client::Error::Transport { .. }),
        "{error}"
    );
}

/// The next change of `name`'s passing instances, through a [`Watch`].
async fn passing_view(
    watch: &mut plugworker_consul_client::Watch,
    client: &ConsulClient,
    name: &str,
) -> Vec<plugworker_consul_client::ServiceEntry> {
    watch
        .next(|options| client.health_service(name, &[], true, options))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_watch_follows_a_service_through_registration_health_and_removal() {
    use plugworker_consul_client::Watch;
    let target = target().await;
    let name = unique("conf-watch");
    let check_id = format!("{name}-ttl");
    let mut watch = Watch::new(Duration::from_secs(10));
    // The first call returns the current (empty) view at once.
    assert!(
        passing_view(&mut watch, &target.client, &name)
            .await
            .is_empty()
    );

    let check = CheckDefinition {
        check_id: check_id.clone(),
        ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let registrar = {
        let client = target.client.clone();
        let registry = target.registry();
        let (name, check_id) = (name.clone(), check_id.clone());
        tokio::spawn(async move {
            parked(registry.clone()).await;
            client
                .register_service(&registration(&name, &name, &["w"], Some(check)))
                .await
                .unwrap();
            // The watch woke on the registration (its passing view still empty) and
            // blocks again; a bounded pause lets it, as nothing counts a second parking
            // apart from the first.
            tokio::time::sleep(Duration::from_millis(200)).await;
            client
                .update_ttl_check(&check_id, CheckStatus::Passing, "up")
                .await
                .unwrap();
        })
    };
    // Registered (critical, so still not in the passing view), then passing.
    let started = Instant::now();
    let mut view = passing_view(&mut watch, &target.client, &name).await;
    while view.is_empty() {
        view = passing_view(&mut watch, &target.client, &name).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "changes arrive without waiting out `wait`"
    );
    assert_eq!(view[0].service.id, name);
    registrar.await.unwrap();

    target.client.deregister_service(&name).await.unwrap();
    let started = Instant::now();
    let mut view = passing_view(&mut watch, &target.client, &name).await;
    while !view.is_empty() && started.elapsed() < Duration::from_secs(10) {
        view = passing_view(&mut watch, &target.client, &name).await;
    }
    assert!(view.is_empty(), "the removal is seen");
}
