//! Pipeline jobs end to end (docs/delivery.md, "Pipelines"): moto SQS, the embedded
//! registry, real runner processes and a real `plugworker controller`. Each test checks
//! one promise from what the processes themselves report: the runners' start and end
//! times, their run counters, the one final result per job.

use crate::common;

use common::proxy::FaultProxy;
use common::{Stack, runner_runs};
use plugworker_discovery::policy::controller_rules;
use plugworker_jobs::pipeline::KV_PREFIX;
use plugworker_testkit::otlp::{KIND_CLIENT, KIND_CONSUMER, KIND_SERVER, OtlpReceiver};
use plugworker_testkit::{Process, eventually, metric_value};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// Submits a job running `pipeline` (an object, or a stored pipeline's name).
async fn submit(stack: &Stack, pipeline: Value, payload: Value) -> String {
    stack
        .submit(json!({"pipeline": pipeline, "payload": payload}))
        .await
}

/// Waits for one result per message id in `ids`, and returns them by message id.
async fn results_of(stack: &Stack, ids: &[&str], within: Duration) -> HashMap<String, Value> {
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, ids.len(), within)
        .await;
    let mut by_id = HashMap::new();
    for result in results {
        let id = result["message_id"].as_str().unwrap().to_string();
        assert!(by_id.insert(id, result).is_none(), "two results for a job");
    }
    for id in ids {
        assert!(by_id.contains_key(*id), "no result for {id}: {by_id:#?}");
    }
    by_id
}

/// A stack (30 s visibility, 3 receives) with a passing `test-runner` and a controller
/// started with `flags`; the processes, and the controller's health URL.
async fn started(flags: &[&str]) -> (Stack, [Process; 2], String) {
    let stack = Stack::start(Duration::from_secs(30), 3).await;
    let (runner, _) = test_runner(&stack).await;
    let (controller, health) = stack.controller(flags).await;
    (stack, [runner, controller], health)
}

/// A passing `test-runner`, and the address of its metrics.
async fn test_runner(stack: &Stack) -> (Process, String) {
    test_runner_with(stack, &[], 1).await
}

/// A `test-runner` with `envs`, once `passing` instances are, and the address its
/// metrics are served on (bound to port 0; the runner logs the address it got).
async fn test_runner_with(
    stack: &Stack,
    envs: &[(&str, &str)],
    passing: usize,
) -> (Process, String) {
    let mut envs = envs.to_vec();
    envs.push(("PLUGWORKER_METRICS_ADDRESS", "127.0.0.1:0"));
    let (runner, _) = stack.runner("test-runner", &envs).await;
    let metrics = eventually(
        Duration::from_secs(30),
        "the runner's metrics address",
        || {
            let log = runner.log();
            async move {
                let (_, rest) = log.split_once("serving metrics")?;
                let (_, rest) = rest.split_once("http://")?;
                Some(rest.split_once("/metrics")?.0.to_string())
            }
        },
    )
    .await;
    stack.wait_passing("test-runner", passing).await;
    (runner, metrics)
}

/// The instance id a runner logged at start.
fn instance_id(runner: &Process) -> String {
    let log = runner.log();
    let (_, rest) = log
        .split_once(" instance=")
        .unwrap_or_else(|| panic!("no instance id in the runner's log: {log}"));
    rest.split_whitespace().next().unwrap().to_string()
}

/// A step's field as a number.
fn ms(result: &Value, step: &str, field: &str) -> u64 {
    result["result"][step][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{step}.{field} in {result}"))
}

#[tokio::test]
async fn independent_steps_run_at_the_same_time_and_a_dependent_one_after_both() {
    let (stack, _processes, health) = started(&[]).await;
    let id = submit(
        &stack,
        json!({
            "a": {"algorithm": "echo", "input": {"message": "from a", "delay_ms": 1500}},
            "b": {"algorithm": "echo", "input": {"message": "from b", "delay_ms": 1500}},
            "c": {"algorithm": "echo", "input": {"message": "/a/message", "delay_ms": {"$literal": 0}}},
        }),
        json!({}),
    )
    .await;
    let results = results_of(&stack, &[&id], Duration::from_secs(60)).await;
    let result = &results[&id];
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["algorithm"], Value::Null);
    assert_eq!(result["pipeline"], json!({"name": "inline"}));
    assert_eq!(result["attempt"], 1);
    // The runner's own clock: a and b overlapped, c began after both ended.
    let (a_start, a_end) = (
        ms(result, "a", "started_unix_ms"),
        ms(result, "a", "finished_unix_ms"),
    );
    let (b_start, b_end) = (
        ms(result, "b", "started_unix_ms"),
        ms(result, "b", "finished_unix_ms"),
    );
    let c_start = ms(result, "c", "started_unix_ms");
    assert!(
        a_start < b_end && b_start < a_end,
        "a ran {a_start}..{a_end}, b {b_start}..{b_end}: no overlap"
    );
    assert!(
        c_start >= a_end.max(b_end),
        "c began at {c_start}: {result}"
    );
    assert_eq!(result["result"]["c"]["message"], "from a");
    let keys: Vec<&String> = result["result"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["a", "b", "c"]);
    for step in ["a", "b", "c"] {
        let report = &result["steps"][step];
        assert_eq!(report["algorithm"], "echo", "{report}");
        assert_eq!(report["attempt"], 1, "the delivery count");
        assert_eq!(report["calls"], 1);
        assert!(report["runner"]["instance_id"].is_string(), "{report}");
        assert_eq!(report["result"], result["result"][step]);
    }
    eprintln!(
        "a {a_start}..{a_end}, b {b_start}..{b_end}, c from {c_start}; job total {} ms",
        result["timings"]["total_ms"]
    );

    let metrics_url = health.replace("/healthz", "/metrics");
    let text = eventually(Duration::from_secs(10), "the pipeline job counted", || {
        let url = metrics_url.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            metric_value(
                &text,
                "plugworker_pipeline_jobs_total",
                &[("pipeline", "inline"), ("status", "ok")],
            )
            .is_some()
            .then_some(text)
        }
    })
    .await;
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(
        value(
            "plugworker_pipeline_jobs_total",
            &[("pipeline", "inline"), ("status", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "plugworker_pipeline_steps_total",
            &[("algorithm", "echo"), ("status", "ok")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            "plugworker_pipeline_step_duration_seconds_count",
            &[("algorithm", "echo")]
        ),
        Some(3.0)
    );
}

#[tokio::test]
async fn with_one_run_slot_independent_steps_take_turns_and_the_job_finishes() {
    let (stack, _processes, _) = started(&["--max-in-flight", "1"]).await;
    let id = submit(
        &stack,
        json!({
            "a": {"algorithm": "echo", "input": {"message": "a", "delay_ms": 300}},
            "b": {"algorithm": "echo", "input": {"message": "b", "delay_ms": 300}},
        }),
        json!({}),
    )
    .await;
    let results = results_of(&stack, &[&id], Duration::from_secs(60)).await;
    let result = &results[&id];
    assert_eq!(result["status"], "ok", "{result}");
    // The job's own slot only: one step after the other, never a wait for a second slot.
    let (a_start, a_end) = (
        ms(result, "a", "started_unix_ms"),
        ms(result, "a", "finished_unix_ms"),
    );
    let (b_start, b_end) = (
        ms(result, "b", "started_unix_ms"),
        ms(result, "b", "finished_unix_ms"),
    );
    assert!(
        b_start >= a_end || a_start >= b_end,
        "overlapped on one slot: {result}"
    );
}

#[tokio::test]
async fn a_step_past_the_job_timeout_is_transient_and_the_redelivery_runs_the_pipeline_from_the_start()
 {
    let stack = Stack::start(Duration::from_secs(30), 2).await;
    let (_runner, metrics) = test_runner(&stack).await;
    let (_controller, _) = stack
        .controller(&[
            "--job-timeout",
            "4s",
            "--retry-base",
            "100ms",
            "--retry-max",
            "200ms",
        ])
        .await;
    // Each call of `slow` gives up after its 500 ms step timeout (some 5 calls fit in the
    // job's 4 s; without the step timeout, the first call would take them all).
    let id = submit(
        &stack,
        json!({
            "first": {"algorithm": "echo"},
            "slow": {"algorithm": "echo", "timeout": "500ms", "input": {"message": "/first/message", "delay_ms": 5000}},
        }),
        json!({"message": "m"}),
    )
    .await;
    let results = results_of(&stack, &[&id], Duration::from_secs(60)).await;
    let result = &results[&id];
    assert_eq!(result["status"], "error", "{result}");
    assert_eq!(result["error"]["code"], "timeout", "{result}");
    assert_eq!(result["error"]["class"], "transient");
    assert_eq!(result["error"]["step"], "slow");
    assert_eq!(result["attempt"], 2, "the last receive publishes: {result}");
    assert!(
        result["steps"]["slow"]["calls"].as_u64().unwrap() >= 4,
        "each call bounded by the step's timeout, retried within the delivery: {result}"
    );
    assert_eq!(result["steps"]["slow"]["attempt"], 2, "the delivery count");
    assert_eq!(result["steps"]["first"]["result"]["message"], "m");
    assert_eq!(
        runner_runs(&metrics, "echo").await,
        2.0,
        "the first step ran once per delivery"
    );
}

#[tokio::test]
async fn each_permanent_failure_ends_the_job_with_one_result_naming_the_step() {
    let (stack, _processes, _) = started(&[]).await;
    let payload = json!({"message": "hello"});
    // `add` refuses a string where its numbers go: invalid_payload, permanent.
    let failing = submit(
        &stack,
        json!({
            "first": {"algorithm": "echo"},
            "bad": {"algorithm": "add", "input": {"numbers": "/first/message"}},
            "after": {"algorithm": "echo", "input": {"message": "/bad/sum"}},
        }),
        payload.clone(),
    )
    .await;
    let nothing_selected = submit(
        &stack,
        json!({
            "first": {"algorithm": "echo"},
            "next": {"algorithm": "echo", "input": {"message": "/first/no_such_field"}},
        }),
        payload.clone(),
    )
    .await;
    // An optional step failing yields null; a step reading from it (optional too) as well;
    // the rest goes on.
    let optional = submit(
        &stack,
        json!({
            "first": {"algorithm": "echo"},
            "bad": {"algorithm": "add", "input": {"numbers": "/first/message"}, "optional": true},
            "reads_bad": {"algorithm": "echo", "input": {"message": "/bad/sum"}, "optional": true},
            "last": {"algorithm": "echo", "input": {"message": "/payload/message"}},
        }),
        payload.clone(),
    )
    .await;
    let mut cycle = serde_json::Map::new();
    cycle.insert(
        "x".into(),
        json!({"algorithm": "echo", "input": {"message": "/y/message"}}),
    );
    cycle.insert(
        "y".into(),
        json!({"algorithm": "echo", "input": {"message": "/x/message"}}),
    );
    let cycle = submit(&stack, Value::Object(cycle), payload.clone()).await;
    let dangling = submit(
        &stack,
        json!({"x": {"algorithm": "echo", "input": {"message": "/ghost/message"}}}),
        payload.clone(),
    )
    .await;
    let many: serde_json::Map<String, Value> = (0..17)
        .map(|i| (format!("s{i}"), json!({"algorithm": "echo"})))
        .collect();
    let too_many = submit(&stack, Value::Object(many), payload.clone()).await;
    let ids = [
        &failing,
        &nothing_selected,
        &optional,
        &cycle,
        &dangling,
        &too_many,
    ]
    .map(String::as_str);
    let results = results_of(&stack, &ids, Duration::from_secs(60)).await;

    let result = &results[&failing];
    assert_eq!(result["status"], "error", "{result}");
    assert_eq!(result["error"]["code"], "invalid_payload");
    assert_eq!(result["error"]["class"], "permanent");
    assert_eq!(result["error"]["step"], "bad");
    assert!(result.get("result").is_none(), "{result}");
    assert_eq!(result["steps"]["first"]["result"]["message"], "hello");
    assert_eq!(result["steps"]["bad"]["error"]["code"], "invalid_payload");
    assert!(
        result["steps"].get("after").is_none(),
        "never started: {result}"
    );
    assert_eq!(result["attempt"], 1, "never retried");

    let result = &results[&nothing_selected];
    assert_eq!(result["error"]["code"], "input_not_found", "{result}");
    assert_eq!(result["error"]["class"], "permanent");
    assert_eq!(result["error"]["step"], "next");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_field"),
        "names the pointer: {result}"
    );
    assert_eq!(result["steps"]["first"]["result"]["message"], "hello");

    let result = &results[&optional];
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["result"]["bad"], Value::Null);
    assert_eq!(result["result"]["reads_bad"], Value::Null);
    assert_eq!(result["result"]["last"]["message"], "hello");
    assert_eq!(result["steps"]["bad"]["error"]["code"], "invalid_payload");
    assert_eq!(
        result["steps"]["reads_bad"]["error"]["code"],
        "input_not_found"
    );
    for step in ["bad", "reads_bad"] {
        assert!(
            result["steps"][step].get("result").is_none(),
            "a failed step has its error, not a result: {result}"
        );
    }
    assert_eq!(result["steps"]["reads_bad"]["calls"], 0);
    // Queued until the first call: a step never called (reads_bad) does not count.
    assert!(
        result["timings"]["queued_ms"].as_f64().unwrap() > 0.0,
        "{result}"
    );

    for (id, names) in [
        (&cycle, ["cycle", "\"x\""]),
        (&dangling, ["ghost", "\"x\""]),
        (&too_many, ["17 steps", "16"]),
    ] {
        let result = &results[id];
        assert_eq!(result["status"], "error", "{result}");
        assert_eq!(result["error"]["code"], "invalid_pipeline", "{result}");
        assert_eq!(result["error"]["class"], "permanent");
        assert_eq!(result["pipeline"]["name"], "inline");
        let message = result["error"]["message"].as_str().unwrap();
        for name in names {
            assert!(message.contains(name), "{message:?} names {name}");
        }
    }
    eventually(Duration::from_secs(20), "five jobs in the DLQ", || async {
        let ((visible, hidden), (dead, _)) = stack.queue_depths().await;
        (visible + hidden == 0 && dead == 5).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_step_input_over_max_job_bytes_is_a_permanent_error_naming_the_step() {
    let (stack, _processes, _) = started(&["--max-job-bytes", "1000"]).await;
    // The payload fits; the second step's input, built from the first's output, does not.
    let id = submit(
        &stack,
        json!({
            "first": {"algorithm": "echo"},
            "twice": {"algorithm": "echo", "input": {"message": "/first/message", "again": "/first/message"}},
        }),
        json!({"message": "x".repeat(600)}),
    )
    .await;
    let results = results_of(&stack, &[&id], Duration::from_secs(60)).await;
    let result = &results[&id];
    assert_eq!(result["error"]["code"], "payload_too_large", "{result}");
    assert_eq!(result["error"]["class"], "permanent");
    assert_eq!(result["error"]["step"], "twice");
    assert!(result["steps"]["first"]["result"].is_object(), "{result}");
    assert_eq!(
        result["steps"]["twice"]["calls"], 0,
        "never called: {result}"
    );
    assert!(
        result["steps"]["twice"].get("result").is_none(),
        "a failed step has its error only: {result}"
    );
}

#[tokio::test]
async fn a_step_without_a_runner_is_retried_in_the_same_delivery_and_finished_steps_do_not_run_again()
 {
    // A 4 s visibility timeout: the job outlives it several times while its second step
    // waits for a runner, kept invisible by the heartbeat.
    let stack = Stack::start(Duration::from_secs(4), 3).await;
    let (_runner, metrics) = test_runner(&stack).await;
    let (controller, health) = stack
        .controller(&["--retry-base", "500ms", "--retry-max", "2s"])
        .await;
    let text = "The weather is lovely today and we are going for a long walk.";
    let id = submit(
        &stack,
        json!({
            "first": {"algorithm": "echo"},
            "lang": {"algorithm": "language_detection", "input": {"text": "/first/message"}},
        }),
        json!({"message": text}),
    )
    .await;
    eventually(Duration::from_secs(60), "the first step run", || async {
        (runner_runs(&metrics, "echo").await >= 1.0).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the second step retried (no runner)",
        || async { controller.log().contains("no_runner").then_some(()) },
    )
    .await;
    // Past the visibility timeout before the runner comes: the heartbeat kept the job.
    let metrics_url = health.replace("/healthz", "/metrics");
    eventually(
        Duration::from_secs(30),
        "two visibility extensions",
        || async {
            let text = reqwest::get(&metrics_url).await.ok()?.text().await.ok()?;
            let extensions = metric_value(&text, "plugworker_visibility_extensions_total", &[])?;
            (extensions >= 2.0).then_some(())
        },
    )
    .await;
    let (_nlp, _) = stack.runner("nlp-runner", &[]).await;
    let results = results_of(&stack, &[&id], Duration::from_secs(120)).await;
    let result = &results[&id];
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["attempt"], 1, "one delivery: {result}");
    assert_eq!(result["result"]["lang"]["language"], "en");
    assert!(
        result["steps"]["lang"]["calls"].as_u64().unwrap() >= 2,
        "{result}"
    );
    assert_eq!(result["steps"]["lang"]["attempt"], 1);
    assert_eq!(result["steps"]["first"]["calls"], 1);
    assert_eq!(
        runner_runs(&metrics, "echo").await,
        1.0,
        "the finished step did not run again"
    );
    assert!(
        result["timings"]["total_ms"].as_f64().unwrap() > 4000.0,
        "longer than the visibility timeout: {result}"
    );
}

#[tokio::test]
async fn a_step_whose_runner_is_killed_is_run_again_on_another_instance_within_the_delivery() {
    let stack = Stack::start(Duration::from_secs(10), 3).await;
    let (first, first_metrics) = test_runner(&stack).await;
    let (_controller, _) = stack
        .controller(&["--retry-base", "500ms", "--retry-max", "2s"])
        .await;
    let id = submit(
        &stack,
        json!({
            "first": {"algorithm": "echo"},
            "slow": {"algorithm": "echo", "input": {"message": "/first/message", "delay_ms": 5000}},
        }),
        json!({"message": "survive"}),
    )
    .await;
    // The first step done and the slow one running on the only instance: a second one
    // comes up, the first is killed.
    let in_flight = |address: String| async move {
        let text = reqwest::get(format!("http://{address}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metric_value(
            &text,
            "plugworker_runner_runs_in_flight",
            &[("algorithm", "echo")],
        )
    };
    eventually(Duration::from_secs(60), "the slow step running", || async {
        let ok = runner_runs(&first_metrics, "echo").await;
        (ok == 1.0 && in_flight(first_metrics.clone()).await == Some(1.0)).then_some(())
    })
    .await;
    let (second, second_metrics) = test_runner_with(&stack, &[], 2).await;
    let second_instance = instance_id(&second);
    first.signal("KILL");
    let results = results_of(&stack, &[&id], Duration::from_secs(60)).await;
    let result = &results[&id];
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["attempt"], 1, "one delivery: {result}");
    assert_eq!(result["result"]["slow"]["message"], "survive");
    let slow = &result["steps"]["slow"];
    assert!(
        slow["calls"].as_u64().unwrap() >= 2,
        "called again after the kill: {result}"
    );
    assert_eq!(
        slow["runner"]["instance_id"], second_instance,
        "the surviving instance answered: {result}"
    );
    assert_eq!(
        runner_runs(&second_metrics, "echo").await,
        1.0,
        "only the slow step ran on the second instance"
    );
}

#[tokio::test]
async fn a_named_pipeline_changed_while_jobs_flow_applies_to_the_jobs_after_the_change() {
    let (stack, _processes, _) = started(&[]).await;
    let first = put(&stack, "report", "v1").await;
    let id = probe(&stack).await;
    let results = results_of(&stack, &[&id], Duration::from_secs(60)).await;
    assert_eq!(results[&id]["status"], "ok", "{}", results[&id]);
    assert_eq!(
        results[&id]["pipeline"],
        json!({"name": "report", "revision": first})
    );

    // Jobs keep coming while the pipeline changes under them.
    let mut flowing = Vec::new();
    for _ in 0..10 {
        flowing.push(probe(&stack).await);
    }
    let second = put(&stack, "report", "v2").await;
    for _ in 0..10 {
        flowing.push(probe(&stack).await);
    }
    let ids: Vec<&str> = flowing.iter().map(String::as_str).collect();
    let results = results_of(&stack, &ids, Duration::from_secs(60)).await;
    let mut seen = HashMap::new();
    for result in results.values() {
        assert_eq!(result["status"], "ok", "none fails: {result}");
        let revision = result["pipeline"]["revision"].as_u64().unwrap();
        let said = result["result"]["say"]["message"].as_str().unwrap();
        let expected = if revision == first { "v1" } else { "v2" };
        assert!(revision == first || revision == second, "{result}");
        assert_eq!(
            said, expected,
            "the revision named is the one run: {result}"
        );
        *seen.entry(said.to_string()).or_insert(0) += 1;
    }
    eprintln!("while the pipeline changed: {seen:?}");
    // Once one job has run the new revision, the watch has it: every later job does too.
    eventually(
        Duration::from_secs(30),
        "a job on the new revision",
        || async {
            let id = probe(&stack).await;
            let results = results_of(&stack, &[&id], Duration::from_secs(30)).await;
            (results[&id]["pipeline"]["revision"] == second).then_some(())
        },
    )
    .await;
    let mut after = Vec::new();
    for _ in 0..5 {
        after.push(probe(&stack).await);
    }
    let unknown = submit(&stack, json!("no_such_pipeline"), json!({})).await;
    let broken_key = format!("{KV_PREFIX}broken");
    stack
        .consul()
        .kv_put(&broken_key, b"{\"a\": {}}", None)
        .await
        .unwrap();
    let broken = submit(&stack, json!("broken"), json!({})).await;
    let mut ids: Vec<&str> = after.iter().map(String::as_str).collect();
    ids.extend([unknown.as_str(), broken.as_str()]);
    let results = results_of(&stack, &ids, Duration::from_secs(60)).await;
    for id in &after {
        assert_eq!(
            results[id]["pipeline"]["revision"], second,
            "{}",
            results[id]
        );
        assert_eq!(results[id]["result"]["say"]["message"], "v2");
    }
    let result = &results[&unknown];
    assert_eq!(result["error"]["code"], "invalid_pipeline", "{result}");
    assert_eq!(result["error"]["class"], "permanent");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_pipeline"),
        "{result}"
    );
    let result = &results[&broken];
    assert_eq!(result["error"]["code"], "invalid_pipeline", "{result}");
    assert!(result["pipeline"]["revision"].is_u64(), "{result}");
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&broken_key),
        "{result}"
    );
}

/// Stores `name` as a one-step pipeline echoing `message`; returns its revision.
async fn put(stack: &Stack, name: &str, message: &str) -> u64 {
    let consul = stack.consul();
    let key = format!("{KV_PREFIX}{name}");
    let value = json!({"say": {"algorithm": "echo", "input": {"message": message}}});
    assert!(
        consul
            .kv_put(&key, value.to_string().as_bytes(), None)
            .await
            .unwrap()
    );
    let (pair, _) = consul.kv_get(&key, Default::default()).await.unwrap();
    pair.unwrap().modify_index
}

#[tokio::test]
async fn with_a_slow_kv_store_jobs_wait_for_the_stored_pipelines_and_one_put_just_before_is_found()
{
    let stack = Stack::start(Duration::from_secs(30), 3).await;
    let (_runner, _) = test_runner(&stack).await;
    // Every KV answer to the controller comes 2 s late: its watch learns of a change 2 s
    // after it is made.
    let proxy = FaultProxy::start(&stack.consul_url()).await;
    proxy.delay_answers("/v1/kv/", Duration::from_secs(2));
    let first = put(&stack, "report", "v1").await;
    // Queued before the controller starts: it receives jobs only once it has read the
    // store, so the job does not meet a store not read yet.
    let queued = probe(&stack).await;
    let (_controller, _) = stack
        .controller(&["--consul-address", &proxy.endpoint])
        .await;
    let results = results_of(&stack, &[&queued], Duration::from_secs(60)).await;
    let result = &results[&queued];
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["attempt"], 1, "{result}");
    assert_eq!(result["pipeline"]["revision"], first);
    // Put just before its first job: the watch does not have it yet, a read does.
    let fresh_revision = put(&stack, "fresh", "fresh").await;
    let fresh = submit(&stack, json!("fresh"), json!({})).await;
    let results = results_of(&stack, &[&fresh], Duration::from_secs(60)).await;
    assert_eq!(results[&fresh]["status"], "ok", "{}", results[&fresh]);
    assert_eq!(results[&fresh]["pipeline"]["revision"], fresh_revision);
}

/// A job running the stored pipeline `report`.
async fn probe(stack: &Stack) -> String {
    submit(stack, json!("report"), json!({})).await
}

#[tokio::test]
async fn without_read_on_the_pipelines_prefix_named_pipelines_are_transient_and_inline_ones_run() {
    let stack = Stack::start(Duration::from_secs(30), 2).await;
    let (_runner, _) = test_runner(&stack).await;
    // The controller's policy without its key_prefix rule: Consul lists no stored
    // pipeline to it, and refuses it any single key.
    let full = controller_rules("controller");
    let rules = &full[..full.find("key_prefix").unwrap()];
    let token = stack.policy_token("controller-without-kv", rules).await;
    let consul = stack.consul();
    consul
        .kv_put(
            &format!("{KV_PREFIX}report"),
            json!({"say": {"algorithm": "echo"}}).to_string().as_bytes(),
            None,
        )
        .await
        .unwrap();
    let (controller, _) = stack
        .controller_with_env(
            &["--retry-base", "300ms"],
            &[("CONSUL_HTTP_TOKEN", token.as_str())],
        )
        .await;
    let named = submit(&stack, json!("report"), json!({"message": "m"})).await;
    let inline = submit(
        &stack,
        json!({"say": {"algorithm": "echo"}}),
        json!({"message": "m"}),
    )
    .await;
    let results = results_of(&stack, &[&named, &inline], Duration::from_secs(60)).await;
    let result = &results[&named];
    assert_eq!(result["error"]["code"], "pipeline_unavailable", "{result}");
    assert_eq!(result["error"]["class"], "transient");
    assert_eq!(
        result["attempt"], 2,
        "retried as transient, to the last receive"
    );
    assert_eq!(results[&inline]["status"], "ok", "{}", results[&inline]);
    assert!(
        controller.log().contains("key_prefix"),
        "the log says what to grant: {}",
        controller.log()
    );
}

#[tokio::test]
async fn a_pipeline_job_is_one_trace_with_a_span_per_step() {
    let receiver = OtlpReceiver::start().await;
    let stack = Stack::start(Duration::from_secs(30), 3).await;
    let envs = receiver.env("test-runner");
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_runner, _) = stack.runner("test-runner", &envs).await;
    stack.wait_passing("test-runner", 1).await;
    let envs = receiver.env("plugworker-controller");
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_controller, _) = stack.controller_with_env(&[], &envs).await;
    let id = submit(
        &stack,
        json!({
            "a": {"algorithm": "echo"},
            "b": {"algorithm": "echo", "input": {"message": "/a/message"}},
        }),
        json!({"message": "traced"}),
    )
    .await;
    let results = results_of(&stack, &[&id], Duration::from_secs(60)).await;
    let result = &results[&id];
    assert_eq!(result["status"], "ok", "{result}");
    let trace_id = result["trace_id"].as_str().expect("a trace id").to_string();
    let spans = eventually(Duration::from_secs(20), "the whole trace", || async {
        let spans = receiver.trace(&trace_id);
        let count = |kind| spans.iter().filter(|s| s.kind == kind).count();
        (count(KIND_CONSUMER) == 1 && count(KIND_CLIENT) == 2 && count(KIND_SERVER) == 2)
            .then_some(spans)
    })
    .await;
    let consumer = spans.iter().find(|s| s.kind == KIND_CONSUMER).unwrap();
    assert_eq!(consumer.attributes["plugworker.pipeline"], "inline");
    assert_eq!(consumer.attributes["plugworker.outcome"], "ok");
    for step in ["a", "b"] {
        let span = spans
            .iter()
            .find(|s| {
                s.attributes
                    .get("plugworker.step")
                    .is_some_and(|n| n == step)
            })
            .unwrap_or_else(|| panic!("no span for step {step}: {spans:#?}"));
        assert_eq!(span.name, format!("step {step}"));
        assert_eq!(span.parent_span_id, consumer.span_id, "step ← job");
        assert_eq!(span.attributes["plugworker.algorithm"], "echo");
        assert_eq!(span.attributes["plugworker.attempt"], "1");
        assert_eq!(span.attributes["plugworker.outcome"], "ok");
        assert_eq!(
            span.attributes["plugworker.instance_id"],
            result["steps"][step]["runner"]["instance_id"]
                .as_str()
                .unwrap()
        );
        let client = spans
            .iter()
            .find(|s| s.kind == KIND_CLIENT && s.parent_span_id == span.span_id)
            .unwrap_or_else(|| panic!("no Run span under step {step}"));
        assert!(
            spans
                .iter()
                .any(|s| s.kind == KIND_SERVER && s.parent_span_id == client.span_id),
            "the runner's span continues the step's call"
        );
    }
    // One trace: every span about the job's message is in it.
    assert!(
        receiver
            .spans()
            .iter()
            .filter(|s| s.attributes.get("messaging.message.id") == Some(&id))
            .all(|s| s.trace_id == trace_id)
    );
}

#[tokio::test]
async fn a_redelivery_runs_the_revision_its_first_delivery_ran() {
    let stack = Stack::start(Duration::from_secs(30), 8).await;
    let (_runner, _) = test_runner(&stack).await;
    let (controller, _) = stack
        .controller(&[
            "--job-timeout",
            "3s",
            "--retry-base",
            "2s",
            "--retry-max",
            "4s",
        ])
        .await;
    // Revision 1 needs language_detection, which no runner serves yet: its first
    // delivery ends transient.
    let consul = stack.consul();
    let key = format!("{KV_PREFIX}report");
    let first = json!({
        "say": {"algorithm": "echo", "input": {"message": "v1"}},
        "lang": {"algorithm": "language_detection",
                 "input": {"text": "The weather is lovely today and we are going for a long walk."}},
    });
    assert!(
        consul
            .kv_put(&key, first.to_string().as_bytes(), None)
            .await
            .unwrap()
    );
    let (pair, _) = consul.kv_get(&key, Default::default()).await.unwrap();
    let first_revision = pair.unwrap().modify_index;
    let id = probe(&stack).await;
    eventually(
        Duration::from_secs(60),
        "the first delivery ended transient",
        || async {
            controller
                .log()
                .contains("it will be redelivered")
                .then_some(())
        },
    )
    .await;
    // Changed before the redelivery: revision 2 would run at once (echo only).
    let second_revision = put(&stack, "report", "v2").await;
    let (_nlp, _) = stack.runner("nlp-runner", &[]).await;
    let results = results_of(&stack, &[&id], Duration::from_secs(120)).await;
    let result = &results[&id];
    assert_eq!(result["status"], "ok", "{result}");
    assert!(result["attempt"].as_u64().unwrap() >= 2, "{result}");
    assert_eq!(
        result["pipeline"],
        json!({"name": "report", "revision": first_revision}),
        "not revision {second_revision}: {result}"
    );
    assert_eq!(result["result"]["say"]["message"], "v1");
    assert_eq!(result["result"]["lang"]["language"], "en");
    // A job received after the change runs the new revision.
    let later = probe(&stack).await;
    let results = results_of(&stack, &[&later], Duration::from_secs(60)).await;
    assert_eq!(results[&later]["pipeline"]["revision"], second_revision);
}

#[tokio::test]
async fn a_step_out_of_time_reports_its_last_error_and_makes_no_call_past_the_deadline() {
    // One receive: the first delivery's result is the final one.
    let stack = Stack::start(Duration::from_secs(30), 1).await;
    let (_runner, _) =
        test_runner_with(&stack, &[("TEST_RUNNER_ALWAYS_UNAVAILABLE", "1")], 1).await;
    // The wait after the first failure (2.5 to 5 s) is cut to what is left of 1.5 s.
    let (_controller, _) = stack
        .controller(&[
            "--job-timeout",
            "1500ms",
            "--retry-base",
            "5s",
            "--retry-max",
            "5s",
        ])
        .await;
    let id = submit(
        &stack,
        json!({"s": {"algorithm": "echo"}}),
        json!({"message": "m"}),
    )
    .await;
    let results = results_of(&stack, &[&id], Duration::from_secs(60)).await;
    let result = &results[&id];
    assert_eq!(result["status"], "error", "{result}");
    assert_eq!(
        result["error"]["code"], "runner_unavailable",
        "the step's own error, not a zero-timeout call's: {result}"
    );
    assert_eq!(result["error"]["step"], "s");
    assert_eq!(
        result["steps"]["s"]["calls"], 1,
        "no call once the deadline passed: {result}"
    );
}

#[tokio::test]
async fn pipeline_steps_waiting_for_a_runner_do_not_hold_run_slots_from_other_jobs() {
    let (stack, processes, _) = started(&[
        "--max-in-flight",
        "1",
        "--job-timeout",
        "30s",
        "--retry-base",
        "500ms",
        "--retry-max",
        "1s",
    ])
    .await;
    let [_, controller] = &processes;
    // Two pipeline jobs whose every step waits for a runner that never comes (the one
    // slot, and the job the receive loop takes next).
    let text = "The weather is lovely today and we are going for a long walk.";
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let id = submit(
            &stack,
            json!({
                "a": {"algorithm": "language_detection", "input": {"text": text}},
                "b": {"algorithm": "language_detection", "input": {"text": text}},
            }),
            json!({}),
        )
        .await;
        waiting.push(id);
    }
    eventually(Duration::from_secs(30), "the steps waiting", || async {
        (controller.log().matches("no_runner").count() >= 4).then_some(())
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            stack
                .submit(json!({"algorithm": "echo", "payload": {"message": format!("job {i}")}}))
                .await,
        );
    }
    // Long before the pipelines' 30 s --job-timeout: their slot was given back.
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 3, Duration::from_secs(15))
        .await;
    let done: Vec<&str> = results
        .iter()
        .map(|r| r["message_id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(
            done.contains(&id.as_str()),
            "{id} did not run: {results:#?}"
        );
    }
    for result in &results {
        assert_eq!(result["status"], "ok", "{result}");
    }
}

#[tokio::test]
async fn jobs_naming_an_unknown_pipeline_read_consul_once_per_watch_answer() {
    let stack = Stack::start(Duration::from_secs(30), 1).await;
    let (_runner, _) = test_runner(&stack).await;
    let proxy = FaultProxy::start(&stack.consul_url()).await;
    let (_controller, _) = stack
        .controller(&["--consul-address", &proxy.endpoint])
        .await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(submit(&stack, json!("no_such_pipeline"), json!({})).await);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let results = results_of(&stack, &ids, Duration::from_secs(60)).await;
    for result in results.values() {
        assert_eq!(result["error"]["code"], "invalid_pipeline", "{result}");
    }
    let reads = proxy
        .requests_matching("/v1/kv/plugworker/pipelines/no_such_pipeline")
        .len();
    eprintln!("20 jobs, {reads} reads of the unknown key");
    assert!(
        (1..=6).contains(&reads),
        "one read per watch answer (a miss kept 1 s), not one per job: {reads}"
    );
}

#[tokio::test]
async fn the_job_timeout_counts_from_when_the_pipeline_starts_not_from_its_wait_behind_its_group() {
    let stack = Stack::start_with(plugworker_testkit::sqs::QueueOptions {
        fifo: true,
        ..Default::default()
    })
    .await;
    let (_runner, _) = test_runner(&stack).await;
    // Queued together in one group: the pipeline job waits 2.5 s for the job before it,
    // then its step takes 2 s; 4.5 s from its receive, 2 s from its start, under 3 s.
    let send = |body: Value| {
        let sqs = &stack.sqs;
        let queue = &stack.queues.jobs;
        async move { sqs.send_to_group(queue, &body.to_string(), "g").await }
    };
    let before =
        send(json!({"algorithm": "echo", "payload": {"message": "before", "delay_ms": 2500}}))
            .await;
    let pipeline = send(json!({
        "pipeline": {"s": {"algorithm": "echo", "input": {"message": "after", "delay_ms": 2000}}},
        "payload": {},
    }))
    .await;
    let (_controller, _) = stack.controller(&["--job-timeout", "3s"]).await;
    let results = results_of(&stack, &[&before, &pipeline], Duration::from_secs(60)).await;
    let result = &results[&pipeline];
    assert_eq!(result["status"], "ok", "{result}");
    assert_eq!(result["attempt"], 1, "not timed out by its wait: {result}");
    assert_eq!(result["steps"]["s"]["calls"], 1, "{result}");
    assert!(
        result["timings"]["total_ms"].as_f64().unwrap() > 3000.0,
        "it did wait behind the job before it: {result}"
    );
}
