//! plugworker keeps working in a datacenter it shares with services it does not own: a
//! fake agent answers exactly what a real Consul agent answers (`tests/fixtures/`, with the
//! `null`s real agents send) for a service without meta, a service with `Tags: null`, a
//! service with its own gRPC check, the Consul server itself, and one live plugworker
//! runner. The real `plugworker algorithms` binary and the `Resolver` must both see the
//! runner, and only the runner, without a single failed request.

use crate::common;

use common::{Agent, fixture, plugworker, serve_http};
use plugworker_consul_client::model::nullable;
use plugworker_consul_client::{
    AgentService, CheckStatus, ConsulClient, ConsulConfig, QueryOptions,
};
use plugworker_discovery::Resolver;
use plugworker_testkit::{Process, bin_path, eventually};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn client(address: &str) -> ConsulClient {
    ConsulClient::new(ConsulConfig {
        address: address.to_string(),
        ..ConsulConfig::default()
    })
    .unwrap()
}

/// A test-runner serving `add` and `echo`, not registered anywhere: the fake agent's
/// fixture points at it.
async fn start_runner() -> (Process, u16) {
    let (process, addresses) = Process::spawn_reporting(
        &bin_path("test-runner"),
        // Plaintext: the fake agent issues no Connect certificates.
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-register",
            "--insecure-plaintext",
        ],
        &[],
    )
    .await;
    let port = addresses
        .grpc()
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    (process, port)
}

#[tokio::test]
async fn every_recorded_answer_parses_with_its_nulls() {
    let agent = Agent::default();
    let address = serve_http(agent.router()).await.to_string();
    let consul = client(&address);
    let now = QueryOptions::default();

    let (services, meta) = consul.catalog_services(now).await.unwrap();
    assert_eq!(meta.last_index, common::INDEX);
    assert!(meta.known_leader);
    assert_eq!(
        services.keys().collect::<Vec<_>>(),
        [
            "billing-api",
            "consul",
            "legacy-web",
            "redis",
            "test-runner"
        ]
    );

    let (redis, _) = consul
        .health_service("redis", &[], false, now)
        .await
        .unwrap();
    assert_eq!(redis.len(), 1);
    assert!(redis[0].service.meta.is_empty(), "Meta: null is no meta");
    assert_eq!(
        redis[0].address(),
        "10.0.1.17",
        "no service address: the node's"
    );
    assert_eq!(redis[0].aggregated_status(), CheckStatus::Passing);

    let (legacy, _) = consul
        .health_service("legacy-web", &[], false, now)
        .await
        .unwrap();
    assert!(legacy[0].service.tags.is_empty(), "Tags: null is no tags");
    assert!(legacy[0].checks[0].service_tags.is_empty());
    assert_eq!(legacy[0].service.port, 80);

    let (billing, _) = consul
        .health_service("billing-api", &[], false, now)
        .await
        .unwrap();
    assert_eq!(billing[0].aggregated_status(), CheckStatus::Critical);
    assert_eq!(billing[0].checks[1].check_type, "grpc");
    let (billing_passing, _) = consul
        .health_service("billing-api", &[], true, now)
        .await
        .unwrap();
    assert!(billing_passing.is_empty());

    let (catalog, _) = consul.catalog_service("redis", &[], now).await.unwrap();
    assert!(catalog[0].service_meta.is_empty(), "ServiceMeta: null");
    assert_eq!(catalog[0].service_port, 6379);
    let (catalog, _) = consul
        .catalog_service("legacy-web", &[], now)
        .await
        .unwrap();
    assert!(catalog[0].service_tags.is_empty(), "ServiceTags: null");
    assert_eq!(catalog[0].service_address, "10.0.2.5");

    let agent_view: BTreeMap<String, AgentService> =
        serde_json::from_value(fixture("agent_services.json").unwrap()).unwrap();
    assert_eq!(agent_view["billing-api-1"].meta["team"], "payments");
    assert_eq!(agent_view["redis"].port, 6379);

    assert_eq!(consul.leader().await.unwrap(), "10.0.1.10:8300");
}

#[test]
fn null_reads_as_empty_in_every_field() {
    // What Go's decoder does with `null`: leaves the field empty.
    let entry: plugworker_consul_client::ServiceEntry = serde_json::from_str(
        r#"{"Node": null, "Service": {"ID": null, "Service": "x", "Tags": null, "Meta": null,
            "Port": null, "Address": null, "Weights": null, "Proxy": null, "Connect": null,
            "TaggedAddresses": null, "CreateIndex": null}, "Checks": null}"#,
    )
    .unwrap();
    assert_eq!(entry.service.service, "x");
    assert!(entry.checks.is_empty() && entry.service.tags.is_empty());
    assert_eq!(entry.service.port, 0);

    #[derive(serde::Deserialize)]
    struct Wrapper {
        #[serde(deserialize_with = "nullable")]
        list: Vec<u32>,
    }
    let wrapper: Wrapper = serde_json::from_str(r#"{"list": null}"#).unwrap();
    assert!(wrapper.list.is_empty());
}

#[tokio::test]
async fn plugworker_algorithms_lists_the_runner_beside_services_it_does_not_own() {
    let (_runner, port) = start_runner().await;
    let agent = Agent {
        runner_port: Some(port),
        ..Agent::default()
    };
    let address = serve_http(agent.router()).await;
    let run = |args: &[&str]| {
        let mut command = plugworker();
        command
            .arg("algorithms")
            // The runner here serves plaintext (the recorded agent has no Connect CA):
            // the schemas are read the same way.
            .arg("--insecure-plaintext")
            .args(args)
            .env("CONSUL_HTTP_ADDR", format!("http://{address}"));
        async move { command.output().await.expect("plugworker runs") }
    };

    // The runner needs a moment to listen; until then its schema is unknown, not an error.
    let listing: serde_json::Value = eventually(
        Duration::from_secs(30),
        "the runner's algorithms described by `plugworker algorithms --json`",
        || {
            let output = run(&["--json"]);
            async move {
                let output = output.await;
                assert!(
                    output.status.success(),
                    "plugworker algorithms failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let listing: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
                listing
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|a| a["version"] == "1.0.0")
                    .then_some(listing)
            }
        },
    )
    .await;
    let names: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["add", "echo"],
        "only the runner's tags are algorithms"
    );
    let instance = &listing[0]["instances"][0];
    assert_eq!(instance["service"], "test-runner");
    assert_eq!(instance["address"], format!("127.0.0.1:{port}"));
    assert_eq!(instance["status"], "passing");
    assert!(listing[0]["input_schema"].is_object());

    let output = run(&[]).await;
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("add  v1.0.0  (1/1 instances passing)"),
        "{text}"
    );
    assert!(
        text.contains("echo  v1.0.0  (1/1 instances passing)"),
        "{text}"
    );
    for foreign in ["redis", "legacy-web", "billing-api", "v2"] {
        assert!(!text.contains(foreign), "{foreign} is not a runner: {text}");
    }

    // It read every service's health, the ones it does not own included.
    let paths: Vec<String> = agent.requests().into_iter().map(|s| s.path).collect();
    for service in [
        "consul",
        "redis",
        "legacy-web",
        "billing-api",
        "test-runner",
    ] {
        assert!(
            paths.contains(&format!("/v1/health/service/{service}")),
            "{service} not read: {paths:?}"
        );
    }
}

#[tokio::test]
async fn a_live_resolver_serves_the_runner_and_never_fails_on_other_services() {
    let agent = Agent {
        runner_port: Some(50051),
        ..Agent::default()
    };
    let address = serve_http(agent.router()).await.to_string();
    let resolver = Resolver::start(client(&address), Duration::from_secs(30));
    let mut updates = resolver.subscribe();
    let snapshot = tokio::time::timeout(
        Duration::from_secs(20),
        updates.wait_for(|s| s.instances("echo").len() == 1 && s.instances("add").len() == 1),
    )
    .await
    .expect("the runner appears")
    .unwrap()
    .clone();
    let echo = &snapshot.instances("echo")[0];
    assert_eq!(echo.service, "test-runner");
    assert_eq!(echo.address, "127.0.0.1:50051");
    let algorithms: Vec<&str> = snapshot.instance_counts().map(|(a, _)| a).collect();
    assert_eq!(algorithms, ["add", "echo"]);

    // Every watch is now blocked on the agent (which holds blocking queries for their
    // wait): each service was read, none failed, and none is retrying.
    eventually(
        Duration::from_secs(10),
        "a blocked health watch per service, and a blocked catalog watch",
        || {
            let requests = agent.requests();
            async move {
                ["redis", "legacy-web", "billing-api", "test-runner"]
                    .iter()
                    .map(|s| format!("/v1/health/service/{s}"))
                    .chain(["/v1/catalog/services".to_string()])
                    .all(|path| {
                        // The latest request on the path carries the current index: the
                        // agent holds it.
                        requests
                            .iter()
                            .rev()
                            .find(|r| r.path == path)
                            .and_then(|r| r.query.get("index")?.parse::<u64>().ok())
                            .is_some_and(|index| index >= common::INDEX)
                    })
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(resolver.stats().consul_errors.load(Ordering::Relaxed), 0);
    let requests = agent.requests().len();
    // A bounded wait: that nothing more is sent has no event to wait for.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        agent.requests().len(),
        requests,
        "blocked watches send nothing more"
    );
}
