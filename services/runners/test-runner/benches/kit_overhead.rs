//! What the runner kit costs on top of plain gRPC.
//!
//! Starts two real server processes on loopback: `test-runner` (the kit serving the
//! trivial `echo` algorithm: JSON parse, schema validation, run slot, typed
//! (de)serialisation) and `bare-echo` (the same `Runner` service with nothing but tonic).
//! Drives both with the same closed-loop load, in alternating rounds, and prints round
//! trips/s, p50/p99 latency and the throughput ratio (goal: kit/bare >= 0.85).
//!
//! `cargo bench -p test-runner --bench kit_overhead`; tune with BENCH_SECONDS (per round,
//! default 4), BENCH_ROUNDS (default 3), BENCH_CONCURRENCY (default 16).

use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_testkit::Process;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const PAYLOAD: &[u8] = br#"{"message": "hello, plugworker"}"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server {
    name: &'static str,
    _process: Process,
    address: String,
}

/// Starts `program` on port 0 and reads the address it bound from its address file.
async fn start(name: &'static str, program: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (process, addresses) = Process::spawn_reporting(Path::new(program), &args, &[]).await;
    Server {
        name,
        _process: process,
        address: addresses.grpc().to_string(),
    }
}

async fn clients(address: &str, count: usize) -> Vec<RunnerClient<Channel>> {
    // A few HTTP/2 connections, shared by the concurrent callers as a real client would.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut channels = Vec::new();
    for _ in 0..4 {
        loop {
            match Channel::from_shared(format!("http://{address}"))
                .unwrap()
                .connect()
                .await
            {
                Ok(channel) => break channels.push(channel),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("cannot connect to {address}: {e}"),
            }
        }
    }
    (0..count)
        .map(|i| RunnerClient::new(channels[i % channels.len()].clone()))
        .collect()
}

async fn wait_ready(client: &mut RunnerClient<Channel>) {
    for _ in 0..400 {
        if client.run(request()).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server never answered");
}

fn request() -> RunRequest {
    RunRequest {
        algorithm: "echo".into(),
        payload: PAYLOAD.to_vec(),
    }
}

struct Round {
    throughput: f64,
    latencies: Vec<Duration>,
}

async fn round(clients: &[RunnerClient<Channel>], duration: Duration) -> Round {
    let started = Instant::now();
    let stop = started + duration;
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < stop {
                    let sent = Instant::now();
                    client.run(request()).await.expect("run succeeds");
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Round {
        throughput: latencies.len() as f64 / elapsed,
        latencies,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let seconds: u64 = env_or("BENCH_SECONDS", 4);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let kit = start(
            "kit (test-runner, echo)",
            env!("CARGO_BIN_EXE_test-runner"),
            &["--no-register", "--insecure-plaintext", "--max-concurrent-runs", "256", "--max-queued-runs", "1024"],
        )
        .await;
        let bare = start("bare tonic echo", env!("CARGO_BIN_EXE_bare-echo"), &[]).await;
        let mut sets = Vec::new();
        for server in [&kit, &bare] {
            let mut set = clients(&server.address, concurrency).await;
            wait_ready(&mut set[0]).await;
            round(&set, Duration::from_millis(500)).await; // warm-up
            sets.push(set);
        }
        println!(
            "kit overhead: {rounds} alternating rounds of {seconds}s, {concurrency} concurrent callers, {} CPUs",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        let mut results: Vec<Vec<Round>> = vec![Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (i, set) in sets.iter().enumerate() {
                results[i].push(round(set, Duration::from_secs(seconds)).await);
            }
        }
        let mut medians = Vec::new();
        for (server, rounds) in [&kit, &bare].iter().zip(&results) {
            let mut throughputs: Vec<f64> = rounds.iter().map(|r| r.throughput).collect();
            throughputs.sort_by(f64::total_cmp);
            let median = throughputs[throughputs.len() / 2];
            let mut all: Vec<Duration> = rounds.iter().flat_map(|r| r.latencies.iter().copied()).collect();
            all.sort();
            println!(
                "{:<26} {:>9.0} round trips/s (median of rounds)  p50 {:>7.1} µs  p99 {:>7.1} µs",
                server.name,
                median,
                percentile(&all, 0.50).as_secs_f64() * 1e6,
                percentile(&all, 0.99).as_secs_f64() * 1e6,
            );
            medians.push(median);
        }
        let ratio = medians[0] / medians[1];
        println!("throughput ratio kit/bare: {ratio:.3} (goal >= 0.85) {}", if ratio >= 0.85 { "MET" } else { "NOT MET" });

        // Unloaded latency: one caller, one request at a time.
        for (server, set) in [&kit, &bare].iter().zip(&sets) {
            let single = round(&set[..1], Duration::from_secs(2)).await;
            println!(
                "{:<26} single caller: p50 {:>7.1} µs  p99 {:>7.1} µs",
                server.name,
                percentile(&single.latencies, 0.50).as_secs_f64() * 1e6,
                percentile(&single.latencies, 0.99).as_secs_f64() * 1e6,
            );
        }
    });
}
