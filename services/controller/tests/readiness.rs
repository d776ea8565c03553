//! A controller that has never heard from Consul waits: it receives no job until the
//! resolver's first answer (`/readyz` says 503 meanwhile, `/healthz` stays 200), so jobs
//! queued during the outage are not failed `no_runner`. Real processes: moto SQS, the
//! embedded registry, a `test-runner` and `plugworker controller`.

use crate::common;

use common::{Stack, job};
use plugworker_testkit::{ClosedPort, eventually, metric_value};
use serde_json::json;
use std::time::Duration;

/// Forwards every connection on `closed`, from now on, to `target`: the controller's way to
/// the registry, opened only when the test says Consul is back for it.
fn forward(closed: ClosedPort, target: String) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::from_std(closed.open()).unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

async fn status(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn jobs_queued_before_consul_first_answers_wait_and_then_all_succeed() {
    // Two receives per job, a 1 s wait for a runner, fast retries: a controller that
    // failed jobs on an empty view would give all five a final `no_runner` within ~4 s.
    let mut stack = Stack::start_plain(Duration::from_secs(30), 2).await;
    let (_runner, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;

    // The controller's Consul is an address where nothing listens yet: the registry (and
    // the runner in it) is up, but this controller has never heard from it.
    let registry = stack.registry_address.clone();
    let unreachable = ClosedPort::new();
    stack.registry_address = unreachable.address();
    let (controller, health) = stack
        .controller(&[
            "--runner-wait",
            "1s",
            "--retry-base",
            "200ms",
            "--retry-max",
            "500ms",
            "--no-register",
        ])
        .await;
    stack.registry_address = registry.clone();
    let readyz = health.replace("/healthz", "/readyz");
    let metrics = health.replace("/healthz", "/metrics");
    eventually(
        Duration::from_secs(60),
        "the controller's /healthz",
        || async { (status(&health).await == Some(200)).then_some(()) },
    )
    .await;
    assert_eq!(
        status(&readyz).await,
        Some(503),
        "not ready before Consul answered"
    );

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(stack.submit(job("add", json!({"numbers": [i, 1]}))).await);
    }
    // Longer than the ~4 s in which a controller failing on the empty view finishes them.
    let early = stack
        .sqs
        .collect_results(&stack.queues.results, 1, Duration::from_secs(8))
        .await;
    assert!(
        early.is_empty(),
        "results before Consul answered: {early:#?}\n{}",
        controller.log()
    );
    assert_eq!(
        stack.sqs.counts(&stack.queues.jobs).await,
        (5, 0),
        "the jobs are still waiting in the queue, not received"
    );
    assert_eq!(status(&health).await, Some(200), "alive while waiting");
    assert_eq!(status(&readyz).await, Some(503));

    let _path = forward(unreachable, registry);
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 5, Duration::from_secs(60))
        .await;
    assert_eq!(results.len(), 5, "{results:#?}\n{}", controller.log());
    for result in &results {
        assert_eq!(result["status"], "ok", "{result}");
        assert!(ids.contains(&result["message_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(status(&readyz).await, Some(200));
    let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    assert_eq!(
        metric_value(&text, "plugworker_consul_ready", &[]),
        Some(1.0)
    );
}
