//! `plugworker call` in the mesh picks only an instance that carries the algorithm's tag,
//! though `/v1/health/connect/<service>` hands out every Connect-native instance of the
//! service whatever `?tag=` says (Consul ignores it there, and so does the embedded
//! registry). Real processes: the embedded registry with ACLs and intentions, a mesh
//! `test-runner`, and the `plugworker` binary.

use crate::common;

use common::Stack;
use plugworker_consul_client::{ServiceConnect, ServiceRegistration};
use plugworker_discovery::{META_ROLE, ROLE_RUNNER};
use plugworker_testkit::bin_path;
use serde_json::Value;
use std::time::Duration;

#[tokio::test]
async fn call_skips_instances_of_the_service_that_lack_the_algorithms_tag() {
    let mut stack = Stack::start(Duration::from_secs(30), 5).await;
    let (_runner, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;
    let operator = stack.admit_runner("operator").await;
    stack
        .consul()
        .apply_service_intentions(&plugworker_consul_client::admin::ServiceIntentions {
            name: "test-runner".into(),
            sources: vec![plugworker_consul_client::admin::IntentionSource {
                name: "operator".into(),
                action: plugworker_consul_client::admin::IntentionAction::Allow,
                description: String::new(),
            }],
        })
        .await
        .unwrap();
    // A second Connect-native instance of the same service serving another algorithm
    // only, at an address where nothing listens: calling it for `add` would fail.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    stack
        .consul_with_token(Some(&stack.tokens["test-runner"]))
        .register_service(&ServiceRegistration {
            id: "test-runner-other".into(),
            name: "test-runner".into(),
            tags: vec!["something_else".into()],
            address: "127.0.0.1".into(),
            port,
            meta: [(META_ROLE.to_string(), ROLE_RUNNER.to_string())].into(),
            connect: Some(ServiceConnect { native: true }),
            ..Default::default()
        })
        .await
        .unwrap();
    stack.wait_passing("test-runner", 2).await;

    // A random choice between two instances: eight calls all land on the right one
    // with chance 1/256 if tags were not checked.
    for _ in 0..8 {
        let output = tokio::process::Command::new(bin_path("plugworker"))
            .args([
                "call",
                "--algorithm",
                "add",
                "--payload",
                r#"{"numbers": [2, 3]}"#,
                "--timeout",
                "10s",
                "--mesh-service",
                "operator",
            ])
            .env("CONSUL_HTTP_ADDR", stack.consul_url())
            .env("CONSUL_HTTP_TOKEN", &operator)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(result["sum"], 5.0);
    }
}
