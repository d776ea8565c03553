//! A Connect-native echo server (the kit's own server, in-process) and clients for the
//! mesh tests, with identities from an embedded registry (the same endpoints a Consul
//! agent serves).
#![allow(dead_code)]

use clap::Parser;
use plugworker_consul_client::{ConsulClient, ConsulConfig};
use plugworker_embedded_consul::{Registry, RegistryConfig, RunningRegistry};
use plugworker_kit::settings::AlgorithmSettings;
use plugworker_kit::{
    Algorithm, AlgorithmEntry, Catalog, LoadContext, LoadError, RunContext, RunError, Runner,
    RunnerConfig,
};
use plugworker_mesh::{Identity, MeshConnector, ServerStats};
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

pub async fn registry(config: RegistryConfig) -> RunningRegistry {
    Registry::spawn("127.0.0.1:0", config).await.unwrap()
}

pub fn consul(registry: &RunningRegistry) -> ConsulClient {
    ConsulClient::new(ConsulConfig {
        address: registry.url(),
        ..ConsulConfig::default()
    })
    .unwrap()
}

pub async fn identity(registry: &RunningRegistry, service: &str) -> Identity {
    Identity::start(consul(registry), service, Duration::from_secs(10))
        .await
        .unwrap()
}

/// `PUT /v1/config` of a `service-intentions` entry: `source` → `destination`.
pub async fn intention(registry: &RunningRegistry, source: &str, destination: &str, action: &str) {
    let answer = reqwest::Client::new()
        .put(format!("{}/v1/config", registry.url()))
        .json(&serde_json::json!({
            "Kind": "service-intentions",
            "Name": destination,
            "Sources": [{"Name": source, "Action": action}],
        }))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.text().await);
}

/// Calls [`EchoAlgorithm`] has run, shared with the test through the runner's settings.
#[derive(Clone, Default)]
pub struct Calls(Arc<AtomicU64>);

/// Echoes its input's `text` back, with the caller's SPIFFE ID as the kit's server saw it
/// (from the client certificate the mesh verified).
pub struct EchoAlgorithm {
    calls: Calls,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct EchoInput {
    pub text: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Echoed {
    pub text: String,
    /// The caller's SPIFFE ID (empty if the server knew none).
    pub caller: String,
}

impl Algorithm for EchoAlgorithm {
    type Input = EchoInput;
    type Output = Echoed;
    const NAME: &'static str = "echo";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Echoes the text, naming the caller.";
    fn load(context: &LoadContext) -> Result<Self, LoadError> {
        Ok(Self {
            calls: context.settings::<Calls>()?.clone(),
        })
    }
    async fn run(&self, input: EchoInput, context: &RunContext) -> Result<Echoed, RunError> {
        self.calls.0.fetch_add(1, Ordering::SeqCst);
        let caller = context
            .caller()
            .and_then(|caller| caller.spiffe_id())
            .map(ToString::to_string)
            .unwrap_or_default();
        Ok(Echoed {
            text: input.text,
            caller,
        })
    }
}

static ECHO: AlgorithmEntry = AlgorithmEntry::of::<EchoAlgorithm>();

/// The kit's runner, served in this process in mesh mode as `service`, with the echo
/// algorithm: it gets its Connect identity from the agent at `consul_address` as a runner
/// process does (not registered: these tests dial it directly).
pub struct EchoServer {
    pub address: SocketAddr,
    /// Where its metrics are served.
    pub metrics: SocketAddr,
    pub stats: ServerStats,
    calls: Calls,
    runner: Runner,
}

impl EchoServer {
    /// Serving once it returns; intention decisions cached for `authorize_cache_ttl`.
    pub async fn start(consul_address: &str, service: &str, authorize_cache_ttl: Duration) -> Self {
        let ttl = format!("{}ms", authorize_cache_ttl.as_millis());
        let mut config = RunnerConfig::parse_from([
            "mesh-test",
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
            "--no-register",
            "--service-name",
            service,
            "--consul-address",
            consul_address,
            "--mesh-authorize-cache-ttl",
            &ttl,
            // Also the TLS handshake's timeout.
            "--header-read-timeout",
            "5s",
            "--metrics-address",
            "127.0.0.1:0",
        ]);
        let calls = Calls::default();
        config.settings = AlgorithmSettings::default().with(calls.clone());
        let catalog = Catalog::from_entries([&ECHO]).unwrap();
        let mut runner = Runner::start(config, catalog, service).await.unwrap();
        // A bound, not a timing: a runner without its identity retries forever.
        tokio::time::timeout(Duration::from_secs(60), runner.serving())
            .await
            .expect("the runner serves within 60 s (its identity from the agent)")
            .unwrap();
        Self {
            address: runner.addresses().grpc,
            metrics: runner
                .addresses()
                .metrics
                .expect("the runner serves metrics"),
            stats: runner.mesh_stats().clone(),
            calls,
            runner,
        }
    }

    /// [`EchoServer::start`] with the agent of `registry`.
    pub async fn on(
        registry: &RunningRegistry,
        service: &str,
        authorize_cache_ttl: Duration,
    ) -> Self {
        Self::start(&registry.url(), service, authorize_cache_ttl).await
    }

    /// Connections its main port closed for `reason` (`deauthorized`, …).
    pub async fn closed(&self, reason: &str) -> f64 {
        closed(&self.metrics.to_string(), reason).await
    }

    pub fn calls(&self) -> u64 {
        self.calls.0.load(Ordering::SeqCst)
    }

    /// The runner's own Connect identity (its leaf, as it renews it).
    pub fn identity(&self) -> Identity {
        self.runner
            .identity()
            .expect("a serving mesh runner has its identity (the server's copy keeps it)")
    }

    /// The runner's current leaf serial, read without keeping its identity afterwards.
    pub fn leaf_serial(&self) -> String {
        self.identity().leaf_serial()
    }
}

/// A channel dialling `address` through the mesh, expecting `expected_service` there.
pub fn mesh_channel(identity: &Identity, expected_service: &str, address: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(MeshConnector::new(identity.clone(), expected_service))
}

/// Runs the echo algorithm on `text` over `channel`.
pub async fn echo(channel: Channel, text: &str) -> Result<Echoed, tonic::Status> {
    let answer = RunnerClient::new(channel)
        .run(RunRequest {
            algorithm: "echo".into(),
            payload: serde_json::json!({ "text": text }).to_string().into_bytes(),
        })
        .await?
        .into_inner();
    Ok(serde_json::from_slice(&answer.result).expect("the echo's output"))
}

/// The runner's metrics text.
pub async fn metrics(address: &str) -> String {
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Connections the runner's main port closed for `reason` (its metrics' counter).
pub async fn closed(metrics_address: &str, reason: &str) -> f64 {
    let text = metrics(metrics_address).await;
    plugworker_testkit::metric_value(
        &text,
        "plugworker_runner_server_closed_total",
        &[("port", "main"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}
