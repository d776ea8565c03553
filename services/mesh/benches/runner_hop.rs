//! The runner hop with Connect mTLS vs plaintext, side by side in one run.
//!
//! Starts two test-runner processes from the same build: one in mesh mode (leaf from an
//! embedded registry, every connection authorized), one with `--insecure-plaintext`.
//! Then, alternating between them for several rounds, drives `BENCH_CONCURRENCY` callers
//! over `BENCH_CONNECTIONS` long-lived connections calling `echo` for `BENCH_SECONDS`,
//! and prints requests per second for each and the mTLS / plaintext ratio. Connections
//! are reused, as the controller reuses them, so the handshake is paid once per
//! connection and the ratio measures the steady-state cost of encryption.
//!
//! ```sh
//! cargo build --workspace --bins
//! PLUGWORKER_BIN=$CARGO_TARGET_DIR/debug cargo bench --profile dev -p plugworker-mesh --bench runner_hop
//! ```
//!
//! The runners come from `PLUGWORKER_BIN` (default: next to this executable), so the
//! figures are those of whichever profile built them.

use plugworker_consul_client::{ConsulClient, ConsulConfig};
use plugworker_embedded_consul::{Registry, RegistryConfig};
use plugworker_mesh::{Identity, MeshConnector};
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_testkit::{Process, eventually};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner_binary() -> PathBuf {
    match std::env::var_os("PLUGWORKER_BIN") {
        Some(dir) => PathBuf::from(dir).join("test-runner"),
        None => plugworker_testkit::bin_path("test-runner"),
    }
}

/// Calls echo over `channels` with `concurrency` callers for `duration`; returns req/s.
async fn drive(channels: &[Channel], concurrency: usize, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for i in 0..concurrency {
        let mut client = RunnerClient::new(channels[i % channels.len()].clone());
        let (stop, done) = (stop.clone(), done.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client
                    .run(RunRequest {
                        algorithm: "echo".into(),
                        payload: br#"{"message": "benchmark payload of a typical small job"}"#
                            .to_vec(),
                    })
                    .await
                    .expect("echo call");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let calls = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    for caller in callers {
        caller.await.unwrap();
    }
    calls as f64 / elapsed.as_secs_f64()
}

fn main() {
    let connections: usize = env_or("BENCH_CONNECTIONS", 4);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 64);
    let seconds: u64 = env_or("BENCH_SECONDS", 5);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let registry = Registry::spawn("127.0.0.1:0", RegistryConfig::default())
            .await
            .unwrap();
        let binary = runner_binary();
        let common = ["--no-register", "--max-concurrent-runs", "256", "--max-queued-runs", "4096"];
        // Port 0 everywhere; each runner's bound address comes from its address file.
        let mut plain_args = vec!["--listen", "127.0.0.1:0", "--insecure-plaintext"];
        plain_args.extend(common);
        let (_plain, plain) = Process::spawn_reporting(&binary, &plain_args, &[]).await;
        let plain_address = plain.grpc().to_string();
        let consul_url = registry.url();
        let mut mesh_args = vec![
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
            "--consul-address",
            &consul_url,
        ];
        mesh_args.extend(common);
        let (_mesh, mesh) = Process::spawn_reporting(&binary, &mesh_args, &[]).await;
        let mesh_address = mesh.grpc().to_string();

        let consul = ConsulClient::new(ConsulConfig {
            address: registry.url(),
            ..ConsulConfig::default()
        })
        .unwrap();
        let identity = Identity::start(consul, "controller", Duration::from_secs(10))
            .await
            .unwrap();
        let plain: Vec<Channel> = (0..connections)
            .map(|_| {
                Endpoint::from_shared(format!("http://{plain_address}"))
                    .unwrap()
                    .connect_lazy()
            })
            .collect();
        let mesh: Vec<Channel> = (0..connections)
            .map(|_| {
                Endpoint::from_shared(format!("http://{mesh_address}"))
                    .unwrap()
                    .connect_with_connector_lazy(MeshConnector::new(identity.clone(), "test-runner"))
            })
            .collect();
        // Both up (algorithms loaded), every connection established, before measuring.
        for channel in plain.iter().chain(&mesh) {
            eventually(Duration::from_secs(60), "the runners answering", || async {
                RunnerClient::new(channel.clone())
                    .run(RunRequest {
                        algorithm: "echo".into(),
                        payload: br#"{"message": "warm-up"}"#.to_vec(),
                    })
                    .await
                    .ok()
            })
            .await;
        }

        println!(
            "runner hop, echo: {connections} reused connections, {concurrency} concurrent callers, {seconds} s per measurement, {rounds} rounds"
        );
        let (mut plain_total, mut mesh_total) = (0.0, 0.0);
        for round in 1..=rounds {
            // Alternate which goes first, so drift in machine load falls on both.
            let (first, second) = if round % 2 == 1 {
                (&plain, &mesh)
            } else {
                (&mesh, &plain)
            };
            let a = drive(first, concurrency, Duration::from_secs(seconds)).await;
            let b = drive(second, concurrency, Duration::from_secs(seconds)).await;
            let (p, m) = if round % 2 == 1 { (a, b) } else { (b, a) };
            println!(
                "round {round}: plaintext {p:>9.0} req/s   mTLS {m:>9.0} req/s   ratio {:.3}",
                m / p
            );
            plain_total += p;
            mesh_total += m;
        }
        let (p, m) = (plain_total / rounds as f64, mesh_total / rounds as f64);
        println!("mean:    plaintext {p:>9.0} req/s   mTLS {m:>9.0} req/s   ratio {:.3}", m / p);
    });
}
