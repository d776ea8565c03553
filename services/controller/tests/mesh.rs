//! The service mesh end to end (issue 13, docs/security.md): real processes on a registry
//! enforcing ACLs (default deny) and intentions (default deny), runners serving mTLS
//! only, and the controller dialling them with its own leaf certificate.
//!
//! The hijacks of the issue are replayed and must fail: a rogue listener registered under
//! a runner's name, registrations without a token or under another service's name, a
//! re-registered instance ID. And the mesh must cost no job: not when an intention denies
//! the controller for a while, not when leaf certificates expire during a run.

use crate::common;

use common::{BOOTSTRAP_TOKEN, Stack, job, mesh_registry_config};
use plugworker_consul_client::admin::IntentionAction;
use plugworker_consul_client::{ServiceConnect, ServiceRegistration};
use plugworker_discovery::{META_ROLE, ROLE_RUNNER};
use plugworker_testkit::sqs::QueueOptions;
use plugworker_testkit::{Process, bin_path, eventually, passing_instances};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// A TCP listener that takes every connection, keeps every byte it is sent, answers
/// nothing, and hangs up after a short silence: what a thief's listener would see.
struct Rogue {
    port: u16,
    /// The bytes of each connection, in order of arrival.
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Rogue {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let connections = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let slot = {
                    let mut all = connections.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let connections = connections.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 16 * 1024];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(500), socket.read(&mut buffer))
                            .await
                    {
                        if n == 0 {
                            break;
                        }
                        connections.lock().unwrap()[slot].extend_from_slice(&buffer[..n]);
                    }
                });
            }
        });
        Self {
            port,
            received,
            task,
        }
    }

    fn connections(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }

    /// Asserts nothing but TLS handshake records arrived: each connection starts with a
    /// handshake record (0x16, TLS 1.x), no HTTP/2 preface, and no job marker anywhere.
    fn assert_no_job_bytes(&self, marker: &str) {
        for (i, bytes) in self.connections().iter().enumerate() {
            assert!(
                !contains(bytes, marker.as_bytes()),
                "connection {i} to the rogue carried job payload"
            );
            assert!(
                !contains(bytes, b"PRI * HTTP/2.0"),
                "connection {i} to the rogue spoke plaintext HTTP/2"
            );
            if let Some(first) = bytes.first() {
                assert_eq!(
                    (*first, bytes.get(1)),
                    (0x16, Some(&0x03)),
                    "connection {i} did not start with a TLS handshake record"
                );
            }
        }
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A registration that claims to be an instance of `service` serving `echo` at `port`,
/// Connect-native, with no check (so it passes at once).
fn claim(id: &str, service: &str, port: u16) -> ServiceRegistration {
    ServiceRegistration {
        id: id.into(),
        name: service.into(),
        tags: vec!["echo".into(), "add".into()],
        address: "127.0.0.1".into(),
        port,
        meta: [(META_ROLE.to_string(), ROLE_RUNNER.to_string())].into(),
        connect: Some(ServiceConnect { native: true }),
        ..Default::default()
    }
}

/// Results by message id (panics on a duplicate final result).
fn by_message(results: &[Value]) -> HashMap<String, Value> {
    let mut map = HashMap::new();
    for result in results {
        let id = result["message_id"].as_str().unwrap().to_string();
        if let Some(first) = map.insert(id.clone(), result.clone()) {
            panic!("two final results for {id}: {first:#} and {result:#}");
        }
    }
    map
}

#[tokio::test]
async fn a_rogue_listener_registered_under_a_runners_name_receives_no_job_bytes() {
    let stack = Stack::start(Duration::from_secs(30), 5).await;
    let (_runner, runner_address) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;
    // The rogue registers as a Connect-native test-runner serving `echo`, with a token
    // that may write the service `test-runner` (the runner's own: the most a registration
    // can carry). It passes at once (no check) and is handed out by
    // /v1/health/connect/test-runner; what it cannot do without the runner's key is
    // present a certificate for test-runner.
    let rogue = Rogue::start().await;
    stack
        .consul_with_token(Some(&stack.tokens["test-runner"]))
        .register_service(&claim("rogue-1", "test-runner", rogue.port))
        .await
        .unwrap();
    stack.wait_passing("test-runner", 2).await;
    let (controller, _) = stack.controller(&["--retry-base", "300ms"]).await;

    // Runs long enough that the real instance has calls in flight when the next job is
    // placed, so power of two choices sends jobs toward the idle rogue.
    let marker = "SECRET-PAYLOAD";
    let mut submitted = Vec::new();
    for i in 0..20 {
        submitted.push(
            stack
                .submit(job(
                    "echo",
                    json!({"message": format!("{marker}-{i}"), "delay_ms": 200}),
                ))
                .await,
        );
    }
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 20, Duration::from_secs(90))
        .await;
    let results = by_message(&results);
    assert_eq!(results.len(), 20);
    for id in &submitted {
        let result = &results[id];
        assert_eq!(result["status"], "ok", "{result}");
        assert_eq!(result["runner"]["address"], runner_address.as_str());
    }
    let connections = rogue.connections();
    assert!(
        !connections.is_empty(),
        "the rogue was never tried, so this test proved nothing"
    );
    rogue.assert_no_job_bytes(marker);
    let bytes: usize = connections.iter().map(Vec::len).sum();
    eprintln!(
        "rogue: {} connections, {bytes} bytes, all TLS handshake, 0 bytes of job payload",
        connections.len()
    );
    // The rogue cannot complete a TLS handshake (it has no certificate at all): the
    // controller retries each such job elsewhere at once, and says so.
    let log = controller.log();
    assert!(
        log.lines()
            .any(|l| l.contains("retrying on another instance") && l.contains("rogue-1")),
        "the controller says it moved the job off the rogue: {log}"
    );
}

#[tokio::test]
async fn registrations_without_a_token_or_under_another_services_name_are_refused() {
    let stack = Stack::start(Duration::from_secs(30), 5).await;
    let (_runner, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;
    let real = passing_instances(&stack.consul(), "test-runner").await;
    let real_id = real[0].service.id.clone();
    let forbidden = |result: Result<(), plugworker_consul_client::Error>, what: &str| match result {
        Err(plugworker_consul_client::Error::Status { status, body, .. }) => {
            assert_eq!(status.as_u16(), 403, "{what}: {body}");
            body
        }
        other => panic!("{what}: expected HTTP 403, got {other:?}"),
    };

    // No token at all.
    let body = forbidden(
        stack
            .consul_with_token(None)
            .register_service(&claim("anonymous", "test-runner", 1))
            .await,
        "a registration without a token",
    );
    assert!(body.contains("Permission denied"), "{body}");
    // A runner's token under another runner's name.
    let nlp_token = stack.tokens["nlp-runner"].clone();
    forbidden(
        stack
            .consul_with_token(Some(&nlp_token))
            .register_service(&claim("impostor", "test-runner", 1))
            .await,
        "nlp-runner's token registering test-runner",
    );
    // ... nor may it take over or remove the real instance.
    forbidden(
        stack
            .consul_with_token(Some(&nlp_token))
            .register_service(&claim(&real_id, "test-runner", 1))
            .await,
        "nlp-runner's token re-registering test-runner's instance",
    );
    forbidden(
        stack
            .consul_with_token(Some(&nlp_token))
            .deregister_service(&real_id)
            .await,
        "nlp-runner's token deregistering test-runner's instance",
    );
    // An unknown secret is refused outright.
    forbidden(
        stack
            .consul_with_token(Some("00000000-0000-4000-8000-000000000000"))
            .register_service(&claim("unknown", "test-runner", 1))
            .await,
        "an unknown token",
    );
    // Its own name is fine (the control case), and nothing else changed.
    stack
        .consul_with_token(Some(&nlp_token))
        .register_service(&claim("nlp-own", "nlp-runner", 1))
        .await
        .unwrap();
    let after = passing_instances(&stack.consul(), "test-runner").await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].service.id, real_id);
    assert_eq!(after[0].service.port, real[0].service.port);
}

#[tokio::test]
async fn a_re_registered_instance_id_cannot_redirect_jobs() {
    let stack = Stack::start(Duration::from_secs(30), 5).await;
    let (_first, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;
    let hijacked = passing_instances(&stack.consul(), "test-runner").await[0]
        .service
        .id
        .clone();
    let (_second, second_address) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 2).await;
    // Same instance ID, the rogue's address, with a token allowed to write test-runner.
    let rogue = Rogue::start().await;
    stack
        .consul_with_token(Some(&stack.tokens["test-runner"]))
        .register_service(&claim(&hijacked, "test-runner", rogue.port))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the hijacked registration", || {
        let consul = stack.consul();
        let hijacked = hijacked.clone();
        async move {
            passing_instances(&consul, "test-runner")
                .await
                .iter()
                .any(|e| e.service.id == hijacked && e.service.port == rogue.port)
                .then_some(())
        }
    })
    .await;
    let (_controller, _) = stack.controller(&["--retry-base", "300ms"]).await;
    let marker = "REDIRECTED-PAYLOAD";
    let n = 12;
    let mut submitted = Vec::new();
    for i in 0..n {
        submitted.push(
            stack
                .submit(job(
                    "echo",
                    json!({"message": format!("{marker}-{i}"), "delay_ms": 200}),
                ))
                .await,
        );
    }
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, n, Duration::from_secs(90))
        .await;
    let results = by_message(&results);
    assert_eq!(results.len(), n, "all {n} jobs complete");
    for id in &submitted {
        assert_eq!(results[id]["status"], "ok", "{}", results[id]);
        assert_eq!(
            results[id]["runner"]["address"],
            second_address.as_str(),
            "completed by the instance that was not hijacked"
        );
    }
    assert!(
        !rogue.connections().is_empty(),
        "the hijacked ID was never dialled, so this test proved nothing"
    );
    rogue.assert_no_job_bytes(marker);
}

#[tokio::test]
async fn a_runner_refuses_the_controller_until_an_intention_allows_it() {
    // Enough receives that the job outlives the denial (the runner may reuse a decision
    // for 10 s) instead of being dead-lettered.
    let stack = Stack::start(Duration::from_secs(30), 50).await;
    stack
        .set_intention("test-runner", IntentionAction::Deny)
        .await;
    let (runner, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;
    // Allow-listed, so the controller dials the runner despite the deny: what is tested
    // here is the runner's own enforcement (the controller's: tests/intentions.rs).
    let (_controller, _) = stack
        .controller(&[
            "--retry-base",
            "1s",
            "--retry-max",
            "2s",
            "--allow-service",
            "test-runner",
        ])
        .await;
    let id = stack
        .submit(job("echo", json!({"message": "after the allow"})))
        .await;
    // Refused while denied: the job is back on the queue, no result yet.
    eventually(
        Duration::from_secs(30),
        "the runner refusing the controller",
        || async {
            let log = runner.log();
            (log.contains("not authorized") || log.contains("unauthorized")).then_some(())
        },
    )
    .await;
    assert!(
        stack
            .sqs
            .collect_results(&stack.queues.results, 1, Duration::from_secs(2))
            .await
            .is_empty(),
        "a denied controller got a result"
    );
    stack
        .set_intention("test-runner", IntentionAction::Allow)
        .await;
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 1, Duration::from_secs(60))
        .await;
    // Exactly one final result, and it is the job's success. A bounded wait for a
    // second one: an absence has no event to wait for.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut all = results;
    all.extend(
        stack
            .sqs
            .collect_results(&stack.queues.results, 1, Duration::from_millis(500))
            .await,
    );
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["message_id"], id.as_str());
    assert_eq!(all[0]["status"], "ok", "{}", all[0]);
    assert!(all[0]["attempt"].as_u64().unwrap() >= 2, "{}", all[0]);
    assert_eq!(
        stack.queue_depths().await.1,
        (0, 0),
        "nothing dead-lettered"
    );
}

/// Leaves of 5 s, renewed during a 500-job run, and each runner closing every connection
/// at its client certificate's `NotAfter` (GOAWAY): calls refused by a GOAWAY are sent
/// again on a new connection, calls in flight finish, and every job ends `ok` exactly once.
#[tokio::test]
async fn leaves_expiring_during_500_jobs_lose_none() {
    // Leaves live 5 s and are renewed at 60-90 % of that.
    let stack = Stack::start_with_registry(
        QueueOptions {
            visibility: Duration::from_secs(30),
            // One receive per message: a call lost to a closing connection would be the
            // job's final result (or a dead letter), not hidden by a redelivery.
            max_receive_count: Some(1),
            ..QueueOptions::default()
        },
        plugworker_embedded_consul::RegistryConfig {
            connect_leaf_ttl: Duration::from_secs(5),
            ..mesh_registry_config()
        },
        true,
    )
    .await;
    // Each runner closes a connection when its client certificate expires: the
    // controllers' connections end every few seconds, with calls on them.
    let (first_runner, first_addresses) = stack
        .runner_reporting("test-runner", &[common::METRICS_ON_ANY_PORT])
        .await;
    let first_address = first_addresses.grpc().to_string();
    let first_metrics = first_addresses.metrics().to_string();
    stack.wait_passing("test-runner", 1).await;
    // 4 at a time × 200 ms: about 25 s of work, so the run spans the renewals and the
    // newcomers still get jobs after them.
    let (first_controller, _) = stack.controller(&["--max-in-flight", "4"]).await;
    let started = Instant::now();
    let total = 500;
    let mut submitted = HashSet::new();
    for i in 0..total {
        submitted.insert(
            stack
                .submit(job(
                    "echo",
                    json!({"message": format!("leaf-{i}"), "delay_ms": 200}),
                ))
                .await,
        );
    }
    // Once every process has renewed its leaf twice, a new runner and a new controller
    // join: their handshakes with the old ones use renewed certificates on both sides.
    let renewals = |process: &Process| process.log().matches("leaf certificate renewed").count();
    eventually(
        Duration::from_secs(60),
        "two renewals of the controller's leaf (the runner's comes from the same agent cache on the same schedule)",
        || async {
            (renewals(&first_controller) >= 2).then_some(())
        },
    )
    .await;
    let (second_runner, second_addresses) = stack
        .runner_reporting("test-runner", &[common::METRICS_ON_ANY_PORT])
        .await;
    let second_address = second_addresses.grpc().to_string();
    let second_metrics = second_addresses.metrics().to_string();
    let (second_controller, _) = stack.controller(&["--max-in-flight", "4"]).await;
    let mut results = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    while results.len() < total && Instant::now() < deadline {
        results.extend(
            stack
                .sqs
                .collect_results(
                    &stack.queues.results,
                    total - results.len(),
                    Duration::from_secs(5),
                )
                .await,
        );
    }
    // A duplicate (a second delivery of a job, e.g. after its visibility timeout) is
    // published before its copy is deleted: once the jobs queue holds nothing, visible or
    // in flight, every result there will be is in the results queue.
    eventually(
        Duration::from_secs(60),
        "the jobs queue empty, nothing in flight",
        || async { (stack.queue_depths().await.0 == (0, 0)).then_some(()) },
    )
    .await;
    results.extend(
        stack
            .sqs
            .drain(&stack.queues.results)
            .await
            .iter()
            .map(|m| serde_json::from_str::<Value>(m.body().unwrap()).unwrap()),
    );
    let elapsed = started.elapsed();
    let by_id = by_message(&results);
    assert_eq!(by_id.len(), total, "{total} results, 0 duplicates");
    assert_eq!(
        by_id.keys().cloned().collect::<HashSet<_>>(),
        submitted,
        "every job has its result"
    );
    let failed: Vec<_> = by_id.values().filter(|r| r["status"] != "ok").collect();
    assert!(failed.is_empty(), "{failed:#?}");
    let on_second = by_id
        .values()
        .filter(|r| r["runner"]["address"] == second_address.as_str())
        .count();
    let on_first = by_id
        .values()
        .filter(|r| r["runner"]["address"] == first_address.as_str())
        .count();
    let expired = runner_closed(&first_metrics, "certificate_expired").await
        + runner_closed(&second_metrics, "certificate_expired").await;
    let resent = |process: &Process| {
        process
            .log()
            .matches("the runner did not process the call")
            .count()
    };
    eprintln!(
        "500 jobs in {elapsed:?}: {on_first} on the first runner, {on_second} on the second; renewals: runner {} / {}, controller {} / {}; connections closed at their client certificate's NotAfter: {expired}; calls sent again (not processed): {} / {}",
        renewals(&first_runner),
        renewals(&second_runner),
        renewals(&first_controller),
        renewals(&second_controller),
        resent(&first_controller),
        resent(&second_controller),
    );
    assert!(
        expired >= 4.0,
        "connections were closed at NotAfter during the run ({expired})"
    );
    assert!(
        on_second > 0,
        "the runner that joined after the renewals served jobs"
    );
    assert_eq!(
        stack.queue_depths().await.1,
        (0, 0),
        "nothing dead-lettered"
    );
}

/// The closed-connection counter of a runner's main port for `reason`, from its metrics.
async fn runner_closed(metrics: &str, reason: &str) -> f64 {
    common::runner_metric(
        metrics,
        "plugworker_runner_server_closed_total",
        &[("port", "main"), ("reason", reason)],
    )
    .await
}

/// A mesh stack whose jobs queue gives each message one receive (a failed call is the
/// job's final result), with one passing test-runner started with `envs`: the stack, the
/// runner and its metrics address.
async fn one_runner(envs: &[(&str, &str)]) -> (Stack, Process, String) {
    let stack = Stack::start(Duration::from_secs(30), 1).await;
    let mut all = vec![common::METRICS_ON_ANY_PORT];
    all.extend_from_slice(envs);
    let (runner, addresses) = stack.runner_reporting("test-runner", &all).await;
    stack.wait_passing("test-runner", 1).await;
    (stack, runner, addresses.metrics().to_string())
}

/// Submits `count` echo jobs answering `<prefix>-<i>` after `delay_ms`.
async fn submit_echoes(stack: &Stack, prefix: &str, count: usize, delay_ms: u64) {
    for i in 0..count {
        stack
            .submit(job(
                "echo",
                json!({"message": format!("{prefix}-{i}"), "delay_ms": delay_ms}),
            ))
            .await;
    }
}

/// A runner closing its connections under load (GOAWAY every 300 ms: its maximum
/// connection age) costs no job, even with one attempt per job and no other instance to
/// retry on: the calls its GOAWAYs refuse were never processed, and the controller sends
/// them again on a new connection. Without that, some of them failed (`INTERNAL` "h2
/// protocol error" for a stream refused by a GOAWAY, `CANCELLED` for a request hyper never
/// wrote) and, with one attempt, ended as final errors.
#[tokio::test]
async fn a_runner_closing_connections_mid_load_loses_no_call() {
    let (stack, _runner, metrics) = one_runner(&[("PLUGWORKER_MAX_CONNECTION_AGE", "300ms")]).await;
    let (controller, _) = stack.controller(&["--max-in-flight", "16"]).await;
    let total = 300;
    submit_echoes(&stack, "goaway", total, 20).await;
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, total, Duration::from_secs(120))
        .await;
    let by_id = by_message(&results);
    let failed: Vec<_> = by_id.values().filter(|r| r["status"] != "ok").collect();
    let closed = runner_closed(&metrics, "max_age").await;
    let resent = controller
        .log()
        .matches("the runner did not process the call")
        .count();
    eprintln!(
        "{total} jobs: {} results, {} failed; connections closed at their maximum age: {closed}; calls sent again: {resent}",
        by_id.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(by_id.len(), total);
    assert!(
        closed >= 5.0,
        "the runner closed connections mid-load ({closed})"
    );
    // Only calls never processed were sent again: each job ran exactly once.
    assert_eq!(
        common::runner_runs(&metrics, "echo").await,
        total as f64,
        "runs of echo"
    );
}

/// A job's deadline bounds all of its call, the wait for the instance's concurrency
/// permit included: with one call at a time per instance and two 1.5 s jobs under a 2 s
/// `--job-timeout`, the second waits 1.5 s for the permit and has 0.5 s left, so it ends
/// `timeout` by its deadline. Without the bound, the permit wait was outside the call's
/// timeout and the second job ran its full 1.5 s after it (done 3 s after it started, ok).
#[tokio::test]
async fn the_wait_for_an_instances_call_permit_counts_against_the_job_deadline() {
    let (stack, _runner, metrics) = one_runner(&[]).await;
    submit_echoes(&stack, "permit", 2, 1_500).await;
    let (_controller, _) = stack
        .controller(&[
            "--max-in-flight",
            "2",
            "--max-calls-per-instance",
            "1",
            "--job-timeout",
            "2s",
        ])
        .await;
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 2, Duration::from_secs(60))
        .await;
    let statuses: Vec<_> = results
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap_or_default().to_string(),
                r["error"]["code"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(results.len(), 2, "{results:#?}");
    assert!(
        statuses.contains(&("ok".into(), String::new())),
        "the first job ran: {statuses:?}"
    );
    assert!(
        statuses.iter().any(|(_, code)| code == "timeout"),
        "the job that waited for the permit ended by its deadline: {statuses:?}"
    );
    assert_eq!(
        common::runner_runs(&metrics, "echo").await,
        1.0,
        "only the first job's run finished ok"
    );
}

/// An intention flipped to deny in the middle of 200 jobs (one receive each, the runner
/// re-checking every 1 s) loses none: every job has exactly one result, `ok` (run before
/// the deny, or in flight across it) or a transient error, and every run the runner
/// finished is an `ok` result (no job ran twice or ran without its result).
#[tokio::test]
async fn a_deny_mid_load_loses_no_job() {
    let (stack, _runner, metrics) =
        one_runner(&[("PLUGWORKER_MESH_AUTHORIZE_CACHE_TTL", "1s")]).await;
    let (_controller, _) = stack.controller(&["--max-in-flight", "16"]).await;
    let total = 200;
    submit_echoes(&stack, "deny", total, 500).await;
    eventually(Duration::from_secs(60), "some jobs run", || async {
        (common::runner_runs(&metrics, "echo").await >= 20.0).then_some(())
    })
    .await;
    stack
        .set_intention("test-runner", IntentionAction::Deny)
        .await;
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, total, Duration::from_secs(120))
        .await;
    let by_id = by_message(&results);
    assert_eq!(results.len(), total, "one result per job");
    assert_eq!(by_id.len(), total);
    let misreported: Vec<_> = by_id
        .values()
        .filter(|r| r["status"] != "ok" && r["error"]["class"] != "transient")
        .collect();
    let ok = by_id.values().filter(|r| r["status"] == "ok").count();
    let mut errors: HashMap<String, usize> = HashMap::new();
    for r in by_id.values().filter(|r| r["status"] != "ok") {
        *errors
            .entry(format!(
                "{} ({})",
                r["error"]["code"], r["error"]["message"]
            ))
            .or_default() += 1;
    }
    let runs = common::runner_runs(&metrics, "echo").await;
    eprintln!("{total} jobs with a deny mid-load: {ok} ok, {runs} runs; errors: {errors:?}");
    assert!(misreported.is_empty(), "{misreported:#?}");
    assert_eq!(runs, ok as f64, "every run that finished is an ok result");
}

#[tokio::test]
async fn plugworker_call_needs_an_allowed_identity_and_a_plaintext_call_gets_nothing() {
    let mut stack = Stack::start(Duration::from_secs(30), 5).await;
    let (_runner, _) = stack.runner("test-runner", &[]).await;
    stack.wait_passing("test-runner", 1).await;
    // An operator identity: a token that may write the service `operator` (its leaf).
    let operator = stack.admit_runner("operator").await;
    stack
        .consul()
        .apply_service_intentions(&plugworker_consul_client::admin::ServiceIntentions {
            name: "test-runner".into(),
            sources: vec![
                plugworker_consul_client::admin::IntentionSource {
                    name: "controller".into(),
                    action: IntentionAction::Allow,
                    description: String::new(),
                },
                plugworker_consul_client::admin::IntentionSource {
                    name: "operator".into(),
                    action: IntentionAction::Allow,
                    description: String::new(),
                },
            ],
        })
        .await
        .unwrap();
    let intruder = stack.admit_runner("intruder").await;
    let consul_url = stack.consul_url();
    let call = |token: &str, extra: &[&str]| {
        let mut args = vec![
            "call",
            "--algorithm",
            "add",
            "--payload",
            r#"{"numbers": [2, 3]}"#,
            "--timeout",
            "10s",
        ];
        args.extend_from_slice(extra);
        // Run with tokio: the registry serves from this test's runtime.
        let mut command = tokio::process::Command::new(bin_path("plugworker"));
        command
            .args(&args)
            .env("CONSUL_HTTP_ADDR", &consul_url)
            .env("CONSUL_HTTP_TOKEN", token)
            .env("RUST_LOG", "warn");
        command
    };
    let output = call(&operator, &["--mesh-service", "operator"])
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

    // Plaintext against a mesh runner: a clear error, nothing on stdout.
    let output = call(BOOTSTRAP_TOKEN, &["--insecure-plaintext"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "a plaintext client got an answer");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("serves mTLS only"), "{stderr}");

    // An identity the runner's intentions do not allow.
    // (`intruder` has a token for its own identity; no intention names it.)
    let output = call(&intruder, &["--mesh-service", "intruder"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    // Neither flag: the call is made as `operator`, which its token and an intention allow.
    let output = call(&operator, &[]).output().await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["sum"], 5.0);
}
