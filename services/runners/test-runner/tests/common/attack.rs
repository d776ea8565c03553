//! Attacks on a runner's HTTP/2 server and what to read off the runner under them:
//! shared by tests/server_bounds.rs (scaled down) and examples/attack_runner.rs (full
//! size, run by scripts/attack-runner.sh).

#![allow(dead_code)]

use plugworker_testkit::{Process, eventually, metric_value};
use prost::bytes::Bytes;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub const MIB: u64 = 1024 * 1024;

/// A test-runner and where it serves.
pub struct Runner {
    pub process: Process,
    pub main: String,
    pub health: String,
    pub metrics: String,
}

/// Starts a test-runner with metrics, on port 0 everywhere, under an open-file limit of
/// `open_files` when given (a shell sets it, hard and soft, then becomes the runner). In
/// mesh mode (`consul` given) it registers there and serves health on its own plaintext
/// port; otherwise it serves everything in plaintext on its main port. Its addresses come
/// from its address file.
pub async fn start(
    runner: &Path,
    consul: Option<&str>,
    open_files: Option<u32>,
    extra: &[&str],
) -> Runner {
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--metrics-address",
        "127.0.0.1:0",
        "--check-interval",
        "1s",
        "--check-timeout",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    match consul {
        Some(url) => args
            .extend(["--health-listen", "127.0.0.1:0", "--consul-address", url].map(String::from)),
        None => args.extend(["--no-register", "--insecure-plaintext"].map(String::from)),
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let (process, addresses) = match open_files {
        None => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Process::spawn_reporting(runner, &args, &[]).await
        }
        Some(limit) => {
            // The address file's flag, appended last, reaches the runner through "$@".
            let script = format!("ulimit -n {limit} && exec \"$0\" \"$@\"");
            let mut shell = vec!["-c", script.as_str(), runner.to_str().unwrap()];
            shell.extend(args.iter().map(String::as_str));
            Process::spawn_reporting(Path::new("/bin/sh"), &shell, &[]).await
        }
    };
    Runner {
        process,
        main: addresses.grpc().to_string(),
        health: addresses.health().to_string(),
        metrics: addresses.metrics().to_string(),
    }
}

/// The runner's metrics text (a plain HTTP/1.0 GET: the runner's metrics server is all
/// there is to talk to).
pub async fn scrape(address: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(address).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: runner\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.ok()?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

pub async fn metric(runner: &Runner, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = scrape(&runner.metrics).await.expect("metrics answer");
    metric_value(&text, name, labels).unwrap_or(0.0)
}

/// A `grpc.health.v1` Check of the whole server on a new connection, as Consul's check
/// does it.
pub async fn check(address: &str) -> Result<ServingStatus, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| format!("check: {e}"))?;
    Ok(answer.into_inner().status())
}

pub async fn serving(address: &str) {
    eventually(Duration::from_secs(60), "SERVING", || async {
        (check(address).await == Ok(ServingStatus::Serving)).then_some(())
    })
    .await;
}

/// HTTP/2 calls that declare big messages and never finish, kept open while this lives.
pub struct NeverFinished {
    // Held so the streams stay open.
    _streams: Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>,
    pub opened: usize,
}

/// Opens up to `streams` calls to `path` at `address`, `per_connection` on each HTTP/2
/// connection (as many as the server's stream cap lets in), each declaring a gRPC message
/// of `declared` bytes and sending the first `sent` bytes of it. The client's bytes are
/// one shared buffer: the attack costs the test process nothing per stream.
pub async fn never_finished(
    address: &str,
    path: &str,
    streams: usize,
    per_connection: usize,
    declared: u32,
    sent: usize,
) -> NeverFinished {
    let mut message = Vec::with_capacity(5 + sent);
    message.push(0);
    message.extend_from_slice(&declared.to_be_bytes());
    message.resize(5 + sent, b'x');
    let message = Bytes::from(message);
    let mut open = Vec::new();
    while open.len() < streams {
        let Ok(tcp) = TcpStream::connect(address).await else {
            break;
        };
        let Ok((sender, connection)) = h2::client::handshake(tcp).await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        for _ in 0..per_connection.min(streams - open.len()) {
            let ready = tokio::time::timeout(Duration::from_secs(2), sender.clone().ready());
            let Ok(Ok(mut sender)) = ready.await else {
                break;
            };
            let head = http::Request::post(format!("http://{address}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let Ok((response, mut body)) = sender.send_request(head, false) else {
                break;
            };
            // Queued in the client; h2 sends it as the server's windows allow.
            if body.send_data(message.clone(), false).is_err() {
                break;
            }
            open.push((response, body));
        }
    }
    let opened = open.len();
    NeverFinished {
        _streams: open,
        opened,
    }
}

/// The runner's peak resident memory once the attack's bytes have landed: its RSS has
/// not moved by more than 1 MiB for a second.
pub async fn settled_peak(pid: u32) -> u64 {
    let mut last = super::rss(pid).1;
    let mut steady_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while steady_since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = super::rss(pid).1;
        if now.abs_diff(last) > MIB {
            steady_since = Instant::now();
        }
        last = now;
    }
    super::rss(pid).0
}

/// Up to `count` connections to `address` that never send a byte, kept open while the
/// result lives. A connection attempt that takes over a second is given up (the kernel
/// dropped its SYN while the runner's accept queue was full, or the runner has stopped
/// accepting); after three in a row, the flood stops.
pub async fn idle_connections(address: &str, count: usize) -> Vec<TcpStream> {
    let mut open = Vec::new();
    let mut timed_out = 0;
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => {
                open.push(tcp);
                timed_out = 0;
            }
            Ok(Err(_)) => {}
            Err(_) if timed_out == 2 => break,
            Err(_) => timed_out += 1,
        }
    }
    open
}
