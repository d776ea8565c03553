//! The bounds of the runner's HTTP/2 server (docs/runner-bounds.md), on real test-runner
//! processes, under scaled-down versions of the attacks `scripts/attack-runner.sh` runs at
//! full size: calls that declare big messages and never finish, floods of idle
//! connections, and request bodies that stop arriving. Each test asserts that what the
//! runner holds stays flat as the attack grows, or that the bound acts within its time.

use crate::common;

use common::attack::*;
use common::registry;
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_testkit::{bin_path, eventually};
use prost::bytes::Bytes;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

async fn start(consul: Option<&str>, open_files: Option<u32>, extra: &[&str]) -> Runner {
    common::attack::start(&bin_path("test-runner"), consul, open_files, extra).await
}

/// Connections closed (or calls reset) on `port` for `reason`, as the runner counts them.
async fn closed(runner: &Runner, port: &str, reason: &str) -> f64 {
    metric(
        runner,
        "plugworker_runner_server_closed_total",
        &[("port", port), ("reason", reason)],
    )
    .await
}

/// Calls the runner refused on `port` for declaring a message over its limit.
async fn refused(runner: &Runner, port: &str) -> f64 {
    closed(runner, port, "message_too_large").await
}

/// Connections the runner closed on `port` before (or without) reading their calls: at
/// its cap, or with no call's headers within the header timeout.
async fn evicted(runner: &Runner, port: &str) -> f64 {
    let mut total = 0.0;
    for reason in ["evicted", "closed_at_cap", "header_timeout"] {
        total += closed(runner, port, reason).await;
    }
    total
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
    let port = if address == runner.main {
        "main"
    } else {
        "health"
    };
    for streams in [100, 400] {
        let refused_before = refused(runner, port).await;
        let busy_before = closed(runner, port, "budget_busy").await;
        let evicted_before = evicted(runner, port).await;
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
        // The attack reached the runner: every call it opened is open there or was
        // refused by it (not only sent by the client), but for those on connections
        // the runner closed before their calls were read (at its cap, or at the header
        // timeout).
        assert_eq!(attack.opened, streams, "calls opened");
        let reached = || async {
            let open = metric(runner, "plugworker_runner_streams", &[("port", port)]).await;
            let refused = refused(runner, port).await - refused_before;
            // Beyond 3 waiting for the budget on one connection: answered at once.
            let busy = closed(runner, port, "budget_busy").await - busy_before;
            let evicted = evicted(runner, port).await - evicted_before;
            (
                open + refused + busy + evicted * per_connection as f64,
                format!(
                    "{open} open on the runner, {refused} refused by it for their size, {busy} for the budget, {evicted} connections closed unread"
                ),
            )
        };
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while reached().await.0 < streams as f64 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{streams} calls: {}", reached().await.1);
        // A small call still gets through beside the attack's (a message of one frame needs no
        // budget).
        assert_eq!(
            check(&runner.health).await,
            Ok(ServingStatus::Serving),
            "health under {streams} never-finished calls"
        );
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
    let runner = start(Some(&registry.url()), None, &["--body-read-timeout", "60s"]).await;
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
    )
    .await;
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
    // What grows with the calls is bounded per connection and per call, not by what they
    // declare (300 more calls × 512 KiB sent = 150 MiB): 6 more connections' windows
    // (6 MiB) and one unbudgeted frame per call (300 × 16 KiB = 4.7 MiB), plus slack
    // (measured: +8 MiB under 100 calls, +23 MiB under 400).
    assert!(
        at_400 <= at_100 + 24,
        "flat as calls grow: +{at_100} MiB under 100, +{at_400} MiB under 400"
    );
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
    )
    .await;
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
    // Idle connections that never sent a call are closed outright at 1.5 × the cap (not
    // told to close while they may still be a check whose headers are on their way).
    let closed = evicted(&runner, "health").await;
    assert!(closed > 0.0, "the cap acted");
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
    let runner = start(None, Some(256), &["--max-connections", "16"]).await;
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
    let runner = start(None, None, &["--body-read-timeout", "1s"]).await;
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
    let resets = closed(&runner, "main", "body_timeout").await;
    assert_eq!(resets, 1.0);
}

/// After the runner closes a connection (its GOAWAY and FIN sent), what the client still
/// sends is read and discarded for a while, not answered with a TCP reset: a client that
/// sent a call as the GOAWAY left must be able to read that GOAWAY (which says the call
/// was not processed) instead of meeting a broken pipe on its next write.
#[tokio::test]
async fn bytes_sent_after_the_runner_closed_a_connection_meet_no_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runner = start(None, None, &["--header-read-timeout", "1s"]).await;
    serving(&runner.main).await;
    // A client preface and its SETTINGS, then silence: the runner closes the connection at
    // the header timeout. Everything it sends is read, up to its FIN.
    let mut tcp = TcpStream::connect(&runner.main).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut received))
        .await
        .expect("the runner closes a silent connection")
        .expect("read up to its FIN, no reset");
    let mut frames = Vec::new();
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        frames.push(rest[3]);
        rest = &rest[(9 + length).min(rest.len())..];
    }
    const GOAWAY: u8 = 7;
    assert!(frames.contains(&GOAWAY), "a GOAWAY came first: {frames:?}");
    // A call's worth of bytes, then more: without the linger, the first meets a closed
    // socket (the kernel resets it) and the second fails with a broken pipe.
    for _ in 0..3 {
        tcp.write_all(&[0; 64])
            .await
            .expect("the socket still reads what the client sends");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connection's time bounds: one that sends nothing is closed at
/// --header-read-timeout, one that goes idle after a call at --idle-timeout, and a busy
/// one gets GOAWAY at --max-connection-age (then closes once its calls are done). Each is
/// counted by reason.
#[tokio::test]
async fn silent_idle_and_old_connections_are_closed_in_time() {
    let runner = start(
        None,
        None,
        &[
            "--header-read-timeout",
            "1s",
            "--idle-timeout",
            "1s",
            "--max-connection-age",
            "3s",
        ],
    )
    .await;
    serving(&runner.main).await;

    // Silent: closed by the runner (EOF) at the header timeout.
    let silent = tokio::spawn({
        let address = runner.main.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut tcp = TcpStream::connect(&address).await.unwrap();
            let started = Instant::now();
            let mut buffer = [0u8; 256];
            // The server's preface (SETTINGS) first, then EOF.
            while tcp.read(&mut buffer).await.map(|n| n > 0).unwrap_or(false) {}
            started.elapsed()
        }
    });

    // An HTTP/2 connection whose task ends when the runner closes it.
    async fn connection(
        address: &str,
    ) -> (
        h2::client::SendRequest<Bytes>,
        tokio::task::JoinHandle<Instant>,
    ) {
        let tcp = TcpStream::connect(address).await.unwrap();
        let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
        let ended = tokio::spawn(async move {
            let _ = connection.await;
            Instant::now()
        });
        (sender, ended)
    }
    async fn health_call(sender: &h2::client::SendRequest<Bytes>, address: &str) -> bool {
        let Ok(mut sender) = sender.clone().ready().await else {
            return false;
        };
        // An empty HealthCheckRequest: a 5-byte gRPC frame.
        let frame = vec![0, 0, 0, 0, 0];
        let head = http::Request::post(format!("http://{address}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let Ok((response, mut body)) = sender.send_request(head, false) else {
            return false;
        };
        if body.send_data(Bytes::from(frame), true).is_err() {
            return false;
        }
        response.await.is_ok()
    }

    // Idle after one call: closed at the idle timeout.
    let (idle, idle_ended) = connection(&runner.main).await;
    assert!(health_call(&idle, &runner.main).await);
    let went_idle = Instant::now();

    // Busy, a call every 200 ms: GOAWAY at the maximum age.
    let (busy, busy_ended) = connection(&runner.main).await;
    let busy_opened = Instant::now();
    let busy_calls = tokio::spawn({
        let address = runner.main.clone();
        async move {
            let mut answered = 0;
            while health_call(&busy, &address).await {
                answered += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answered
        }
    });

    fn still_open(what: &str) -> ! {
        panic!("{what} still open after 10 s")
    }
    let wait = Duration::from_secs(10);
    let silent = tokio::time::timeout(wait, silent)
        .await
        .unwrap_or_else(|_| still_open("the silent connection"))
        .unwrap();
    let idle_closed = tokio::time::timeout(wait, idle_ended)
        .await
        .unwrap_or_else(|_| still_open("the idle connection"))
        .unwrap()
        .duration_since(went_idle);
    let busy_closed = tokio::time::timeout(wait, busy_ended)
        .await
        .unwrap_or_else(|_| still_open("the busy connection"))
        .unwrap()
        .duration_since(busy_opened);
    let answered = busy_calls.await.unwrap();
    println!(
        "silent closed after {silent:?}, idle after {idle_closed:?}, busy after {busy_closed:?} ({answered} calls)"
    );
    assert!(
        silent >= Duration::from_millis(900) && silent < Duration::from_secs(3),
        "silent connection closed after {silent:?}"
    );
    assert!(
        idle_closed >= Duration::from_millis(900) && idle_closed < Duration::from_secs(3),
        "idle connection closed after {idle_closed:?}"
    );
    assert!(
        busy_closed >= Duration::from_millis(2_900) && busy_closed < Duration::from_secs(6),
        "busy connection closed after {busy_closed:?}"
    );
    assert!(
        answered >= 5,
        "the busy connection served calls until its age: {answered}"
    );
    for reason in ["header_timeout", "idle_timeout", "max_age"] {
        let count = closed(&runner, "main", reason).await;
        assert!(count >= 1.0, "{reason}: {count}");
    }
}

/// Large but legal calls whose sizes together exceed the receiving budget all succeed:
/// each reserves its whole message (from its 5-byte prefix) at once, and the budget
/// serves them in order, so they complete one after another instead of each holding a
/// part of the budget and all waiting for the rest until the body timeout. On one
/// connection, at most 3 wait (what their unread bytes leave of its window lets the calls
/// holding the budget finish); a call beyond that is answered `UNAVAILABLE` at once and
/// sent again, as the controller does. (Before, four waiting calls could fill the whole
/// window, and every call on the connection stalled until the body timeout.)
#[tokio::test]
async fn large_calls_beyond_the_receiving_budget_together_all_succeed() {
    let runner = start(
        None,
        None,
        &[
            "--max-concurrent-runs",
            "2",
            "--max-message-bytes",
            "1048576",
            // Room for two of the calls below, not six.
            "--max-receiving-bytes",
            "2200000",
            // Long enough for four calls ahead to finish on a loaded machine (two at a
            // time); calls that each held part of the budget would all reach it and fail.
            "--body-read-timeout",
            "15s",
        ],
    )
    .await;
    serving(&runner.main).await;
    let client = plugworker_testkit::runner_client(&runner.main, Duration::from_secs(5)).await;
    let message = "x".repeat(1_000_000);
    let calls = (0..6).map(|_| {
        let mut client = client.clone();
        let payload = format!(r#"{{"message": "{message}"}}"#).into_bytes();
        async move {
            loop {
                let answer = client
                    .run(RunRequest {
                        algorithm: "echo".into(),
                        payload: payload.clone(),
                    })
                    .await;
                match answer {
                    Err(status)
                        if status.code() == Code::Unavailable
                            && status.message().contains("receiving budget is taken") =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    answer => return answer,
                }
            }
        }
    });
    let answers = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
        .await
        .expect("answered before the test gave up");
    for answer in answers {
        let answer = answer.expect("each large call succeeds");
        assert!(answer.into_inner().result.len() > 1_000_000);
    }
    let resets = closed(&runner, "main", "body_timeout").await;
    assert_eq!(resets, 0.0);
}

/// A call that arrives as its connection is evicted (after GOAWAY is sent, before the
/// client has seen it: HTTP/2 accepts such calls) runs to its end: the short close grace
/// of an idle connection is extended to --max-connection-age-grace while a call is open,
/// instead of the socket being closed under the call (the controller would retry it and
/// the job would run twice).
#[tokio::test]
async fn a_call_arriving_with_the_goaway_of_an_eviction_completes() {
    let runner = start(None, None, &["--max-connections", "2"]).await;
    serving(&runner.main).await;
    let connections = || async {
        metric(
            &runner,
            "plugworker_runner_connections",
            &[("port", "main")],
        )
        .await
    };
    // The race is the client's to lose (its call may reach the runner after the final
    // GOAWAY): up to 10 tries, until two calls were accepted with the GOAWAY.
    let (mut completed, mut tries) = (0, 0);
    while tries < 10 && completed < 2 {
        tries += 1;
        let tcp = TcpStream::connect(&runner.main).await.unwrap();
        let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut sender = sender.ready().await.unwrap();
        let request = RunRequest {
            algorithm: "echo".into(),
            payload: br#"{"message": "late", "delay_ms": 1000}"#.to_vec(),
        };
        let mut frame = vec![0];
        frame.extend_from_slice(&(prost::Message::encoded_len(&request) as u32).to_be_bytes());
        frame.extend_from_slice(&prost::Message::encode_to_vec(&request));
        // One quick call first: a connection that has had none is not evicted within the
        // header timeout (its first call may be on its way).
        let head = || {
            http::Request::post(format!(
                "http://{}/plugworker.runner.v1.Runner/Run",
                runner.main
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
        };
        let (first, mut body) = sender.send_request(head(), false).unwrap();
        body.send_data(Bytes::from(vec![0, 0, 0, 0, 0]), true)
            .unwrap();
        let (_, mut answer) = first.await.unwrap().into_parts();
        while let Some(Ok(_)) = answer.data().await {}
        let mut sender = sender.ready().await.unwrap();
        // This connection is the port's only one, and idle; a second fills the cap.
        eventually(
            Duration::from_secs(5),
            "the connection registered",
            || async { (connections().await == 1.0).then_some(()) },
        )
        .await;
        let _filler = TcpStream::connect(&runner.main).await.unwrap();
        eventually(Duration::from_secs(5), "the cap filled", || async {
            (connections().await == 2.0).then_some(())
        })
        .await;
        // A third evicts the oldest idle one, this one; the call follows at once.
        let _evicting = TcpStream::connect(&runner.main).await.unwrap();
        let Ok((response, mut body)) = sender.send_request(head(), false) else {
            continue;
        };
        body.send_data(Bytes::from(frame), true).unwrap();
        let answered = tokio::time::timeout(Duration::from_secs(10), async {
            let (head, mut answer) = response.await?.into_parts();
            while let Some(Ok(_)) = answer.data().await {}
            let trailers = answer.trailers().await?.unwrap_or_default();
            Ok::<_, h2::Error>(
                tonic::Status::from_header_map(&trailers)
                    .or_else(|| tonic::Status::from_header_map(&head.headers)),
            )
        })
        .await
        .expect("answered before the test gave up");
        match answered {
            // Not processed (beyond the GOAWAY's last stream, or REFUSED_STREAM): safe
            // for a client to retry.
            Err(error)
                if error.is_go_away() || error.reason() == Some(h2::Reason::REFUSED_STREAM) =>
            {
                println!("refused: {error:?}");
            }
            Ok(Some(status)) if status.code() == Code::Ok => completed += 1,
            other => panic!("the call accepted with the GOAWAY died: {other:?}"),
        }
    }
    println!(
        "{completed} of {tries} calls sent with the GOAWAY completed; the others were refused"
    );
    assert!(
        completed >= 1,
        "no call was accepted with the GOAWAY: the race was not run"
    );
    let evicted = closed(&runner, "main", "evicted").await;
    assert!(evicted >= tries as f64, "evictions: {evicted}");
}

/// A health Watch (a stream that never ends) lasts no longer than the health port's idle
/// timeout (half the check interval here): it cannot hold a health connection busy, out of
/// reach of the idle timeout and ahead of Consul's checks, for ever.
#[tokio::test]
async fn a_health_watch_ends_within_the_health_ports_idle_timeout() {
    let (registry, _consul) = registry().await;
    let runner = start(Some(&registry.url()), None, &[]).await;
    serving(&runner.health).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", runner.health))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let mut watch = tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("a Watch starts")
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await;
    let elapsed = started.elapsed();
    assert!(ended.is_ok(), "the Watch still open after 10 s");
    // The idle timeout is 0.5 s (half the 1 s check interval), plus a loaded machine.
    assert!(elapsed < Duration::from_secs(3), "ended after {elapsed:?}");
}

/// At the cap, a connection that has had no call yet and is younger than the header
/// timeout is not the one told to close (it may be the next health check, its headers
/// on their way): the oldest idle connection that has had a call is, though it is newer.
#[tokio::test]
async fn a_fresh_connection_is_not_evicted_before_its_first_call_could_arrive() {
    use tokio::io::AsyncReadExt;
    let runner = start(None, None, &["--max-connections", "4"]).await;
    serving(&runner.main).await;
    let connections = || async {
        metric(
            &runner,
            "plugworker_runner_connections",
            &[("port", "main")],
        )
        .await
    };
    eventually(
        Duration::from_secs(5),
        "the check's connection gone",
        || async { (connections().await == 0.0).then_some(()) },
    )
    .await;
    // Three fresh connections (their first call not sent yet), then one that has had a call.
    let mut fresh = Vec::new();
    for _ in 0..3 {
        fresh.push(TcpStream::connect(&runner.main).await.unwrap());
    }
    let tcp = TcpStream::connect(&runner.main).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    let called_closed = tokio::spawn(connection);
    let mut sender = sender.ready().await.unwrap();
    let head = http::Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        runner.main
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut body) = sender.send_request(head, false).unwrap();
    body.send_data(Bytes::from(vec![0, 0, 0, 0, 0]), true)
        .unwrap();
    let (_, mut answer) = response.await.unwrap().into_parts();
    while let Some(Ok(_)) = answer.data().await {}
    eventually(Duration::from_secs(5), "four connections", || async {
        (connections().await == 4.0).then_some(())
    })
    .await;
    // The fifth: the connection that has had a call is evicted.
    let _fifth = TcpStream::connect(&runner.main).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), called_closed)
        .await
        .expect("the connection that had a call is closed")
        .unwrap()
        .ok();
    // The oldest fresh one got no GOAWAY: only the server's SETTINGS (frame type 4).
    let mut oldest = fresh.remove(0);
    let mut read = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut buffer = [0u8; 1024];
        while let Ok(n) = oldest.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            read.extend_from_slice(&buffer[..n]);
        }
    })
    .await;
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= read.len() {
        let length = u32::from_be_bytes([0, read[at], read[at + 1], read[at + 2]]) as usize;
        frames.push(read[at + 3]);
        at += 9 + length;
    }
    assert!(
        !frames.contains(&7),
        "the fresh connection got a GOAWAY: frames {frames:?}"
    );
    let evicted = closed(&runner, "main", "evicted").await;
    assert_eq!(evicted, 1.0);
}
