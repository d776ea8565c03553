//! The full-size attacks of issue 25 on real test-runner processes, with the figures
//! docs/security.md quotes. Run by scripts/attack-runner.sh (which builds the runner
//! first); tests/server_bounds.rs runs the same attacks scaled down.
//!
//! 1. Never-finished calls: 1,100 calls, each declaring a 4 MB gRPC message and sending
//!    3.9 MB of it, on the plaintext health port of a mesh-mode runner and on the
//!    plaintext main port of an `--insecure-plaintext` runner (the mTLS port has the same
//!    server and bounds); the runner's peak RSS at 275, 550 and 1,100 calls, each held
//!    15 s.
//! 2. Idle connections: 3,000 connections that never send a byte, to the health port of a
//!    mesh-mode runner and to the main port of a plaintext one, both under an open-file
//!    limit of 1,024 (where the audit's runner hit EMFILE at 1,084 connections); then
//!    Consul's check must still pass and Run calls must still succeed.

#[path = "../tests/common/mod.rs"]
mod common;

use common::attack::{self, MIB, Runner};
use plugworker_rpc::runner::v1::RunRequest;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

/// The test-runner binary beside this example's folder (target/<profile>/examples/..).
fn runner_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the example has a path");
    let path = exe
        .parent()
        .and_then(|examples| examples.parent())
        .expect("target/<profile>/examples")
        .join("test-runner");
    assert!(
        path.exists(),
        "{} missing: cargo build -p test-runner",
        path.display()
    );
    path
}

const DECLARED: u32 = 4_000_000;
const SENT: usize = 3_900_000;
const HELD: Duration = Duration::from_secs(15);

/// Each size against a fresh runner (`start`), so that one size's freed memory does not
/// count in the next one's figure.
async fn never_finished<F: std::future::Future<Output = Runner>>(
    start: impl Fn() -> F,
    port: &str,
    path: &str,
    per_connection: usize,
) {
    for streams in [275, 550, 1_100] {
        let runner = start().await;
        attack::serving(&runner.health).await;
        let address = if port == "health" {
            runner.health.clone()
        } else {
            runner.main.clone()
        };
        let pid = runner.process.pid();
        let idle = common::rss(pid).1;
        let started = Instant::now();
        let calls =
            attack::never_finished(&address, path, streams, per_connection, DECLARED, SENT).await;
        tokio::time::sleep(HELD.saturating_sub(started.elapsed())).await;
        let (peak, now) = common::rss(pid);
        let checked = Instant::now();
        let health = attack::check(&runner.health).await;
        println!(
            "  {streams:>5} calls attempted, {:>5} opened: RSS idle {} MiB, after 15 s {} MiB, peak {} MiB; health check {health:?} in {:?}",
            calls.opened,
            idle / MIB,
            now / MIB,
            peak / MIB,
            checked.elapsed()
        );
        let text = attack::scrape(&runner.metrics).await.unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.starts_with("plugworker_runner_server_closed_total"))
        {
            println!("    {line}");
        }
        drop(calls);
    }
}

async fn idle_flood(runner: &Runner, address: &str, port: &str) -> Vec<tokio::net::TcpStream> {
    let started = Instant::now();
    let flood = attack::idle_connections(address, 3_000).await;
    println!(
        "  {} of 3000 idle connections opened to the {port} port in {:?}",
        flood.len(),
        started.elapsed()
    );
    let open = attack::metric(runner, "plugworker_runner_connections", &[("port", port)]).await;
    println!("  connections the runner holds on the {port} port: {open}");
    flood
}

#[tokio::main]
async fn main() {
    let binary = runner_binary();
    let (registry, consul) = common::registry().await;

    println!("1a. never-finished 4 MB calls, health port of a mesh-mode runner (default bounds)");
    let url = registry.url();
    let (binary_path, url) = (binary.as_path(), url.as_str());
    let mesh = move || {
        attack::start(
            binary_path,
            Some(url),
            None,
            &["--service-name", "attacked"],
        )
    };
    never_finished(mesh, "health", "/grpc.health.v1.Health/Check", 8).await;

    println!("1b. never-finished 4 MB calls, main port of a plaintext runner (default bounds)");
    let plain = move || attack::start(binary_path, None, None, &[]);
    // Streams per connection: the default cap on a 2-core machine (2 + 64 + 16).
    never_finished(plain, "main", "/plugworker.runner.v1.Runner/Run", 82).await;

    println!("2a. 3,000 idle connections, health port of a mesh-mode runner, ulimit -n 1024");
    let mesh = attack::start(
        &binary,
        Some(&registry.url()),
        Some(1024),
        &["--service-name", "flooded"],
    )
    .await;
    attack::serving(&mesh.health).await;
    let flood = idle_flood(&mesh, &mesh.health, "health").await;
    let checked = Instant::now();
    let status = attack::check(&mesh.health).await;
    println!(
        "  health check on a new connection: {status:?} in {:?}",
        checked.elapsed()
    );
    // Two check intervals: Consul's own check ran under the flood.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let passing = plugworker_testkit::passing_instances(&consul, "flooded").await;
    println!("  passing instances in the registry: {}", passing.len());
    drop(flood);
    drop(mesh);

    println!("2b. 3,000 idle connections, main port of a plaintext runner, ulimit -n 1024");
    let plain = attack::start(&binary, None, Some(1024), &[]).await;
    attack::serving(&plain.main).await;
    let flood = idle_flood(&plain, &plain.main, "main").await;
    let mut ok = 0;
    let started = Instant::now();
    for _ in 0..10 {
        let mut client =
            plugworker_testkit::runner_client(&plain.main, Duration::from_secs(5)).await;
        let answer = client
            .run(RunRequest {
                algorithm: "echo".into(),
                payload: br#"{"message": "through the flood"}"#.to_vec(),
            })
            .await;
        ok += usize::from(answer.is_ok());
    }
    println!(
        "  Run calls on new connections: {ok} of 10 succeeded in {:?}",
        started.elapsed()
    );
    let status = attack::check(&plain.main).await;
    println!("  health check: {status:?}");
    assert_eq!(status, Ok(ServingStatus::Serving));
    drop(flood);
}
