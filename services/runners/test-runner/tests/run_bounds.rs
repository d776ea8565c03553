//! Runner resource bounds under deadlines, on a real test-runner process: a deadline
//! answers the caller on time, but the run slot stays taken until the run's blocking
//! work has really ended, so blocking work (and its memory) never exceeds
//! `--max-concurrent-runs`, however many callers give up.

use crate::common;

use common::{rss, start_unregistered};
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_testkit::runner_client;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Request};

const SLOTS: usize = 2;
/// Each blocking section: long enough to outlive every deadline below many times over.
const BURN_MS: u64 = 3_000;
const BURN_MIB: u64 = 100;

fn burn(ms: u64, megabytes: u64, timeout: Option<&str>) -> Request<RunRequest> {
    let mut request = Request::new(RunRequest {
        algorithm: "burn".into(),
        payload: serde_json::to_vec(&serde_json::json!({"ms": ms, "megabytes": megabytes}))
            .unwrap(),
    });
    if let Some(timeout) = timeout {
        // Only the header, so the deadline the server sees is the one under test.
        request
            .metadata_mut()
            .insert("grpc-timeout", timeout.parse().unwrap());
    }
    request
}

async fn serving(client: &mut RunnerClient<Channel>) {
    plugworker_testkit::eventually(Duration::from_secs(15), "burn to run", || {
        let mut client = client.clone();
        async move { client.run(burn(0, 0, None)).await.ok() }
    })
    .await;
}

#[tokio::test]
async fn deadlines_answer_on_time_but_blocking_work_keeps_its_slot() {
    let slots = SLOTS.to_string();
    let (mut runner, address) = start_unregistered(
        "test-runner",
        &["--max-concurrent-runs", &slots, "--max-queued-runs", "16"],
        &[],
    )
    .await;
    let mut client = runner_client(&address, Duration::from_secs(15)).await;
    serving(&mut client).await;
    let (_, idle_rss) = rss(runner.pid());

    // Three waves of callers, each wave as many as there are slots, each caller giving up
    // after 300 ms, the next wave sent once the previous one has its answers. If a slot
    // went back with the deadline's answer, every wave would start its own blocking
    // sections beside the earlier ones: 3 × SLOTS threads and 3 × SLOTS × 100 MiB at once.
    let mut answered = Vec::new();
    for _wave in 0..3 {
        let calls = (0..SLOTS).map(|_| {
            let address = address.clone();
            async move {
                // One connection per caller: the runner's accepted sockets keep Nagle's
                // algorithm on, so a second answer on a shared connection can wait for
                // the client's delayed ACK (~40 ms), past the caller's own timer.
                let mut client = runner_client(&address, Duration::from_secs(15)).await;
                let sent = Instant::now();
                let outcome = client.run(burn(BURN_MS, BURN_MIB, Some("300m"))).await;
                (outcome, sent.elapsed())
            }
        });
        answered.extend(futures::future::join_all(calls).await);
    }
    for (caller, (outcome, elapsed)) in answered.iter().enumerate() {
        let status = outcome.as_ref().expect_err("every caller gives up first");
        println!("caller {caller}: {elapsed:?}: {status:?}");
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "caller {caller}: {status:?}"
        );
        assert!(
            *elapsed < Duration::from_millis(BURN_MS) / 2,
            "caller {caller} answered after {elapsed:?}: {status:?}"
        );
    }
    // The first wave was answered while its work ran; the later ones while waiting for
    // the slots that work still held.
    let waited = answered
        .iter()
        .filter(|(o, _)| {
            o.as_ref()
                .is_err_and(|s| s.message().contains("waiting for a run slot"))
        })
        .count();
    assert_eq!(waited, 2 * SLOTS, "{answered:?}");

    // A caller without a deadline gets the next free slot, once the work has ended, and
    // learns how many blocking sections ever ran at once.
    let report = client.run(burn(0, 0, None)).await.unwrap().into_inner();
    let report: serde_json::Value = serde_json::from_slice(&report.result).unwrap();
    assert_eq!(
        report["max_concurrent"].as_u64().unwrap(),
        SLOTS as u64,
        "{report}"
    );
    let (peak, _) = rss(runner.pid());
    let grown = peak.saturating_sub(idle_rss) / (1024 * 1024);
    println!(
        "test-runner: idle RSS {} MiB, peak {} MiB (+{grown} MiB for {} × {BURN_MIB} MiB sections allowed at once)",
        idle_rss / (1024 * 1024),
        peak / (1024 * 1024),
        SLOTS
    );
    // SLOTS sections of 100 MiB, plus allocator slack; six at once would be +600 MiB.
    assert!(
        grown < (SLOTS as u64 + 1) * BURN_MIB,
        "peak RSS grew by {grown} MiB"
    );
    // The first wave's work, abandoned by its callers, said when it ended (the report
    // above needed only one of the two slots back).
    let overran = "blocking work ended after its run's deadline";
    plugworker_testkit::eventually(Duration::from_secs(10), "both overruns logged", || {
        let count = runner.log().matches(overran).count();
        async move { (count == SLOTS).then_some(()) }
    })
    .await;
    assert!(runner.is_running());
}
