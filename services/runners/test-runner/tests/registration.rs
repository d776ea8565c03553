//! Runner processes against the embedded Consul-compatible registry: registration, tags,
//! health, SIGKILL, SIGTERM draining, re-registration and failed loads.

use crate::common;

use common::attack::scrape;
use common::{
    CHECK_INTERVAL_SECS, algorithm_modules, registry, registry_on, start_runner,
    start_runner_reporting,
};
use plugworker_consul_client::{CheckStatus, QueryOptions};
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_testkit::{eventually, metric_value, passing_instances, runner_client};
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const INTERVAL: Duration = Duration::from_secs(CHECK_INTERVAL_SECS);

#[tokio::test]
async fn two_runners_register_with_exactly_their_algorithm_tags_and_pass_only_once_loaded() {
    let (registry, consul) = registry().await;
    let (_nlp, _) = start_runner("nlp-runner", "nlp-runner", &registry.url(), &[], &[]).await;
    // The test runner takes 2 s to load, so its instance is visible before it may pass.
    let (_test, _) = start_runner(
        "test-runner",
        "test-runner",
        &registry.url(),
        &[],
        &[("TEST_RUNNER_LOAD_DELAY_MS", "2000")],
    )
    .await;

    let catalog = eventually(
        Duration::from_secs(20),
        "both runners in the catalog",
        || async {
            let (services, _) = consul
                .catalog_services(QueryOptions::default())
                .await
                .ok()?;
            (services.contains_key("nlp-runner") && services.contains_key("test-runner"))
                .then_some(services)
        },
    )
    .await;
    assert_eq!(catalog["nlp-runner"], algorithm_modules("../nlp"));
    assert_eq!(catalog["test-runner"], algorithm_modules("."));
    assert_eq!(catalog["test-runner"], vec!["add", "burn", "echo"]);

    // Registered but still loading: listed, not passing.
    let (entries, _) = consul
        .health_service("test-runner", &[], false, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_ne!(
        entries[0].aggregated_status(),
        CheckStatus::Passing,
        "passing before its algorithms loaded"
    );
    let entry = &entries[0];
    assert_eq!(entry.service.meta["plugworker_role"], "runner");
    assert_eq!(
        entry.service.meta["plugworker_kit_version"],
        plugworker_kit::KIT_VERSION
    );
    let check = entry
        .checks
        .iter()
        .find(|c| c.check_type == "grpc")
        .expect("a gRPC health check");
    assert!(
        check.check_id.starts_with("service:test-runner-"),
        "{}",
        check.check_id
    );

    let passing = eventually(
        Duration::from_secs(20),
        "the test runner to pass",
        || async {
            let entries = passing_instances(&consul, "test-runner").await;
            (!entries.is_empty()).then_some(entries)
        },
    )
    .await;
    assert_eq!(passing.len(), 1);
    eventually(
        Duration::from_secs(20),
        "the nlp runner to pass",
        || async { (!passing_instances(&consul, "nlp-runner").await.is_empty()).then_some(()) },
    )
    .await;

    // The tag filter finds each algorithm on its runner only.
    let (by_tag, _) = consul
        .health_service(
            "nlp-runner",
            &["language_detection"],
            true,
            QueryOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(by_tag.len(), 1);
    let (wrong_tag, _) = consul
        .health_service("nlp-runner", &["echo"], true, QueryOptions::default())
        .await
        .unwrap();
    assert!(wrong_tag.is_empty());
}

#[tokio::test]
async fn sigkilled_runner_drops_out_of_passing_within_two_check_intervals() {
    let (registry, consul) = registry().await;
    let (runner, _) = start_runner("test-runner", "killed-runner", &registry.url(), &[], &[]).await;
    eventually(Duration::from_secs(20), "the runner to pass", || async {
        (!passing_instances(&consul, "killed-runner").await.is_empty()).then_some(())
    })
    .await;

    runner.signal("KILL");
    let killed = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the killed runner to leave ?passing",
        || async {
            passing_instances(&consul, "killed-runner")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let elapsed = killed.elapsed();
    assert!(
        elapsed <= 2 * INTERVAL,
        "took {elapsed:?}, more than two check intervals"
    );
    let (entries, _) = consul
        .health_service("killed-runner", &[], false, QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        entries.len(),
        1,
        "still registered (until DeregisterCriticalServiceAfter)"
    );
    assert_eq!(entries[0].aggregated_status(), CheckStatus::Critical);
}

#[tokio::test]
async fn sigterm_finishes_the_run_in_flight_then_deregisters_then_exits_zero() {
    let (registry, consul) = registry().await;
    let (mut runner, addresses) = start_runner_reporting(
        "test-runner",
        "drained-runner",
        &registry.url(),
        &["--metrics-address", "127.0.0.1:0"],
        &[],
    )
    .await;
    let address = addresses.grpc().to_string();
    eventually(Duration::from_secs(20), "the runner to pass", || async {
        (!passing_instances(&consul, "drained-runner")
            .await
            .is_empty())
        .then_some(())
    })
    .await;

    // Watch the catalog in the background and note when the instance disappears.
    let watcher = {
        let consul = consul.clone();
        tokio::spawn(async move {
            let mut index = 0;
            loop {
                let options = QueryOptions {
                    index,
                    wait: Some(Duration::from_secs(30)),
                };
                let (instances, meta) = consul
                    .catalog_service("drained-runner", &[], options)
                    .await
                    .unwrap();
                index = meta.last_index;
                if instances.is_empty() {
                    return Instant::now();
                }
            }
        })
    };

    let mut client = runner_client(&address, Duration::from_secs(5)).await;
    let run_delay = Duration::from_millis(2000);
    let in_flight = {
        let mut client = client.clone();
        tokio::spawn(async move {
            let payload = format!(
                r#"{{"message": "still here", "delay_ms": {}}}"#,
                run_delay.as_millis()
            );
            let started = Instant::now();
            let response = client
                .run(RunRequest {
                    algorithm: "echo".into(),
                    payload: payload.into_bytes(),
                })
                .await;
            (response, started)
        })
    };
    eventually(Duration::from_secs(10), "the run in flight", || async {
        let text = scrape(addresses.metrics()).await?;
        let in_flight = metric_value(
            &text,
            "plugworker_runner_runs_in_flight",
            &[("algorithm", "echo")],
        )?;
        (in_flight >= 1.0).then_some(())
    })
    .await;
    runner.signal("TERM");
    let terminated = Instant::now();

    // Draining (health NOT_SERVING first): new runs are refused so callers retry
    // elsewhere.
    let health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy(),
    );
    eventually(Duration::from_secs(10), "health NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let status = health
                .check(HealthCheckRequest::default())
                .await
                .ok()?
                .into_inner()
                .status();
            (status == ServingStatus::NotServing).then_some(())
        }
    })
    .await;
    let refused = client
        .run(RunRequest {
            algorithm: "echo".into(),
            payload: br#"{"message": "late"}"#.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let (still_registered, _) = consul
        .catalog_service("drained-runner", &[], QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(
        still_registered.len(),
        1,
        "deregistered while a run was still in flight"
    );

    let (response, run_started) = in_flight.await.unwrap();
    let response = response.expect("the in-flight run completes").into_inner();
    let result: serde_json::Value = serde_json::from_slice(&response.result).unwrap();
    assert_eq!(result["message"], "still here");

    let status = runner.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status:?}");
    let deregistered = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .unwrap()
        .unwrap();
    assert!(
        deregistered >= run_started + run_delay,
        "deregistered {:?} after SIGTERM, before the run could have finished",
        deregistered - terminated
    );
}

#[tokio::test]
async fn runner_registers_again_when_the_agent_forgets_it() {
    // The restarted agent comes back where the runner knows it: on the first one's port,
    // held (a clone of its listener) so that nothing else can take it meanwhile.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kept = listener.try_clone().unwrap();
    let (registry, consul) = registry_on(listener);
    let (_runner, _) =
        start_runner("test-runner", "phoenix-runner", &registry.url(), &[], &[]).await;
    eventually(
        Duration::from_secs(20),
        "the runner to register",
        || async { consul.agent_service_by_name("phoenix-runner").await },
    )
    .await;

    // A dev agent restart forgets everything.
    registry.stop().await;
    let (_registry, consul) = registry_on(kept);
    let restarted = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the runner to register again",
        || async { consul.agent_service_by_name("phoenix-runner").await },
    )
    .await;
    let elapsed = restarted.elapsed();
    assert!(
        elapsed <= INTERVAL + Duration::from_millis(500),
        "re-registered after {elapsed:?}"
    );
    eventually(
        Duration::from_secs(10),
        "the re-registered runner to pass",
        || async {
            (!passing_instances(&consul, "phoenix-runner")
                .await
                .is_empty())
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_model_that_fails_to_load_stops_the_runner_with_a_message_naming_algorithm_and_file() {
    let (registry, consul) = registry().await;
    let missing = "/nonexistent/plugworker/echo-model.onnx";
    let (mut runner, _) = start_runner(
        "test-runner",
        "broken-runner",
        &registry.url(),
        &[],
        &[
            ("TEST_RUNNER_REQUIRED_FILE", missing),
            ("TEST_RUNNER_LOAD_DELAY_MS", "500"),
        ],
    )
    .await;
    let status = runner.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "a failed load must exit non-zero");
    let log = runner.log();
    assert!(log.contains("algorithm echo failed to load"), "{log}");
    assert!(log.contains(missing), "{log}");
    let (instances, _) = consul
        .catalog_service("broken-runner", &[], QueryOptions::default())
        .await
        .unwrap();
    assert!(
        instances.is_empty(),
        "a runner that failed to load leaves no instance behind"
    );
}

/// Lookup helper: the agent's service whose name is `name`, if registered.
trait AgentLookup {
    async fn agent_service_by_name(&self, name: &str) -> Option<()>;
}

impl AgentLookup for plugworker_consul_client::ConsulClient {
    async fn agent_service_by_name(&self, name: &str) -> Option<()> {
        let (instances, _) = self
            .catalog_service(name, &[], QueryOptions::default())
            .await
            .ok()?;
        (!instances.is_empty()).then_some(())
    }
}
