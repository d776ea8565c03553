//! The kit served in-process ([`plugworker_kit::Runner`]): bound on port 0 with its
//! addresses returned, each call told who made it, and stopped on demand; no process.

use clap::Parser;
use hyper_util::rt::TokioIo;
use plugworker_kit::{
    Algorithm, AlgorithmEntry, Catalog, Listeners, LoadContext, LoadError, RunContext, RunError,
    Runner, RunnerConfig,
};
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Answers with what the server knows of its caller.
struct WhoAmI;

#[derive(serde::Serialize, schemars::JsonSchema)]
struct Caller {
    address: Option<String>,
    spiffe_id: Option<String>,
}

impl Algorithm for WhoAmI {
    type Input = serde_json::Value;
    type Output = Caller;
    const NAME: &'static str = "whoami";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Says who called.";
    fn load(_: &LoadContext) -> Result<Self, LoadError> {
        Ok(Self)
    }
    async fn run(&self, _: serde_json::Value, context: &RunContext) -> Result<Caller, RunError> {
        let caller = context.caller();
        Ok(Caller {
            address: caller
                .and_then(|c| c.remote_address())
                .map(|a| a.to_string()),
            spiffe_id: caller.and_then(|c| c.spiffe_id()).map(|id| id.to_string()),
        })
    }
}

static WHOAMI: AlgorithmEntry = AlgorithmEntry::of::<WhoAmI>();

fn config(args: &[&str]) -> RunnerConfig {
    let mut all = vec![
        "in-process",
        "--listen",
        "127.0.0.1:0",
        "--no-register",
        "--insecure-plaintext",
    ];
    all.extend_from_slice(args);
    RunnerConfig::parse_from(all)
}

fn catalog() -> Catalog {
    Catalog::from_entries([&WHOAMI]).unwrap()
}

/// A channel to `address` that records the local address of each connection it opens:
/// the address the server sees the call come from.
fn recording_channel(address: SocketAddr, locals: Arc<Mutex<Vec<SocketAddr>>>) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let locals = locals.clone();
            async move {
                let stream = tokio::net::TcpStream::connect(address).await?;
                locals.lock().unwrap().push(stream.local_addr()?);
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
}

#[tokio::test]
async fn a_runner_served_in_process_reports_its_port_tells_each_call_its_caller_and_stops() {
    let mut runner = Runner::start(config(&[]), catalog(), "in-process")
        .await
        .unwrap();
    let addresses = runner.addresses();
    assert_ne!(
        addresses.grpc.port(),
        0,
        "the bound port, not the asked one"
    );
    assert_eq!(
        addresses.health, addresses.grpc,
        "plaintext: health on the main port"
    );
    assert_eq!(addresses.metrics, None);
    runner.serving().await.unwrap();
    assert!(runner.identity().is_none(), "no mesh identity in plaintext");

    let locals = Arc::new(Mutex::new(Vec::new()));
    let mut client = RunnerClient::new(recording_channel(addresses.grpc, locals.clone()));
    let answer = client
        .run(RunRequest {
            algorithm: "whoami".into(),
            payload: b"{}".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let caller: serde_json::Value = serde_json::from_slice(&answer.result).unwrap();
    let local = locals.lock().unwrap()[0];
    assert_eq!(
        caller,
        serde_json::json!({"address": local.to_string(), "spiffe_id": null})
    );

    runner.stop().await.unwrap();
    // Stopped: the port is closed.
    let refused = tokio::net::TcpStream::connect(addresses.grpc).await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test]
async fn listeners_bound_by_the_caller_are_served_and_named_in_the_address_file() {
    let folder = std::env::temp_dir().join(format!(
        "plugworker-kit-in-process-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&folder).unwrap();
    let file = folder.join("addresses.json");
    let main = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (main_address, health_address) = (main.local_addr().unwrap(), health.local_addr().unwrap());
    // Mesh mode needs its own health listener, and plaintext mode none.
    let refused = Runner::serve(
        Listeners::new(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            None,
        )
        .unwrap(),
        RunnerConfig::parse_from(["in-process", "--no-register"]),
        catalog(),
        "in-process",
    )
    .await;
    assert!(refused.is_err());

    // Mesh mode with an agent that never answers (a listener nobody accepts on): the
    // identity never comes, but every port is bound and reported at once, and health
    // answers NOT_SERVING meanwhile.
    let silent_agent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let agent = silent_agent.local_addr().unwrap().to_string();
    let runner = Runner::serve(
        Listeners::new(main, Some(health)).unwrap(),
        RunnerConfig::parse_from([
            "in-process",
            "--no-register",
            "--consul-address",
            &agent,
            "--metrics-address",
            "127.0.0.1:0",
            "--address-file",
            file.to_str().unwrap(),
        ]),
        catalog(),
        "in-process",
    )
    .await
    .unwrap();
    let addresses = runner.addresses();
    assert_eq!(
        (addresses.grpc, addresses.health),
        (main_address, health_address)
    );
    let metrics = addresses.metrics.expect("metrics served");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        written,
        serde_json::json!({
            "grpc": main_address.to_string(),
            "health": health_address.to_string(),
            "metrics": metrics.to_string(),
        })
    );
    let health = tonic_health::pb::health_client::HealthClient::new(
        Endpoint::from_shared(format!("http://{health_address}"))
            .unwrap()
            .connect_lazy(),
    )
    .check(tonic_health::pb::HealthCheckRequest::default())
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    runner.stop().await.unwrap();
    // Stopped: every port is closed once stop() returns, the health and metrics ports
    // included.
    for address in [main_address, health_address, metrics] {
        let refused = tokio::net::TcpStream::connect(address).await;
        assert!(refused.is_err(), "{address}: {refused:?}");
    }
    std::fs::remove_dir_all(&folder).unwrap();
}

/// Blocks each run until released: a call provably in flight.
struct Blocker {
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    entered: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl Algorithm for Blocker {
    type Input = serde_json::Value;
    type Output = serde_json::Value;
    const NAME: &'static str = "blocker";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Answers once released.";
    fn load(context: &LoadContext) -> Result<Self, LoadError> {
        Ok(Self {
            gate: context.settings::<Arc<Gate>>()?.clone(),
        })
    }
    async fn run(
        &self,
        input: serde_json::Value,
        _: &RunContext,
    ) -> Result<Self::Output, RunError> {
        self.gate.entered.notify_one();
        self.gate.release.notified().await;
        Ok(input)
    }
}

static BLOCKER: AlgorithmEntry = AlgorithmEntry::of::<Blocker>();

#[tokio::test]
async fn stop_drains_as_sigterm_does_health_first_new_calls_refused_the_call_in_flight_answered() {
    let gate = Arc::new(Gate::default());
    let mut config = config(&[]);
    config.settings = plugworker_kit::settings::AlgorithmSettings::default().with(gate.clone());
    let catalog = Catalog::from_entries([&BLOCKER]).unwrap();
    let mut runner = Runner::start(config, catalog, "in-process").await.unwrap();
    runner.serving().await.unwrap();
    let address = runner.addresses().grpc;
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let call = |channel: Channel| async move {
        RunnerClient::new(channel)
            .run(RunRequest {
                algorithm: "blocker".into(),
                payload: b"\"in flight\"".to_vec(),
            })
            .await
    };
    let in_flight = tokio::spawn(call(channel.clone()));
    gate.entered.notified().await;

    let stopped = tokio::spawn(runner.stop());
    // Health turns NOT_SERVING first (polled: the drain starts in the runner's task).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner()
                .status();
            if status == tonic_health::pb::health_check_response::ServingStatus::NotServing {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("health NOT_SERVING once stop() was called");
    // A new call is refused, unprocessed, while the one in flight goes on.
    let refused = call(channel.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("shutting down"), "{refused:?}");
    assert!(
        !stopped.is_finished(),
        "stop() waits for the call in flight"
    );
    gate.release.notify_one();
    let answer = in_flight.await.unwrap().unwrap().into_inner();
    assert_eq!(answer.result, b"\"in flight\"".to_vec());
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("stop() returns once the call in flight answered")
        .unwrap()
        .unwrap();
}
