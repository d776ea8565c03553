//! A real runner process (the test-runner binary) in mesh mode, the default: it registers
//! as Connect-native, serves its jobs over mTLS only, and answers health in plaintext on
//! its own port for Consul's check and `--health-probe`. And what it does when it cannot
//! get a certificate.

mod common;

use common::*;
use plugworker_embedded_consul::{Registry, RegistryConfig};
use plugworker_rpc::runner::v1::ListAlgorithmsRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_testkit::{Process, bin_path, eventually, free_port};
use std::process::Output;
use std::time::Duration;
use tonic::transport::Endpoint;

fn start_runner(consul_url: &str, listen: &str, health: &str, envs: &[(&str, &str)]) -> Process {
    Process::spawn(
        &bin_path("test-runner"),
        &[
            "--listen",
            listen,
            "--health-listen",
            health,
            "--consul-address",
            consul_url,
            "--check-interval",
            "1s",
            "--check-timeout",
            "1s",
        ],
        envs,
    )
}

fn probe(health: &str) -> Output {
    std::process::Command::new(bin_path("test-runner"))
        .args([
            "--health-probe",
            "--health-listen",
            health,
            "--check-timeout",
            "2s",
        ])
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_mesh_runner_registers_connect_native_and_serves_jobs_over_mtls_only() {
    let registry = registry(RegistryConfig::default()).await;
    let consul = consul(&registry);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let health = format!("127.0.0.1:{}", free_port());
    let mut runner = start_runner(&registry.url(), &listen, &health, &[]);

    // Listed by the Connect health view, passing: the check reached the health port.
    let entry = eventually(
        Duration::from_secs(60),
        "a passing Connect-native test-runner",
        || async {
            consul
                .health_connect("test-runner", &[], true, Default::default())
                .await
                .ok()
                .and_then(|(entries, _)| entries.into_iter().next())
        },
    )
    .await;
    assert_eq!(entry.service.port, port);
    let check = &entry
        .checks
        .iter()
        .find(|c| c.check_type == "grpc")
        .expect("a gRPC check");
    assert_eq!(check.status, plugworker_consul_client::CheckStatus::Passing);

    let probed = probe(&health);
    assert!(
        probed.status.success(),
        "{}",
        String::from_utf8_lossy(&probed.stderr)
    );
    assert!(String::from_utf8_lossy(&probed.stdout).contains("SERVING"));

    // The controller's way in: its own leaf, expecting the runner's service.
    let controller = identity(&registry, "controller").await;
    let mut client = RunnerClient::new(mesh_channel(
        &controller,
        "test-runner",
        listen.parse().unwrap(),
    ));
    let listing = client
        .list_algorithms(ListAlgorithmsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listing.service_name, "test-runner");
    let answer = client
        .run(plugworker_rpc::runner::v1::RunRequest {
            algorithm: "echo".into(),
            payload: br#"{"message": "over mTLS"}"#.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(String::from_utf8_lossy(&answer.result).contains("over mTLS"));

    // Plaintext gRPC to the job port gets nothing.
    let plaintext = Endpoint::from_shared(format!("http://{listen}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let refused = RunnerClient::new(plaintext)
        .list_algorithms(ListAlgorithmsRequest {})
        .await
        .unwrap_err();
    eprintln!("plaintext to the mTLS port: {refused}");
    // The health port serves health and nothing else.
    let health_only = Endpoint::from_shared(format!("http://{health}"))
        .unwrap()
        .connect_lazy();
    let status = RunnerClient::new(health_only)
        .list_algorithms(ListAlgorithmsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // SIGTERM: drained, deregistered, exit 0.
    runner.signal("TERM");
    assert!(runner.wait_exit(Duration::from_secs(20)).await.success());
    let (left, _) = consul
        .health_connect("test-runner", &[], false, Default::default())
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_mesh_runner_without_a_certificate_stays_not_serving_and_unregistered_until_it_gets_one()
{
    // No agent yet at this address.
    let consul_port = free_port();
    let consul_url = format!("http://127.0.0.1:{consul_port}");
    let listen = format!("127.0.0.1:{}", free_port());
    let health = format!("127.0.0.1:{}", free_port());
    let runner = start_runner(&consul_url, &listen, &health, &[]);

    eventually(
        Duration::from_secs(30),
        "the runner's explanation",
        || async {
            runner
                .log()
                .contains("no Connect certificate for this runner yet")
                .then_some(())
        },
    )
    .await;
    let probed = probe(&health);
    assert!(!probed.status.success());
    assert!(
        String::from_utf8_lossy(&probed.stderr).contains("NOT_SERVING"),
        "{}",
        String::from_utf8_lossy(&probed.stderr)
    );
    assert!(
        runner.log().contains("is the Consul agent reachable"),
        "{}",
        runner.log()
    );

    // The agent comes up: the runner gets its leaf, registers and turns SERVING.
    let registry = Registry::spawn(
        &format!("127.0.0.1:{consul_port}"),
        RegistryConfig::default(),
    )
    .await
    .unwrap();
    let consul = consul(&registry);
    passing(&consul).await;
    assert!(probe(&health).status.success());
}

#[tokio::test]
async fn a_mesh_runner_whose_token_may_not_write_its_service_says_so() {
    let registry = registry(RegistryConfig {
        acl_enabled: true,
        acl_default_policy: plugworker_embedded_consul::IntentionAction::Deny,
        acl_bootstrap_token: Some("management-secret".into()),
        ..RegistryConfig::default()
    })
    .await;
    let listen = format!("127.0.0.1:{}", free_port());
    let health = format!("127.0.0.1:{}", free_port());
    let runner = start_runner(
        &registry.url(),
        &listen,
        &health,
        &[("CONSUL_HTTP_TOKEN", "not-a-token")],
    );
    eventually(
        Duration::from_secs(30),
        "the runner's explanation",
        || async {
            let log = runner.log();
            (log.contains("no Connect certificate for this runner yet") && log.contains("403"))
                .then_some(())
        },
    )
    .await;
    assert!(
        runner.log().contains("needs service:write"),
        "{}",
        runner.log()
    );
    assert!(!probe(&health).status.success());
    // Nothing registered (an anonymous catalog read would be refused: ask as management).
    let management =
        plugworker_consul_client::ConsulClient::new(plugworker_consul_client::ConsulConfig {
            address: registry.url(),
            token: Some("management-secret".into()),
            ..Default::default()
        })
        .unwrap();
    let (services, _) = management
        .catalog_services(Default::default())
        .await
        .unwrap();
    assert!(!services.contains_key("test-runner"), "{services:?}");
}

/// Waits until the test-runner is registered and passing in the Connect health view.
async fn passing(consul: &plugworker_consul_client::ConsulClient) {
    eventually(
        Duration::from_secs(60),
        "the runner registered and passing",
        || async {
            consul
                .health_connect("test-runner", &[], true, Default::default())
                .await
                .ok()
                .filter(|(entries, _)| !entries.is_empty())
        },
    )
    .await;
}

/// The runner's metrics text.
async fn metrics(address: &str) -> String {
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Authorization is re-checked on open connections: when an intention flips to deny, the
/// runner's server sends GOAWAY on the controller's open connection within two authorize
/// cache TTLs (1 s here: re-checked every TTL, with a decision up to one TTL old). The call in flight on it
/// finishes (no job lost), and the next call, on a new connection, is refused (a
/// transport error, which the controller retries elsewhere). Without the re-check the open
/// connection kept serving after the deny, for as long as the controller kept it.
#[tokio::test]
async fn a_denied_intention_closes_an_open_connection_within_the_authorize_ttl() {
    let registry = registry(RegistryConfig::default()).await;
    let consul = consul(&registry);
    let listen = format!("127.0.0.1:{}", free_port());
    let health = format!("127.0.0.1:{}", free_port());
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let runner = start_runner(
        &registry.url(),
        &listen,
        &health,
        &[
            ("PLUGWORKER_MESH_AUTHORIZE_CACHE_TTL", "1s"),
            ("PLUGWORKER_METRICS_ADDRESS", &metrics_address),
        ],
    );
    passing(&consul).await;
    let controller = identity(&registry, "controller").await;
    let channel = mesh_channel(&controller, "test-runner", listen.parse().unwrap());
    let mut client = RunnerClient::new(channel);
    let run = |message: &str, delay_ms: u64| plugworker_rpc::runner::v1::RunRequest {
        algorithm: "echo".into(),
        payload: serde_json::to_vec(&serde_json::json!({"message": message, "delay_ms": delay_ms}))
            .unwrap(),
    };
    client
        .run(run("allowed", 0))
        .await
        .expect("allowed at first");

    // A call in flight while the deny lands: 2.5 s, past the TTL.
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        let request = run("in flight", 2_500);
        async move { client.run(request).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    intention(&registry, "controller", "test-runner", "deny").await;
    let denied = std::time::Instant::now();
    let deauthorized = eventually(Duration::from_secs(10), "the connection closed", || async {
        let text = metrics(&metrics_address).await;
        plugworker_testkit::metric_value(
            &text,
            "plugworker_runner_server_closed_total",
            &[("port", "main"), ("reason", "deauthorized")],
        )
        .filter(|closed| *closed >= 1.0)
    })
    .await;
    let elapsed = denied.elapsed();
    assert_eq!(deauthorized, 1.0);
    // A re-check reuses a decision up to one TTL old, and runs every TTL: within two
    // TTLs, plus a second for the agent's answer and a scrape on a loaded machine.
    assert!(elapsed < Duration::from_secs(3), "closed after {elapsed:?}");

    let finished = in_flight
        .await
        .unwrap()
        .expect("the call in flight finishes");
    assert!(String::from_utf8_lossy(&finished.into_inner().result).contains("in flight"));
    // A new connection is refused after its handshake (a transport error to tonic).
    client
        .run(run("after the deny", 0))
        .await
        .expect_err("refused on a new connection");
    assert!(
        runner
            .log()
            .contains("mesh connection no longer authorized"),
        "{}",
        runner.log()
    );
}

/// A TCP proxy to `target` that can be taken down: while down it closes every
/// connection, open ones included (an agent that does not answer).
struct Outage {
    address: String,
    down: tokio::sync::watch::Sender<bool>,
}

impl Outage {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (down, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut watch = watch.clone();
                if *watch.borrow_and_update() {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Self { address, down }
    }

    async fn for_(&self, outage: Duration) {
        self.down.send_replace(true);
        tokio::time::sleep(outage).await;
        self.down.send_replace(false);
    }
}

/// One failed agent call does not close open connections: an open connection's last
/// allow stands through one failed re-check (an agent outage shorter than the authorize
/// TTL), and the connection is closed once the agent has failed two re-checks in a row
/// (fail closed). Before, the first failed re-check closed every open connection.
#[tokio::test]
async fn an_agent_outage_shorter_than_the_ttl_closes_no_connection_and_a_longer_one_does() {
    let registry = registry(RegistryConfig::default()).await;
    let consul = consul(&registry);
    let agent = Outage::start(registry.url().trim_start_matches("http://").to_string()).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let health = format!("127.0.0.1:{}", free_port());
    let metrics_address = format!("127.0.0.1:{}", free_port());
    let runner = start_runner(
        &format!("http://{}", agent.address),
        &listen,
        &health,
        &[
            ("PLUGWORKER_MESH_AUTHORIZE_CACHE_TTL", "2s"),
            ("PLUGWORKER_METRICS_ADDRESS", &metrics_address),
        ],
    );
    passing(&consul).await;
    let controller = identity(&registry, "controller").await;
    let mut client = RunnerClient::new(mesh_channel(
        &controller,
        "test-runner",
        listen.parse().unwrap(),
    ));
    let run = |message: &str| plugworker_rpc::runner::v1::RunRequest {
        algorithm: "echo".into(),
        payload: serde_json::to_vec(&serde_json::json!({"message": message})).unwrap(),
    };
    client.run(run("before")).await.expect("allowed");
    let deauthorized = || async {
        let text = metrics(&metrics_address).await;
        plugworker_testkit::metric_value(
            &text,
            "plugworker_runner_server_closed_total",
            &[("port", "main"), ("reason", "deauthorized")],
        )
        .unwrap_or(0.0)
    };

    // Shorter than the TTL, over the connection's first re-check (2 s after it opened):
    // that re-check fails, and it is tolerated.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    agent.for_(Duration::from_millis(1_900)).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        deauthorized().await,
        0.0,
        "closed by a short agent outage: {}",
        runner.log()
    );
    client.run(run("after")).await.expect("still allowed");

    // Two TTLs and more: the second failed re-check closes it.
    agent.for_(Duration::from_millis(5_000)).await;
    eventually(
        Duration::from_secs(5),
        "closed by a long agent outage",
        || async { (deauthorized().await >= 1.0).then_some(()) },
    )
    .await;
}
