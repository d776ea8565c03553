//! A Connect-native echo server and clients for the mesh tests, with identities from an
//! embedded registry (the same endpoints a Consul agent serves).
#![allow(dead_code)]

use plugworker_consul_client::{ConsulClient, ConsulConfig};
use plugworker_embedded_consul::{Registry, RegistryConfig, RunningRegistry};
use plugworker_mesh::{Identity, MeshConnectInfo, MeshConnector, ServerSettings, ServerStats};
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_rpc::runner::v1::runner_server::{Runner, RunnerServer};
use plugworker_rpc::runner::v1::{
    ListAlgorithmsRequest, ListAlgorithmsResponse, RunRequest, RunResponse,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
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

/// Echoes payloads back; answers with the caller's SPIFFE ID as `instance_id`.
#[derive(Clone, Default)]
pub struct Echo {
    pub calls: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Runner for Echo {
    async fn run(
        &self,
        request: tonic::Request<RunRequest>,
    ) -> Result<tonic::Response<RunResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let peer = request
            .extensions()
            .get::<MeshConnectInfo>()
            .map(|info| info.peer.to_string())
            .unwrap_or_default();
        let request = request.into_inner();
        Ok(tonic::Response::new(RunResponse {
            result: request.payload,
            algorithm_version: "1".into(),
            instance_id: peer,
            queued_micros: 0,
            run_micros: 0,
        }))
    }

    async fn list_algorithms(
        &self,
        _: tonic::Request<ListAlgorithmsRequest>,
    ) -> Result<tonic::Response<ListAlgorithmsResponse>, tonic::Status> {
        Ok(tonic::Response::new(ListAlgorithmsResponse::default()))
    }
}

/// An echo server behind the mesh acceptor.
pub struct EchoServer {
    pub address: SocketAddr,
    pub echo: Echo,
    pub stats: ServerStats,
    stop: Option<oneshot::Sender<()>>,
}

impl EchoServer {
    pub async fn start(identity: Identity, consul: ConsulClient, settings: ServerSettings) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stats = settings.stats.clone();
        let echo = Echo::default();
        let incoming = plugworker_mesh::incoming(listener, identity, consul, settings);
        let (stop, stopped) = oneshot::channel::<()>();
        let service = RunnerServer::new(echo.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            address,
            echo,
            stats,
            stop: Some(stop),
        }
    }

    pub fn calls(&self) -> u64 {
        self.echo.calls.load(Ordering::SeqCst)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
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

pub async fn echo(channel: Channel, payload: &[u8]) -> Result<RunResponse, tonic::Status> {
    RunnerClient::new(channel)
        .run(RunRequest {
            algorithm: "echo".into(),
            payload: payload.to_vec(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Settings with a short authorize cache, so intention changes show quickly.
pub fn settings(authorize_cache_ttl: Duration) -> ServerSettings {
    ServerSettings {
        authorize_cache_ttl,
        handshake_timeout: Duration::from_secs(5),
        ..ServerSettings::default()
    }
}
