//! The bounds of the runner's HTTP/2 server (docs/runner-bounds.md), on real test-runner
//! processes, under scaled-down versions of the attacks `scripts/attack-runner.sh` runs at
//! full size: calls that declare big messages and never finish, floods of idle
//! connections, and request bodies that stop arriving. Each test asserts that what the
//! runner holds stays flat as the attack grows, or that the bound acts within its time.

mod common;

use common::{registry, rss};
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_testkit::{Process, bin_path, eventually, free_port, metric_value};
use prost::bytes::Bytes;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const MIB: u64 = 1024 * 1024;

/// A test-runner and where it serves.
struct Runner {
    process: Process,
    main: String,
    health: String,
    metrics: String,
}

/// Starts a test-runner with metrics, under an open-file limit of `open_files` when given
/// (a shell sets it, hard and soft, then becomes the runner). In mesh mode (`consul`
/// given) it registers there and serves health on its own plaintext port; otherwise it
/// serves everything in plaintext on its main port.
fn start(consul: Option<&str>, open_files: Option<u32>, extra: &[&str]) -> Runner {
    let main = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let health = match consul {
        Some(_) => format!("127.0.0.1:{}", free_port()),
        None => main.clone(),
    };
    let mut args: Vec<String> = [
        "--listen",
        &main,
        "--metrics-address",
        &metrics,
        "--check-interval",
        "1s",
        "--check-timeout",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    match consul {
        Some(url) => {
            args.extend(["--health-listen", &health, "--consul-address", url].map(String::from))
        }
        None => args.extend(["--no-register", "--insecure-plaintext"].map(String::from)),
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let runner = bin_path("test-runner");
    let process = match open_files {
        None => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Process::spawn(&runner, &args, &[])
        }
        Some(limit) => {
            let script = format!("ulimit -n {limit} && exec \"$0\" \"$@\"");
            let mut shell = vec!["-c", script.as_str(), runner.to_str().unwrap()];
            shell.extend(args.iter().map(String::as_str));
            Process::spawn(std::path::Path::new("/bin/sh"), &shell, &[])
        }
    };
    Runner {
        process,
        main,
        health,
        metrics,
    }
}

/// The runner's metrics text (a plain HTTP/1.0 GET: the runner's metrics server is all
/// there is to talk to).
async fn scrape(address: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(address).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: runner\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.ok()?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

async fn metric(runner: &Runner, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = scrape(&runner.metrics).await.expect("metrics answer");
    metric_value(&text, name, labels).unwrap_or(0.0)
}

/// A `grpc.health.v1` Check of the whole server on a new connection, as Consul's check
/// does it.
async fn check(address: &str) -> Result<ServingStatus, String> {
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

async fn serving(address: &str) {
    eventually(Duration::from_secs(60), "SERVING", || async {
        (check(address).await == Ok(ServingStatus::Serving)).then_some(())
    })
    .await;
}

/// HTTP/2 calls that declare big messages and never finish, kept open while this lives.
struct NeverFinished {
    // Held so the streams stay open.
    _streams: Vec<(h2::client::ResponseFuture, h2::SendStream<Bytes>)>,
    opened: usize,
}

/// Opens up to `streams` calls to `path` at `address`, `per_connection` on each HTTP/2
/// connection (as many as the server's stream cap lets in), each declaring a gRPC message
/// of `declared` bytes and sending the first `sent` bytes of it. The client's bytes are
/// one shared buffer: the attack costs the test process nothing per stream.
async fn never_finished(
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
async fn settled_peak(pid: u32) -> u64 {
    let mut last = rss(pid).1;
    let mut steady_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    while steady_since.elapsed() < Duration::from_secs(1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss(pid).1;
        if now.abs_diff(last) > MIB {
            steady_since = Instant::now();
        }
        last = now;
    }
    rss(pid).0
}

/// Peak RSS growth (MiB) of `runner` under 100 and then 400 never-finished calls.
async fn growth_under_never_finished_calls(
    runner: &Runner,
    address: &str,
    path: &str,
    per_connection: usize,
) -> (u64, u64) {
    let pid = runner.process.pid();
    let idle = settled_peak(pid).await;
    let mut grown = Vec::new();
    for streams in [100, 400] {
        let attack = never_finished(
            address,
            path,
            streams,
            per_connection,
            MIB as u32,
            512 * 1024,
        )
        .await;
        let peak = settled_peak(pid).await;
        println!(
            "{path}: {} of {streams} calls opened; peak RSS {} MiB (+{} MiB)",
            attack.opened,
            peak / MIB,
            (peak - idle) / MIB
        );
        grown.push((peak - idle) / MIB);
        drop(attack);
    }
    (grown[0], grown[1])
}

/// The health port's requests are a few bytes, and it decodes no more: a call declaring
/// a 1 MiB message is refused at its first five bytes, so never-finished calls cost the
/// runner nothing however many come. (Before, the health service decoded up to tonic's
/// 4 MB per call: 400 calls sending 512 KiB each grew the runner by 200 MiB.)
#[tokio::test]
async fn never_finished_calls_to_the_health_port_do_not_grow_the_runner() {
    let (registry, _consul) = registry().await;
    let runner = start(Some(&registry.url()), None, &["--body-read-timeout", "60s"]);
    serving(&runner.health).await;
    let (at_100, at_400) = growth_under_never_finished_calls(
        &runner,
        &runner.health,
        "/grpc.health.v1.Health/Check",
        8,
    )
    .await;
    assert!(at_400 < 16, "+{at_400} MiB under 400 calls");
    assert!(
        at_400 <= at_100 + 8,
        "flat as calls grow: +{at_100} MiB under 100, +{at_400} MiB under 400"
    );
    assert_eq!(check(&runner.health).await, Ok(ServingStatus::Serving));
}

/// On the main port a Run call may carry --max-message-bytes, so what bounds the bytes
/// its calls hold is the port's receiving budget (--max-receiving-bytes, 8 MiB here) and
/// the flow-control windows of the connections: 400 calls each sending 512 KiB of a
/// declared 1 MiB message grow the runner no more than 100 do. (Without the budget,
/// tonic's decoder buffered all of it: +50 MiB under 100 calls, +200 MiB under 400.)
#[tokio::test]
async fn never_finished_calls_to_the_main_port_are_bounded_by_the_receiving_budget() {
    let runner = start(
        None,
        None,
        &[
            "--max-concurrent-runs",
            "2",
            "--max-queued-runs",
            "48",
            "--max-receiving-bytes",
            "8388608",
            "--body-read-timeout",
            "60s",
        ],
    );
    serving(&runner.main).await;
    let (at_100, at_400) = growth_under_never_finished_calls(
        &runner,
        &runner.main,
        "/plugworker.runner.v1.Runner/Run",
        50,
    )
    .await;
    // The budget, plus 1 MiB of window per connection (8 connections), plus slack.
    assert!(at_400 < 40, "+{at_400} MiB under 400 calls");
    assert!(
        at_400 <= at_100 + 16,
        "flat as calls grow: +{at_100} MiB under 100, +{at_400} MiB under 400"
    );
    // Calls keep working beside the attack's (which hold the budget until their body
    // timeout): a small one needs a frame's worth.
    assert_eq!(check(&runner.main).await, Ok(ServingStatus::Serving));
}

/// Up to `count` connections to `address` that never send a byte, kept open while the
/// result lives. Stops early when a connection takes over a second: the runner has
/// stopped accepting and its backlog is full.
async fn idle_connections(address: &str, count: usize) -> Vec<TcpStream> {
    let mut open = Vec::new();
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => open.push(tcp),
            Ok(Err(_)) => {}
            Err(_) => break,
        }
    }
    open
}

/// More idle connections than the port's cap and than the runner's open-file limit
/// (256 here): at the cap the oldest idle connection is closed, so the sockets stay
/// within 1.5 × the cap, the runner never runs out of file descriptors, and Consul's
/// check (a new connection each time) still gets SERVING. (Before, every connection was
/// kept: the runner hit EMFILE and the check went unanswered.)
#[tokio::test]
async fn idle_connections_beyond_the_cap_do_not_lock_out_the_health_check() {
    let (registry, consul) = registry().await;
    let runner = start(
        Some(&registry.url()),
        Some(256),
        &["--health-max-connections", "16", "--max-connections", "16"],
    );
    serving(&runner.health).await;
    let _flood = idle_connections(&runner.health, 400).await;
    let status = check(&runner.health).await;
    assert_eq!(
        status,
        Ok(ServingStatus::Serving),
        "{}",
        runner.process.log()
    );
    let open = metric(
        &runner,
        "plugworker_runner_connections",
        &[("port", "health")],
    )
    .await;
    assert!(open <= 24.0, "{open} connections open on the health port");
    let evicted = metric(
        &runner,
        "plugworker_runner_server_closed_total",
        &[("port", "health"), ("reason", "evicted")],
    )
    .await;
    assert!(evicted > 0.0, "the cap acted");
    // Consul's own check keeps passing.
    eventually(Duration::from_secs(10), "a passing check", || async {
        (!plugworker_testkit::passing_instances(&consul, "test-runner")
            .await
            .is_empty())
        .then_some(())
    })
    .await;
    assert!(!runner.process.log().contains("Too many open files"));
}

/// The same flood on the main port (plaintext here): a Run call on a new connection
/// still succeeds.
#[tokio::test]
async fn idle_connections_beyond_the_cap_do_not_lock_out_run_calls() {
    let runner = start(None, Some(256), &["--max-connections", "16"]);
    serving(&runner.main).await;
    let _flood = idle_connections(&runner.main, 400).await;
    let mut client = plugworker_testkit::runner_client(&runner.main, Duration::from_secs(5)).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        client.run(RunRequest {
            algorithm: "echo".into(),
            payload: br#"{"message": "through the flood"}"#.to_vec(),
        }),
    )
    .await
    .expect("answered")
    .expect("the Run call succeeds");
    assert!(String::from_utf8_lossy(&answer.into_inner().result).contains("through the flood"));
    let open = metric(
        &runner,
        "plugworker_runner_connections",
        &[("port", "main")],
    )
    .await;
    assert!(open <= 24.0, "{open} connections open on the main port");
    assert!(!runner.process.log().contains("Too many open files"));
}

/// A Run call whose body stops arriving halfway is answered UNAVAILABLE (the controller
/// retries elsewhere) and its stream reset once the body has been silent for
/// --body-read-timeout, instead of holding its stream and bytes until the client gives up.
#[tokio::test]
async fn a_body_that_stops_arriving_is_reset_within_the_body_timeout() {
    let runner = start(None, None, &["--body-read-timeout", "1s"]);
    serving(&runner.main).await;
    let tcp = TcpStream::connect(&runner.main).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut sender = sender.ready().await.unwrap();
    let head = http::Request::post(format!(
        "http://{}/plugworker.runner.v1.Runner/Run",
        runner.main
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let started = Instant::now();
    let (response, mut body) = sender.send_request(head, false).unwrap();
    // 10 of a declared 100 bytes, then nothing.
    let mut part = vec![0, 0, 0, 0, 100];
    part.extend_from_slice(&[0; 10]);
    body.send_data(Bytes::from(part), false).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let (head, mut answer) = response.await.expect("an answer").into_parts();
        while let Some(Ok(_)) = answer.data().await {}
        let trailers = answer.trailers().await.ok().flatten().unwrap_or_default();
        tonic::Status::from_header_map(&trailers)
            .or_else(|| tonic::Status::from_header_map(&head.headers))
            .expect("a grpc-status")
    })
    .await
    .expect("answered before the test gave up");
    let elapsed = started.elapsed();
    assert_eq!(answered.code(), Code::Unavailable, "{answered:?}");
    assert!(
        answered.message().contains("stopped arriving"),
        "{answered:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "reset at the body timeout: {elapsed:?}"
    );
    let resets = metric(
        &runner,
        "plugworker_runner_server_closed_total",
        &[("port", "main"), ("reason", "body_timeout")],
    )
    .await;
    assert_eq!(resets, 1.0);
}
