//! A real runner process (the test-runner binary) in mesh mode, the default: it registers
//! as Connect-native, serves its jobs over mTLS only, and answers health in plaintext on
//! its own port for Consul's check and `--health-probe`. And what it does when it cannot
//! get a certificate.

use crate::common;

use common::*;
use plugworker_embedded_consul::{Registry, RegistryConfig};
use plugworker_mesh::MeshConnector;
use plugworker_rpc::runner::v1::ListAlgorithmsRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_testkit::{Addresses, ClosedPort, Process, bin_path, eventually};
use std::pin::Pin;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::Endpoint;
use tower::Service;

/// A mesh test-runner registering with the agent at `consul_url`, every port 0: its
/// process and the addresses it bound (gRPC, health; metrics when asked for through
/// `PLUGWORKER_METRICS_ADDRESS`).
async fn start_runner(consul_url: &str, envs: &[(&str, &str)]) -> (Process, Addresses) {
    Process::spawn_reporting(
        &bin_path("test-runner"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
            "--consul-address",
            consul_url,
            "--check-interval",
            "1s",
            "--check-timeout",
            "1s",
        ],
        envs,
    )
    .await
}

fn probe(health: &str) -> Output {
    std::process::Command::new(bin_path("test-runner"))
        .args([
            "--health-probe",
            "--health-listen",
            health,
            "--check-timeout",
            "2s",
        ])
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_mesh_runner_registers_connect_native_and_serves_jobs_over_mtls_only() {
    let registry = registry(RegistryConfig::default()).await;
    let consul = consul(&registry);
    let (mut runner, addresses) = start_runner(&registry.url(), &[]).await;
    let (listen, health) = (addresses.grpc().to_string(), addresses.health().to_string());
    let port: u16 = listen.rsplit_once(':').unwrap().1.parse().unwrap();

    // Listed by the Connect health view, passing: the check reached the health port.
    let entry = eventually(
        Duration::from_secs(60),
        "a passing Connect-native test-runner",
        || async {
            consul
                .health_connect("test-runner", &[], true, Default::default())
                .await
                .ok()
                .and_then(|(entries, _)| entries.into_iter().next())
        },
    )
    .await;
    assert_eq!(entry.service.port, port);
    let check = &entry
        .checks
        .iter()
        .find(|c| c.check_type == "grpc")
        .expect("a gRPC check");
    assert_eq!(check.status, plugworker_consul_client::CheckStatus::Passing);

    let probed = probe(&health);
    assert!(
        probed.status.success(),
        "{}",
        String::from_utf8_lossy(&probed.stderr)
    );
    assert!(String::from_utf8_lossy(&probed.stdout).contains("SERVING"));

    // The controller's way in: its own leaf, expecting the runner's service.
    let controller = identity(&registry, "controller").await;
    let mut client = RunnerClient::new(mesh_channel(
        &controller,
        "test-runner",
        listen.parse().unwrap(),
    ));
    let listing = client
        .list_algorithms(ListAlgorithmsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listing.service_name, "test-runner");
    let answer = client
        .run(plugworker_rpc::runner::v1::RunRequest {
            algorithm: "echo".into(),
            payload: br#"{"message": "over mTLS"}"#.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(String::from_utf8_lossy(&answer.result).contains("over mTLS"));

    // Plaintext gRPC to the job port gets nothing.
    let plaintext = Endpoint::from_shared(format!("http://{listen}"))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let refused = RunnerClient::new(plaintext)
        .list_algorithms(ListAlgorithmsRequest {})
        .await
        .unwrap_err();
    eprintln!("plaintext to the mTLS port: {refused}");
    // The health port serves health and nothing else.
    let health_only = Endpoint::from_shared(format!("http://{health}"))
        .unwrap()
        .connect_lazy();
    let status = RunnerClient::new(health_only)
        .list_algorithms(ListAlgorithmsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // SIGTERM: drained, deregistered, exit 0.
    runner.signal("TERM");
    assert!(runner.wait_exit(Duration::from_secs(20)).await.success());
    let (left, _) = consul
        .health_connect("test-runner", &[], false, Default::default())
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_mesh_runner_without_a_certificate_stays_not_serving_and_unregistered_until_it_gets_one()
{
    // No agent yet at this address: held, refusing connections, until the agent starts.
    let no_agent = ClosedPort::new();
    let (runner, addresses) = start_runner(&no_agent.url(), &[]).await;
    let health = addresses.health().to_string();

    eventually(
        Duration::from_secs(30),
        "the runner's explanation",
        || async {
            runner
                .log()
                .contains("no Connect certificate for this runner yet")
                .then_some(())
        },
    )
    .await;
    let probed = probe(&health);
    assert!(!probed.status.success());
    assert!(
        String::from_utf8_lossy(&probed.stderr).contains("NOT_SERVING"),
        "{}",
        String::from_utf8_lossy(&probed.stderr)
    );
    assert!(
        runner.log().contains("is the Consul agent reachable"),
        "{}",
        runner.log()
    );

    // The agent comes up on the port held all along: the runner gets its leaf, registers
    // and turns SERVING.
    let listener = tokio::net::TcpListener::from_std(no_agent.open()).unwrap();
    let registry = Registry::spawn_on(listener, RegistryConfig::default()).unwrap();
    let consul = consul(&registry);
    passing(&consul).await;
    assert!(probe(&health).status.success());
}

#[tokio::test]
async fn a_mesh_runner_whose_token_may_not_write_its_service_says_so() {
    let registry = registry(RegistryConfig {
        acl_enabled: true,
        acl_default_policy: plugworker_embedded_consul::IntentionAction::Deny,
        acl_bootstrap_token: Some("management-secret".into()),
        ..RegistryConfig::default()
    })
    .await;
    let (runner, addresses) =
        start_runner(&registry.url(), &[("CONSUL_HTTP_TOKEN", "not-a-token")]).await;
    let health = addresses.health().to_string();
    eventually(
        Duration::from_secs(30),
        "the runner's explanation",
        || async {
            let log = runner.log();
            (log.contains("no Connect certificate for this runner yet") && log.contains("403"))
                .then_some(())
        },
    )
    .await;
    assert!(
        runner.log().contains("needs service:write"),
        "{}",
        runner.log()
    );
    assert!(!probe(&health).status.success());
    // Nothing registered (an anonymous catalog read would be refused: ask as management).
    let management =
        plugworker_consul_client::ConsulClient::new(plugworker_consul_client::ConsulConfig {
            address: registry.url(),
            token: Some("management-secret".into()),
            ..Default::default()
        })
        .unwrap();
    let (services, _) = management
        .catalog_services(Default::default())
        .await
        .unwrap();
    assert!(!services.contains_key("test-runner"), "{services:?}");
}

/// Waits until the test-runner is registered and passing in the Connect health view.
async fn passing(consul: &plugworker_consul_client::ConsulClient) {
    eventually(
        Duration::from_secs(60),
        "the runner registered and passing",
        || async {
            consul
                .health_connect("test-runner", &[], true, Default::default())
                .await
                .ok()
                .filter(|(entries, _)| !entries.is_empty())
        },
    )
    .await;
}

/// A mesh test-runner on its own embedded registry, passing, with its metrics served, and
/// the controller's identity to call it with.
struct MeshRunner {
    registry: plugworker_embedded_consul::RunningRegistry,
    consul: plugworker_consul_client::ConsulClient,
    listen: String,
    metrics: String,
    process: Process,
    controller: plugworker_mesh::Identity,
}

impl MeshRunner {
    async fn start(config: RegistryConfig, envs: &[(&str, &str)]) -> Self {
        let registry = registry(config).await;
        let consul = consul(&registry);
        let mut all = envs.to_vec();
        all.push(("PLUGWORKER_METRICS_ADDRESS", "127.0.0.1:0"));
        let (process, addresses) = start_runner(&registry.url(), &all).await;
        let (listen, metrics) = (
            addresses.grpc().to_string(),
            addresses.metrics().to_string(),
        );
        passing(&consul).await;
        let controller = identity(&registry, "controller").await;
        Self {
            registry,
            consul,
            listen,
            metrics,
            process,
            controller,
        }
    }

    /// A client calling the runner as the controller, over the mesh.
    fn client(&self) -> RunnerClient<tonic::transport::Channel> {
        RunnerClient::new(mesh_channel(
            &self.controller,
            "test-runner",
            self.listen.parse().unwrap(),
        ))
    }

    /// Connections its main port closed for `reason`.
    async fn closed(&self, reason: &str) -> f64 {
        closed(&self.metrics, reason).await
    }

    /// `echo` runs that succeeded.
    async fn echo_runs(&self) -> f64 {
        let text = metrics(&self.metrics).await;
        plugworker_testkit::metric_value(
            &text,
            "plugworker_runner_runs_total",
            &[("algorithm", "echo"), ("code", "ok")],
        )
        .unwrap_or(0.0)
    }

    /// Waits until an `echo` run is in flight (the runner's own gauge says so).
    async fn echo_in_flight(&self) {
        eventually(Duration::from_secs(10), "an echo run in flight", || async {
            let text = metrics(&self.metrics).await;
            plugworker_testkit::metric_value(
                &text,
                "plugworker_runner_runs_in_flight",
                &[("algorithm", "echo")],
            )
            .filter(|in_flight| *in_flight >= 1.0)
        })
        .await;
    }
}

/// An `echo` run that answers `message` after `delay_ms`.
fn echo_run(message: &str, delay_ms: u64) -> plugworker_rpc::runner::v1::RunRequest {
    plugworker_rpc::runner::v1::RunRequest {
        algorithm: "echo".into(),
        payload: serde_json::to_vec(&serde_json::json!({"message": message, "delay_ms": delay_ms}))
            .unwrap(),
    }
}

/// Authorization is re-checked on open connections: when an intention flips to deny, the
/// runner's server sends GOAWAY on the controller's open connection within two authorize
/// cache TTLs (1 s here: re-checked every TTL, with a decision up to one TTL old). The call in flight on it
/// finishes (no job lost), and the next call, on a new connection, is refused (a
/// transport error, which the controller retries elsewhere). Without the re-check the open
/// connection kept serving after the deny, for as long as the controller kept it.
#[tokio::test]
async fn a_denied_intention_closes_an_open_connection_within_the_authorize_ttl() {
    let runner = MeshRunner::start(
        RegistryConfig::default(),
        &[("PLUGWORKER_MESH_AUTHORIZE_CACHE_TTL", "1s")],
    )
    .await;
    let mut client = runner.client();
    let run = echo_run;
    client
        .run(run("allowed", 0))
        .await
        .expect("allowed at first");

    // A call in flight while the deny lands: 2.5 s, past the TTL.
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        let request = run("in flight", 2_500);
        async move { client.run(request).await }
    });
    runner.echo_in_flight().await;
    intention(&runner.registry, "controller", "test-runner", "deny").await;
    let denied = std::time::Instant::now();
    let deauthorized = eventually(Duration::from_secs(10), "the connection closed", || async {
        Some(runner.closed("deauthorized").await).filter(|closed| *closed >= 1.0)
    })
    .await;
    let elapsed = denied.elapsed();
    assert_eq!(deauthorized, 1.0);
    // A re-check reuses a decision up to one TTL old, and runs every TTL: within two
    // TTLs, plus a second for the agent's answer and a scrape on a loaded machine.
    assert!(elapsed < Duration::from_secs(3), "closed after {elapsed:?}");

    let finished = in_flight
        .await
        .unwrap()
        .expect("the call in flight finishes");
    assert!(String::from_utf8_lossy(&finished.into_inner().result).contains("in flight"));
    // A new connection is refused after its handshake (a transport error to tonic).
    client
        .run(run("after the deny", 0))
        .await
        .expect_err("refused on a new connection");
    assert!(
        runner
            .process
            .log()
            .contains("mesh connection no longer authorized"),
        "{}",
        runner.process.log()
    );
}

/// The server-to-client half of an HTTP/2 connection with its GOAWAY and PING frames
/// taken out (and counted): what a client that ignores GOAWAY sees. Without the PING the
/// server's graceful close never gets to its second GOAWAY, so it goes on receiving new
/// calls on the connection until its grace ends, as from a client that sent them anyway.
struct IgnoresGoAway<T> {
    inner: T,
    /// Bytes read from the server, not yet whole frames.
    pending: Vec<u8>,
    /// Whole frames kept, not yet handed to the reader.
    ready: std::collections::VecDeque<u8>,
    go_aways: Arc<AtomicU32>,
}

impl<T: AsyncRead + Unpin> AsyncRead for IgnoresGoAway<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while this.ready.is_empty() {
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            this.pending.extend_from_slice(read.filled());
            // A frame: 3 bytes of payload length, its type, flags, stream ID (4 bytes).
            while this.pending.len() >= 9 {
                let length =
                    u32::from_be_bytes([0, this.pending[0], this.pending[1], this.pending[2]]);
                let total = 9 + length as usize;
                if this.pending.len() < total {
                    break;
                }
                let frame: Vec<u8> = this.pending.drain(..total).collect();
                match frame[3] {
                    0x7 => {
                        this.go_aways.fetch_add(1, Ordering::SeqCst);
                    }
                    0x6 => {}
                    _ => this.ready.extend(frame),
                }
            }
        }
        let n = buf.remaining().min(this.ready.len());
        let bytes: Vec<u8> = this.ready.drain(..n).collect();
        buf.put_slice(&bytes);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IgnoresGoAway<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A unary `Run` call on a raw HTTP/2 connection: the gRPC status the runner answered
/// (`0` for a result), and the response message's bytes.
async fn raw_run(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    message: &str,
    delay_ms: u64,
) -> Result<(String, Vec<u8>), h2::Error> {
    let request = http::Request::post("http://runner/plugworker.runner.v1.Runner/Run")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    let message = prost::Message::encode_to_vec(&plugworker_rpc::runner::v1::RunRequest {
        algorithm: "echo".into(),
        payload: serde_json::to_vec(&serde_json::json!({"message": message, "delay_ms": delay_ms}))
            .unwrap(),
    });
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    body.send_data(framed.into(), true).unwrap();
    let response = response.await?;
    // A trailers-only answer (an error) has the status in its headers.
    if let Some(status) = response.headers().get("grpc-status") {
        return Ok((status.to_str().unwrap().to_string(), Vec::new()));
    }
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .map_or("none".to_string(), |s| s.to_str().unwrap().to_string());
    Ok((status, data.get(5..).unwrap_or_default().to_vec()))
}

/// A raw HTTP/2 connection to `runner` as the controller that ignores the runner's GOAWAY
/// ([`IgnoresGoAway`]), and the count of GOAWAY frames it took out.
async fn ignoring_go_away(
    runner: &MeshRunner,
) -> (h2::client::SendRequest<bytes::Bytes>, Arc<AtomicU32>) {
    let tls = MeshConnector::new(runner.controller.clone(), "test-runner")
        .call(format!("http://{}", runner.listen).parse().unwrap())
        .await
        .unwrap()
        .into_inner();
    let go_aways = Arc::new(AtomicU32::new(0));
    let (client, connection) = h2::client::handshake(IgnoresGoAway {
        inner: tls,
        pending: Vec::new(),
        ready: Default::default(),
        go_aways: go_aways.clone(),
    })
    .await
    .unwrap();
    tokio::spawn(connection);
    (client, go_aways)
}

/// A client that ignores the GOAWAY of a deny gets nothing more served: after the
/// intention flips to deny, the runner sends GOAWAY on the open connection, and a new call
/// sent on it anyway is refused with `REFUSED_STREAM` before any processing (not run, so
/// the controller sends it again on a new connection, whose handshake is refused:
/// `UNAVAILABLE`, retried elsewhere), while the call already in flight finishes. tonic's
/// and h2's clients stop sending after a GOAWAY, so this client is h2's with the server's
/// GOAWAY and PING frames taken out of what it reads.
#[tokio::test]
async fn a_new_call_on_a_deauthorized_connection_is_refused_unprocessed() {
    let runner = MeshRunner::start(
        RegistryConfig::default(),
        &[("PLUGWORKER_MESH_AUTHORIZE_CACHE_TTL", "1s")],
    )
    .await;
    let (mut client, go_aways) = ignoring_go_away(&runner).await;

    let (status, _) = raw_run(&mut client, "allowed", 0).await.unwrap();
    assert_eq!(status, "0", "served while allowed");
    // In flight across the deny (it keeps the connection open: 5 s).
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        async move { raw_run(&mut client, "in flight", 5_000).await.unwrap() }
    });
    runner.echo_in_flight().await;
    intention(&runner.registry, "controller", "test-runner", "deny").await;
    eventually(Duration::from_secs(10), "the connection closed", || async {
        (runner.closed("deauthorized").await >= 1.0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "the GOAWAY received", || async {
        (go_aways.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;

    assert_refused_unprocessed(raw_run(&mut client, "after the deny", 0).await);
    let (status, result) = in_flight.await.unwrap();
    assert_eq!(status, "0", "the call in flight finishes");
    let result: plugworker_rpc::runner::v1::RunResponse =
        prost::Message::decode(result.as_slice()).unwrap();
    assert!(String::from_utf8_lossy(&result.result).contains("in flight"));
    assert_eq!(
        runner.echo_runs().await,
        2.0,
        "the refused call was not run"
    );
}

/// A call the runner refused before any processing: the stream reset `REFUSED_STREAM` by
/// the server.
fn assert_refused_unprocessed(answer: Result<(String, Vec<u8>), h2::Error>) {
    let refused = answer.expect_err("refused");
    assert_eq!(
        refused.reason(),
        Some(h2::Reason::REFUSED_STREAM),
        "{refused:?}"
    );
    assert!(refused.is_remote(), "{refused:?}");
}

/// A connection already closing (GOAWAY at its maximum age, with up to
/// `--max-connection-age-grace` left for calls in flight) is still re-authorized: a deny
/// during that grace refuses every new call at once, from a client that ignores the
/// GOAWAY. Without it the deny went unseen until the grace ended (5 minutes by default),
/// and every call sent meanwhile was run.
#[tokio::test]
async fn a_deny_during_the_max_age_grace_refuses_new_calls() {
    let runner = MeshRunner::start(
        RegistryConfig::default(),
        &[
            ("PLUGWORKER_MESH_AUTHORIZE_CACHE_TTL", "1s"),
            ("PLUGWORKER_MAX_CONNECTION_AGE", "1s"),
        ],
    )
    .await;
    let (mut client, go_aways) = ignoring_go_away(&runner).await;
    let (status, _) = raw_run(&mut client, "allowed", 0).await.unwrap();
    assert_eq!(status, "0", "served while allowed");
    eventually(
        Duration::from_secs(10),
        "closing at its max age",
        || async {
            (runner.closed("max_age").await >= 1.0 && go_aways.load(Ordering::SeqCst) >= 1)
                .then_some(())
        },
    )
    .await;
    // Still served in the grace while allowed (the client ignores the GOAWAY).
    let (status, _) = raw_run(&mut client, "in the grace", 0).await.unwrap();
    assert_eq!(status, "0", "served in the grace while allowed");
    let runs = runner.echo_runs().await;
    assert_eq!(runs, 2.0);

    intention(&runner.registry, "controller", "test-runner", "deny").await;
    eventually(
        Duration::from_secs(10),
        "the deny seen in the grace",
        || async { (runner.closed("deauthorized").await >= 1.0).then_some(()) },
    )
    .await;
    assert_refused_unprocessed(raw_run(&mut client, "after the deny", 0).await);
    assert_eq!(
        runner.echo_runs().await,
        runs,
        "the refused call was not run"
    );
}

/// A call that still arrives on a connection after its client certificate's `NotAfter` (from
/// a client that ignores the GOAWAY) is refused with `REFUSED_STREAM`, before any
/// processing: the controller sends such a call again on a new connection. The call in
/// flight across `NotAfter` finishes. (h2's and tonic's clients stop sending after a
/// GOAWAY; this one does not.)
#[tokio::test]
async fn a_new_call_after_the_client_certificates_not_after_is_refused_unprocessed() {
    let runner = MeshRunner::start(
        RegistryConfig {
            connect_leaf_ttl: Duration::from_secs(5),
            ..RegistryConfig::default()
        },
        &[],
    )
    .await;
    // The connection opens with the leaf the agent holds now (read before and after the
    // handshake, so a renewal in between shows).
    let (not_after, serial) = leaf_not_after(&runner.consul, "controller").await;
    let (mut client, go_aways) = ignoring_go_away(&runner).await;
    assert_eq!(runner.controller.leaf_serial(), serial, "renewed meanwhile");
    let (status, _) = raw_run(&mut client, "before", 0).await.unwrap();
    assert_eq!(status, "0", "served before NotAfter");
    // In flight until 2 s after NotAfter (it keeps the connection open).
    let left = not_after
        .duration_since(SystemTime::now())
        .expect("the leaf is still valid");
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        let delay = left.as_millis() as u64 + 2_000;
        async move { raw_run(&mut client, "in flight", delay).await.unwrap() }
    });
    eventually(Duration::from_secs(10), "the connection closed", || async {
        (runner.closed("certificate_expired").await >= 1.0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "the GOAWAY received", || async {
        (go_aways.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;

    assert_refused_unprocessed(raw_run(&mut client, "after NotAfter", 0).await);
    let (status, _) = in_flight.await.unwrap();
    assert_eq!(status, "0", "the call in flight finishes");
    assert_eq!(
        runner.echo_runs().await,
        2.0,
        "the refused call was not run"
    );
}

/// The `NotAfter` of `service`'s current leaf at the agent, and its serial.
async fn leaf_not_after(
    consul: &plugworker_consul_client::ConsulClient,
    service: &str,
) -> (SystemTime, String) {
    let (leaf, _) = consul
        .connect_ca_leaf(service, Default::default())
        .await
        .unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(leaf.cert_pem.as_bytes()).unwrap();
    let seconds = pem.parse_x509().unwrap().validity().not_after.timestamp();
    (
        UNIX_EPOCH + Duration::from_secs(seconds.try_into().unwrap()),
        leaf.serial_number,
    )
}

/// A connection lives no longer than the client certificate it was accepted with: at the
/// certificate's `NotAfter` the runner sends GOAWAY (counted as `certificate_expired`), the
/// call in flight across it finishes, and the client's next call goes over a new
/// connection with its renewed certificate and is served. Leaves live 6 s here (renewed at
/// 60-90 % of that). Without the close, the connection stayed open (and served) until
/// `--max-connection-age`.
#[tokio::test]
async fn a_connection_ends_at_its_client_certificates_not_after_and_a_renewed_one_keeps_working() {
    let runner = MeshRunner::start(
        RegistryConfig {
            connect_leaf_ttl: Duration::from_secs(6),
            ..RegistryConfig::default()
        },
        &[],
    )
    .await;
    let mut client = runner.client();
    let run = echo_run;
    // The connection opens with the leaf the agent holds now (read before and after, so
    // a renewal in between shows).
    let (not_after, serial) = leaf_not_after(&runner.consul, "controller").await;
    client.run(run("first", 0)).await.expect("served");
    assert_eq!(
        runner.controller.leaf_serial(),
        serial,
        "renewed before the first call"
    );
    assert_eq!(runner.closed("certificate_expired").await, 0.0);

    // A call in flight across the NotAfter: 1 s before it, for 2 s.
    let left = not_after
        .duration_since(SystemTime::now())
        .expect("the leaf is still valid");
    tokio::time::sleep(left.saturating_sub(Duration::from_secs(1))).await;
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        let request = run("across NotAfter", 2_000);
        async move { client.run(request).await }
    });
    eventually(
        Duration::from_secs(10),
        "the connection closed at NotAfter",
        || async { (runner.closed("certificate_expired").await >= 1.0).then_some(()) },
    )
    .await;
    let seen = SystemTime::now();
    // Not before NotAfter (whole seconds in the certificate; the runner sleeps until it),
    // and soon after it: within 3 s, as seen through metrics scrapes (each an HTTP round
    // trip to a runner busy with the call in flight, on a loaded 2-core machine), well
    // short of the leaf's 6 s life and of `--max-connection-age`.
    assert!(seen >= not_after, "closed before NotAfter");
    let late = seen.duration_since(not_after).unwrap();
    eprintln!("closed {late:?} after the client certificate's NotAfter (seen by a metrics scrape)");
    assert!(
        late < Duration::from_secs(3),
        "closed {late:?} after NotAfter"
    );
    assert_eq!(runner.closed("deauthorized").await, 0.0);

    let finished = in_flight
        .await
        .unwrap()
        .expect("the call in flight finishes within the grace");
    assert!(String::from_utf8_lossy(&finished.into_inner().result).contains("across NotAfter"));
    // The next call: a new connection, with the renewed leaf.
    assert_ne!(
        runner.controller.leaf_serial(),
        serial,
        "the leaf was renewed"
    );
    let after = client
        .run(run("renewed", 0))
        .await
        .expect("served on a new connection");
    assert!(String::from_utf8_lossy(&after.into_inner().result).contains("renewed"));
}

/// A TCP proxy to `target` that can be taken down: while down it closes every
/// connection, open ones included (an agent that does not answer).
struct Outage {
    address: String,
    down: tokio::sync::watch::Sender<bool>,
}

impl Outage {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (down, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut watch = watch.clone();
                if *watch.borrow_and_update() {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Self { address, down }
    }

    async fn for_(&self, outage: Duration) {
        self.down.send_replace(true);
        tokio::time::sleep(outage).await;
        self.down.send_replace(false);
    }
}

/// One failed agent call does not close open connections: an open connection's last
/// allow stands through one failed re-check (an agent outage shorter than the authorize
/// TTL), and the connection is closed once the agent has failed two re-checks in a row
/// (fail closed). Before, the first failed re-check closed every open connection.
#[tokio::test]
async fn an_agent_outage_shorter_than_the_ttl_closes_no_connection_and_a_longer_one_does() {
    let registry = registry(RegistryConfig::default()).await;
    let consul = consul(&registry);
    let agent = Outage::start(registry.url().trim_start_matches("http://").to_string()).await;
    let (runner, addresses) = start_runner(
        &format!("http://{}", agent.address),
        &[
            ("PLUGWORKER_MESH_AUTHORIZE_CACHE_TTL", "2s"),
            ("PLUGWORKER_METRICS_ADDRESS", "127.0.0.1:0"),
        ],
    )
    .await;
    let (listen, metrics_address) = (
        addresses.grpc().to_string(),
        addresses.metrics().to_string(),
    );
    passing(&consul).await;
    let controller = identity(&registry, "controller").await;
    let mut client = RunnerClient::new(mesh_channel(
        &controller,
        "test-runner",
        listen.parse().unwrap(),
    ));
    let run = |message: &str| plugworker_rpc::runner::v1::RunRequest {
        algorithm: "echo".into(),
        payload: serde_json::to_vec(&serde_json::json!({"message": message})).unwrap(),
    };
    client.run(run("before")).await.expect("allowed");
    let deauthorized = || closed(&metrics_address, "deauthorized");

    // Shorter than the TTL, over the connection's first re-check (2 s after it opened):
    // that re-check fails, and it is tolerated.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    agent.for_(Duration::from_millis(1_900)).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        deauthorized().await,
        0.0,
        "closed by a short agent outage: {}",
        runner.log()
    );
    client.run(run("after")).await.expect("still allowed");

    // Two TTLs and more: the second failed re-check closes it.
    agent.for_(Duration::from_millis(5_000)).await;
    eventually(
        Duration::from_secs(5),
        "closed by a long agent outage",
        || async { (deauthorized().await >= 1.0).then_some(()) },
    )
    .await;
}
