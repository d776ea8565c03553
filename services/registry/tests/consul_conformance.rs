//! Conformance of the typed Consul client (`plugworker-discovery`) and the embedded
//! registry with Consul's documented behaviour.
//!
//! By default the suite runs against an embedded registry started per test. Set
//! `CONSUL_HTTP_ADDR` (e.g. a `consul agent -dev` in Docker with `--network host`) to run
//! the same assertions against a real agent and confirm the stand-in is faithful. Checks
//! target servers this test starts on 127.0.0.1, so the agent must share the host network.

use plugworker_discovery::{
    CheckDefinition, CheckStatus, ConsulClient, ConsulConfig, QueryOptions, ServiceRegistration,
};
use plugworker_registry::{Registry, RegistryConfig, RunningRegistry};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic_health::ServingStatus;

/// The registry under test: an embedded one, or the real agent at `CONSUL_HTTP_ADDR`.
struct Target {
    client: ConsulClient,
    _embedded: Option<RunningRegistry>,
}

impl Target {
    fn is_real_consul(&self) -> bool {
        self._embedded.is_none()
    }
}

async fn target() -> Target {
    match std::env::var("CONSUL_HTTP_ADDR") {
        Ok(_) => Target {
            client: ConsulClient::new(ConsulConfig::from_env()).unwrap(),
            _embedded: None,
        },
        Err(_) => {
            let registry = Registry::spawn("127.0.0.1:0", RegistryConfig::default())
                .await
                .unwrap();
            let client = ConsulClient::new(ConsulConfig {
                address: registry.url(),
                ..Default::default()
            })
            .unwrap();
            Target {
                client,
                _embedded: Some(registry),
            }
        }
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

/// A `grpc.health.v1` server on 127.0.0.1 whose status the test controls.
async fn health_server() -> (String, tonic_health::server::HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (address, reporter)
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
        checks: Vec::new(),
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

#[tokio::test]
async fn blocking_queries_wake_on_change_and_time_out_with_the_same_index() {
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

    // Nothing changes: the query is held for `wait` and returns the same index.
    let started = Instant::now();
    let wait = QueryOptions {
        index: meta.last_index,
        wait: Some(Duration::from_secs(1)),
    };
    let (_, unchanged) = client
        .health_service(&name, &[], false, wait)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held for the wait"
    );
    assert_eq!(unchanged.last_index, meta.last_index);

    // A registration wakes a held query at once with a larger index.
    let waiter = {
        let client = client.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let options = QueryOptions {
                index: meta.last_index,
                wait: Some(Duration::from_secs(30)),
            };
            let (entries, after) = client
                .health_service(&name, &[], false, options)
                .await
                .unwrap();
            (entries, after, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .register_service(&registration(&name, &name, &["x"], None))
        .await
        .unwrap();
    let (entries, after, elapsed) = waiter.await.unwrap();
    assert_eq!(entries.len(), 1);
    assert!(after.last_index > meta.last_index);
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.deregister_service(&name).await.unwrap();
    let (entries, gone) = waiter.await.unwrap();
    assert!(entries.is_empty());
    assert!(gone.last_index > after.last_index);
}

#[tokio::test]
async fn check_state_changes_move_health_but_not_the_service_list() {
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
    let (_, services_before) = client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    let (_, health_before) = client
        .health_service(&name, &[], false, QueryOptions::default())
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
    let options = QueryOptions {
        index: services_before.last_index,
        wait: Some(Duration::from_secs(1)),
    };
    let (_, services_after) = client.catalog_services(options).await.unwrap();
    assert_eq!(
        services_after.last_index, services_before.last_index,
        "health changes do not move the service list"
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

#[tokio::test]
async fn registrations_in_snake_case_are_understood() {
    let target = target().await;
    let name = unique("conf-snake");
    let body = serde_json::json!({
        "id": name, "name": name, "tags": ["snake"], "port": 1234,
        "meta": {"plugworker_role": "runner"},
        "check": {"check_id": format!("{name}-ttl"), "ttl": "30s", "status": "passing",
                  "deregister_critical_service_after": "1m"}
    });
    let url = target
        .client
        .base_url()
        .join("/v1/agent/service/register")
        .unwrap();
    let mut request = reqwest::Client::new().put(url).json(&body);
    if let Ok(token) = std::env::var("CONSUL_HTTP_TOKEN") {
        request = request.header("X-Consul-Token", token);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
    let service = target
        .client
        .agent_service(&name)
        .await
        .unwrap()
        .expect("registered");
    assert_eq!(service.tags, vec!["snake"]);
    assert_eq!(service.port, 1234);
    let (passing, _) = target
        .client
        .health_service(&name, &[], true, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(passing.len(), 1, "snake_case `status` was honoured");
    target.client.deregister_service(&name).await.unwrap();
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
    assert!(!error.is_transient());

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
    assert!(error.is_transient(), "{error}");
}

/// The next change of `name`'s passing instances, through a [`Watch`].
async fn passing_view(
    watch: &mut plugworker_discovery::Watch,
    client: &ConsulClient,
    name: &str,
) -> Vec<plugworker_discovery::ServiceEntry> {
    watch
        .next(|options| client.health_service(name, &[], true, options))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_watch_follows_a_service_through_registration_health_and_removal() {
    use plugworker_discovery::Watch;
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
        let (name, check_id) = (name.clone(), check_id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client
                .register_service(&registration(&name, &name, &["w"], Some(check)))
                .await
                .unwrap();
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
    assert!(
        passing_view(&mut watch, &target.client, &name)
            .await
            .is_empty(),
        "the removal is seen"
    );
}
