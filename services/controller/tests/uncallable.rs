//! A controller in mTLS mode beside runners it cannot call (plaintext instances, which
//! `/v1/health/connect` does not list) says so, once per service, instead of only failing
//! their jobs `no_runner`. Real processes: the embedded registry with ACLs and intentions,
//! moto SQS and `plugworker controller`.

use crate::common;

use common::Stack;
use plugworker_consul_client::{ServiceConnect, ServiceRegistration};
use plugworker_discovery::{META_ROLE, ROLE_RUNNER};
use plugworker_testkit::eventually;
use std::time::Duration;

const WARNING: &str = "none is Connect-native";

fn plaintext_instance(id: &str, port: u16) -> ServiceRegistration {
    ServiceRegistration {
        id: id.into(),
        name: "test-runner".into(),
        tags: vec!["add".into()],
        address: "127.0.0.1".into(),
        port,
        meta: [(META_ROLE.to_string(), ROLE_RUNNER.to_string())].into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn plaintext_only_instances_are_named_once_per_service() {
    let stack = Stack::start(Duration::from_secs(30), 5).await;
    let runner = stack.consul_with_token(Some(&stack.tokens["test-runner"]));
    runner
        .register_service(&plaintext_instance("plain-1", 1))
        .await
        .unwrap();
    stack.wait_passing("test-runner", 1).await;
    // Debug for the resolver: its "runner instances changed" lines show each new view.
    // (Processes inherit the test's RUST_LOG; nextest runs each test in its own process,
    // and nothing else reads the environment concurrently here.)
    unsafe { std::env::set_var("RUST_LOG", "info,plugworker_discovery::resolver=debug") };
    let (controller, _) = stack.controller(&[]).await;
    let views = || {
        controller
            .log()
            .lines()
            .filter(|l| l.contains("runner instances changed") && l.contains("test-runner"))
            .count()
    };
    let warnings = || {
        controller
            .log()
            .lines()
            .filter(|l| l.contains(WARNING) && l.contains("test-runner"))
            .count()
    };
    eventually(Duration::from_secs(60), "the warning", || async {
        (warnings() > 0).then_some(())
    })
    .await;
    // The view changes twice more (a Connect-native instance comes and goes), and each
    // empty view is checked again: still one warning.
    assert!(views() > 0, "debug lines are on: {}", controller.log());
    let seen = views();
    let native = ServiceRegistration {
        connect: Some(ServiceConnect { native: true }),
        ..plaintext_instance("native-1", 3)
    };
    runner.register_service(&native).await.unwrap();
    stack.wait_passing("test-runner", 2).await;
    runner.deregister_service("native-1").await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the resolver seeing both changes",
        || async { (views() >= seen + 2).then_some(()) },
    )
    .await;
    assert_eq!(warnings(), 1, "{}", controller.log());
}
