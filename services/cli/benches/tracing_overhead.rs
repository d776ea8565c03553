//! Tracing overhead: jobs/s through `plugworker dev` (embedded registry, in-process
//! controller, a real `test-runner` process, `echo` jobs) with tracing off, and with
//! tracing on (always-on sampler, every process exporting OTLP to a receiver in this
//! process), alternating rounds; the ratio on/off (goal >= 0.9).
//!
//! `echo` does no work, so this is the worst case: the spans' cost is all there is. Jobs/s
//! is measured between the first and the last result line, which leaves out start-up.
//! `scripts/bench-tracing.sh`; BENCH_JOBS per run (default 5000), BENCH_ROUNDS (3).

use plugworker_testkit::bin_path;
use plugworker_testkit::otlp::OtlpReceiver;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Jobs/s of one `plugworker dev` run over `jobs_file` with `runner`.
async fn run(
    jobs_file: &std::path::Path,
    runner: &str,
    jobs: usize,
    tracing: Option<&OtlpReceiver>,
) -> f64 {
    let mut command = tokio::process::Command::new(bin_path("plugworker"));
    command
        // As many jobs in flight as `plugworker controller` runs by default.
        .args([
            "dev",
            "--max-in-flight",
            "64",
            "--jobs",
            jobs_file.to_str().unwrap(),
            "--results",
            "-",
            "--runner",
        ])
        .arg(bin_path(runner))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for name in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
    ] {
        command.env_remove(name);
    }
    if let Some(receiver) = tracing {
        // Room for the spans of a whole run, so none are dropped and none are free.
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)
            .env("OTEL_TRACES_SAMPLER", "always_on")
            .env("OTEL_BSP_MAX_QUEUE_SIZE", "65536")
            .env("OTEL_BSP_SCHEDULE_DELAY", "1000");
    }
    let mut child = command.spawn().expect("plugworker dev");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut first, mut last, mut count) = (None, Instant::now(), 0usize);
    while let Some(line) = lines.next_line().await.unwrap() {
        assert!(line.contains(r#""status":"ok""#), "{line}");
        last = Instant::now();
        first.get_or_insert(last);
        count += 1;
    }
    assert!(child.wait().await.unwrap().success());
    assert_eq!(count, jobs);
    (count - 1) as f64 / (last - first.unwrap()).as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Alternating off/on rounds of one workload; prints and returns the ratio.
async fn compare(
    receiver: &OtlpReceiver,
    name: &str,
    runner: &str,
    job: &str,
    jobs: usize,
    rounds: usize,
) -> f64 {
    let file = std::env::temp_dir().join(format!(
        "plugworker-tracing-bench-{}-{name}.jsonl",
        std::process::id()
    ));
    std::fs::write(&file, format!("{job}\n").repeat(jobs)).unwrap();
    println!(
        "{name}: {rounds} alternating rounds of {jobs} jobs through plugworker dev ({runner})"
    );
    run(&file, runner, jobs, None).await;
    let spans_before = receiver.count();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        off.push(run(&file, runner, jobs, None).await);
        on.push(run(&file, runner, jobs, Some(receiver)).await);
        println!(
            "  round {round}: off {:8.0} jobs/s, on {:8.0} jobs/s",
            off[round - 1],
            on[round - 1]
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spans = receiver.count() - spans_before;
    let (off, on) = (median(off), median(on));
    let ratio = on / off;
    println!(
        "  median: off {off:.0} jobs/s, on {on:.0} jobs/s ({spans} spans received for {} traced jobs); ratio on/off {ratio:.3} (goal >= 0.9) {}",
        rounds * jobs,
        if ratio >= 0.9 { "MET" } else { "NOT MET" }
    );
    let _ = std::fs::remove_file(&file);
    ratio
}

fn main() {
    let jobs: usize = env_or("BENCH_JOBS", 20_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let receiver = OtlpReceiver::start_counting().await;
        println!("tracing overhead, {} CPUs, 64 jobs in flight", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        compare(&receiver, "echo (no work: the worst case)", "test-runner", r#"{"algorithm": "echo", "payload": {"message": "hello, plugworker"}}"#, jobs, rounds).await;
        compare(
            &receiver,
            "language_detection (a real, light algorithm)",
            "nlp-runner",
            r#"{"algorithm": "language_detection", "payload": {"text": "The quick brown fox jumps over the lazy dog while the children watch from the window."}}"#,
            jobs,
            rounds,
        )
        .await;
    });
}
