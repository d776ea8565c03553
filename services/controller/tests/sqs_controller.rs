//! The controller end to end: moto SQS, the embedded registry, real runner processes and
//! real `plugworker controller` processes.

use crate::common;

use common::{Stack, job};
use plugworker_testkit::eventually;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[tokio::test]
async fn fifty_jobs_over_two_algorithms_all_succeed_and_leave_nothing_behind() {
    let stack = Stack::start(Duration::from_secs(30), 5).await;
    let (_nlp, _) = stack.runner("nlp-runner", &[]).await;
    let (_test, _) = stack.runner("test-runner", &[]).await;
    let (_controller, _) = stack.controller(&[]).await;
    let texts = [
        "The weather is lovely today and we are going for a long walk.",
        "Il fait très beau aujourd'hui et nous allons nous promener.",
    ];
    let mut expected = HashMap::new();
    for i in 0..25 {
        let text = texts[i % 2];
        let id = stack.submit(json!({"id": format!("lang-{i}"), "algorithm": "language_detection", "payload": {"text": text}})).await;
        expected.insert(id, if i % 2 == 0 { json!("en") } else { json!("fr") });
        let id = stack.submit(json!({"id": format!("add-{i}"), "algorithm": "add", "payload": {"numbers": [i, 1]}})).await;
        expected.insert(id, json!((i + 1) as f64));
    }
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 50, Duration::from_secs(90))
        .await;
    assert_eq!(results.len(), 50, "{results:#?}");
    let mut seen = HashSet::new();
    for result in &results {
        assert_eq!(result["status"], "ok", "{result}");
        let message_id = result["message_id"].as_str().unwrap();
        assert!(
            seen.insert(message_id.to_string()),
            "duplicate result for {message_id}"
        );
        let value = match result["algorithm"].as_str().unwrap() {
            "language_detection" => result["result"]["language"].clone(),
            "add" => result["result"]["sum"].clone(),
            other => panic!("unexpected algorithm {other}"),
        };
        assert_eq!(value, expected[message_id], "{result}");
        assert!(
            result["runner"]["instance_id"]
                .as_str()
                .unwrap()
                .contains("-runner-")
        );
        assert_eq!(result["attempt"], 1);
    }
    eventually(
        Duration::from_secs(10),
        "empty jobs queue and DLQ",
        || async { (stack.queue_depths().await == ((0, 0), (0, 0))).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_job_on_a_killed_runner_is_completed_by_another_instance() {
    let stack = Stack::start(Duration::from_secs(6), 5).await;
    let (first, first_addresses) = stack
        .runner_reporting("test-runner", &[common::METRICS_ON_ANY_PORT])
        .await;
    let first_address = first_addresses.grpc();
    stack.wait_passing("test-runner", 1).await;
    let (_controller, _) = stack.controller(&["--retry-base", "500ms"]).await;
    let message_id = stack
        .submit(job("echo", json!({"message": "survive", "delay_ms": 3000})))
        .await;
    // The job runs on the only instance; then a second one comes up.
    eventually(Duration::from_secs(30), "the job running", || async {
        let running = common::runner_metric(
            first_addresses.metrics(),
            "plugworker_runner_runs_in_flight",
            &[("algorithm", "echo")],
        )
        .await;
        (running == 1.0).then_some(())
    })
    .await;
    let (_second, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 2).await;
    first.signal("KILL");

    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 1, Duration::from_secs(60))
        .await;
    assert!(!results.is_empty(), "the job was lost");
    let ok: Vec<_> = results.iter().filter(|r| r["status"] == "ok").collect();
    assert_eq!(ok.len(), 1, "{results:#?}");
    assert_eq!(ok[0]["message_id"], message_id.as_str());
    assert_eq!(ok[0]["result"]["message"], "survive");
    assert_ne!(
        ok[0]["runner"]["address"], first_address,
        "completed by the other instance"
    );
    for result in &results {
        assert_eq!(
            result["message_id"],
            message_id.as_str(),
            "duplicates carry the same message id"
        );
    }
    eventually(Duration::from_secs(10), "an empty jobs queue", || async {
        (stack.queue_depths().await.0 == (0, 0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_job_waits_for_a_runner_that_starts_later() {
    let stack = Stack::start(Duration::from_secs(30), 5).await;
    let (controller, _) = stack
        .controller(&["--retry-base", "1s", "--runner-wait", "3s"])
        .await;
    let message_id = stack.submit(job("add", json!({"numbers": [40, 2]}))).await;
    // The runner comes once the wait for it ended without one.
    eventually(Duration::from_secs(30), "a failed attempt", || async {
        controller
            .log()
            .contains("job failed transiently; it will be redelivered")
            .then_some(())
    })
    .await;
    let (_runner, _) = stack.runner("test-runner", &[]).await;
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 1, Duration::from_secs(60))
        .await;
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0]["status"], "ok");
    assert_eq!(results[0]["message_id"], message_id.as_str());
    assert_eq!(results[0]["result"]["sum"], 42.0);
    assert!(
        results[0]["attempt"].as_u64().unwrap() >= 2,
        "it was released and redelivered meanwhile"
    );
}

#[tokio::test]
async fn malformed_jobs_get_an_error_result_and_go_to_the_dlq_after_one_receive() {
    let stack = Stack::start(Duration::from_secs(30), 5).await;
    let (_runner, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;
    let (_controller, _) = stack.controller(&[]).await;
    let bodies = [
        ("{this is not json", "bad_json"),
        (r#"{"payload": {"numbers": [1]}}"#, "missing_algorithm"),
        (
            r#"{"algorithm": "add", "payload": {"numbers": "one"}}"#,
            "invalid_payload",
        ),
    ];
    let mut expected = HashMap::new();
    for (body, code) in bodies {
        expected.insert(stack.sqs.send(&stack.queues.jobs, body).await, code);
    }
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 3, Duration::from_secs(60))
        .await;
    assert_eq!(results.len(), 3, "{results:#?}");
    for result in &results {
        let code = expected[result["message_id"].as_str().unwrap()];
        assert_eq!(result["status"], "error");
        assert_eq!(result["error"]["code"], code, "{result}");
        assert_eq!(result["error"]["class"], "permanent");
        assert_eq!(result["attempt"], 1, "never retried");
        assert!(!result["error"]["message"].as_str().unwrap().is_empty());
    }
    let schema_error = results
        .iter()
        .find(|r| r["error"]["code"] == "invalid_payload")
        .unwrap();
    assert!(
        schema_error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/numbers"),
        "{schema_error}"
    );

    let dead = stack.sqs.drain(&stack.queues.dlq).await;
    assert_eq!(dead.len(), 3);
    for message in &dead {
        let attributes = message.message_attributes().unwrap();
        let original = attributes["plugworker_original_message_id"]
            .string_value()
            .unwrap();
        let code = attributes["plugworker_error_code"].string_value().unwrap();
        assert_eq!(expected[original], code);
    }
    assert_eq!(stack.sqs.counts(&stack.queues.jobs).await, (0, 0));
}

#[tokio::test]
async fn a_runner_that_is_always_unavailable_sends_the_job_to_the_dlq_after_max_receive_count() {
    let stack = Stack::start(Duration::from_secs(30), 3).await;
    let (_runner, _) = stack
        .runner("test-runner", &[("TEST_RUNNER_ALWAYS_UNAVAILABLE", "1")])
        .await;
    stack.wait_passing("test-runner", 1).await;
    let (_controller, _) = stack.controller(&["--retry-base", "300ms"]).await;
    let message_id = stack
        .submit(job("echo", json!({"message": "doomed"})))
        .await;

    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 1, Duration::from_secs(60))
        .await;
    assert_eq!(
        results.len(),
        1,
        "only the last attempt publishes a result: {results:#?}"
    );
    let result = &results[0];
    assert_eq!(result["message_id"], message_id.as_str());
    assert_eq!(result["status"], "error");
    assert_eq!(result["error"]["code"], "runner_unavailable");
    assert_eq!(result["error"]["class"], "transient");
    assert_eq!(result["attempt"], 3);
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("backend is down")
    );

    eventually(Duration::from_secs(30), "the job in the DLQ", || async {
        let ((jobs_visible, jobs_hidden), (dlq_visible, _)) = stack.queue_depths().await;
        (jobs_visible + jobs_hidden == 0 && dlq_visible == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn jobs_keep_flowing_while_the_registry_is_down_and_changes_resume_after() {
    // Plaintext: the embedded registry restarts empty, as a new cluster with a new CA.
    let mut stack = Stack::start_plain(Duration::from_secs(30), 5).await;
    let (_nlp, _) = stack.runner("nlp-runner", &[]).await;
    stack.wait_passing("nlp-runner", 1).await;
    let (_controller, _) = stack.controller(&[]).await;
    let text = json!({"text": "This is an English sentence about the registry going away."});
    for _ in 0..3 {
        stack.submit(job("language_detection", text.clone())).await;
    }
    assert_eq!(
        stack
            .sqs
            .collect_results(&stack.queues.results, 3, Duration::from_secs(30))
            .await
            .len(),
        3
    );

    stack.stop_registry().await;
    for _ in 0..3 {
        stack.submit(job("language_detection", text.clone())).await;
    }
    let during = stack
        .sqs
        .collect_results(&stack.queues.results, 3, Duration::from_secs(30))
        .await;
    assert_eq!(during.len(), 3, "the last known instances keep serving");
    assert!(during.iter().all(|r| r["status"] == "ok"), "{during:#?}");

    // Back, empty: the runner registers again, and a new runner kind is picked up.
    stack.restart_registry().await;
    let (_test, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;
    stack
        .submit(job("add", json!({"numbers": [1, 2, 3]})))
        .await;
    let after = stack
        .sqs
        .collect_results(&stack.queues.results, 1, Duration::from_secs(60))
        .await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["status"], "ok", "{:#?}", after[0]);
    assert_eq!(after[0]["result"]["sum"], 6.0);
}

#[tokio::test]
async fn a_job_three_times_longer_than_the_visibility_timeout_is_not_redelivered() {
    let stack = Stack::start(Duration::from_secs(2), 5).await;
    let (_runner, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;
    let (_controller, _) = stack.controller(&[]).await;
    let message_id = stack
        .submit(job("echo", json!({"message": "slow", "delay_ms": 6000})))
        .await;
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 1, Duration::from_secs(30))
        .await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["status"], "ok");
    assert_eq!(results[0]["message_id"], message_id.as_str());
    assert_eq!(
        results[0]["attempt"], 1,
        "the message was not delivered again while it ran"
    );
    // Nothing else arrives: no second run finishes later. A bounded wait: an absence has
    // no event to wait for.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(stack.sqs.drain(&stack.queues.results).await.is_empty());
    assert_eq!(stack.sqs.counts(&stack.queues.jobs).await, (0, 0));
}

#[tokio::test]
async fn sigterm_under_load_exits_zero_and_loses_nothing() {
    let stack = Stack::start(Duration::from_secs(30), 5).await;
    let (_runner, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;
    let (mut controller, health) = stack
        .controller(&["--max-in-flight", "4", "--shutdown-grace", "10s"])
        .await;
    let healthy = eventually(Duration::from_secs(10), "the controller's /healthz", || {
        let health = health.clone();
        async move { reqwest::get(&health).await.ok() }
    })
    .await;
    assert_eq!(healthy.status(), 200);
    // The container health check (`plugworker healthcheck`) agrees.
    let health_address = health
        .trim_start_matches("http://")
        .trim_end_matches("/healthz")
        .to_string();
    let probe = healthcheck(&health_address);
    assert!(probe.status.success(), "{probe:?}");
    let mut submitted = HashSet::new();
    for i in 0..20 {
        submitted.insert(
            stack
                .submit(job(
                    "echo",
                    json!({"message": format!("m{i}"), "delay_ms": 700}),
                ))
                .await,
        );
    }
    let mut results = stack
        .sqs
        .collect_results(&stack.queues.results, 4, Duration::from_secs(30))
        .await;
    controller.signal("TERM");
    let status = controller.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        reqwest::get(&health).await.is_err(),
        "the health endpoint is gone after exit"
    );
    let probe = healthcheck(&health_address);
    assert!(!probe.status.success());
    assert!(
        String::from_utf8_lossy(&probe.stderr).contains("no controller answers at"),
        "{probe:?}"
    );
    // Nothing stays invisible: unfinished jobs were released, finished ones deleted.
    let (visible, hidden) = stack.sqs.counts(&stack.queues.jobs).await;
    assert_eq!(hidden, 0, "messages left invisible after shutdown");
    results.extend(
        stack
            .sqs
            .drain(&stack.queues.results)
            .await
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap()).unwrap()),
    );
    let done: HashSet<String> = results
        .iter()
        .map(|r| r["message_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        done.len() as u64 + visible,
        20,
        "every job is either done or back in the queue"
    );
    assert!(visible > 0, "the test should stop the controller mid-load");

    let (_next, _) = stack.controller(&[]).await;
    let rest = stack
        .sqs
        .collect_results(
            &stack.queues.results,
            visible as usize,
            Duration::from_secs(60),
        )
        .await;
    let mut all = done.clone();
    all.extend(
        rest.iter()
            .map(|r| r["message_id"].as_str().unwrap().to_string()),
    );
    assert_eq!(all, submitted, "no job lost");
}

#[tokio::test]
async fn submit_and_results_commands_use_the_queues() {
    use plugworker_testkit::bin_path;
    use plugworker_testkit::sqs::AWS_ENV;
    use std::process::Command;
    let stack = Stack::start(Duration::from_secs(30), 5).await;
    let plugworker = |args: &[&str]| {
        Command::new(bin_path("plugworker"))
            .args(args)
            .envs(AWS_ENV)
            .env("PLUGWORKER_SQS_ENDPOINT", &stack.sqs.endpoint)
            .env("PLUGWORKER_JOBS_QUEUE_URL", &stack.queues.jobs)
            .env("PLUGWORKER_RESULTS_QUEUE_URL", &stack.queues.results)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let output = plugworker(&[
        "submit",
        "--algorithm",
        "language_detection",
        "--id",
        "cli-1",
        "--text",
        "Hallo Welt",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let message_id = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let sent = stack.sqs.drain(&stack.queues.jobs).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].message_id().unwrap(), message_id);
    let body: serde_json::Value = serde_json::from_str(sent[0].body().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"id": "cli-1", "algorithm": "language_detection", "payload": {"text": "Hallo Welt"}})
    );

    let output = plugworker(&["submit", "--algorithm", "x", "--payload", "{broken"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--payload is not valid JSON"));

    for n in 0..3 {
        stack
            .sqs
            .send(
                &stack.queues.results,
                &json!({"message_id": format!("m{n}")}).to_string(),
            )
            .await;
    }
    let output = plugworker(&["results"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 3);
    assert_eq!(
        stack.sqs.counts(&stack.queues.results).await,
        (0, 0),
        "printed results are removed"
    );
}

/// `plugworker healthcheck`, as the controller image's HEALTHCHECK runs it.
fn healthcheck(health_address: &str) -> std::process::Output {
    std::process::Command::new(plugworker_testkit::bin_path("plugworker"))
        .args([
            "healthcheck",
            "--timeout",
            "2s",
            "--health-address",
            health_address,
        ])
        .output()
        .unwrap()
}
