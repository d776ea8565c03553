//! A whole plugworker stack per test: moto SQS, the embedded registry, runner processes
//! and `plugworker controller` processes.

#![allow(dead_code)]

use plugworker_discovery::{ConsulClient, ConsulConfig};
use plugworker_registry::{Registry, RegistryConfig, RunningRegistry};
use plugworker_testkit::sqs::{AWS_ENV, QueueOptions, Queues, Sqs};
use plugworker_testkit::{Process, bin_path, eventually, free_port, passing_instances};
use std::time::Duration;

pub struct Stack {
    pub sqs: Sqs,
    pub queues: Queues,
    pub registry: Option<RunningRegistry>,
    pub registry_address: String,
}

impl Stack {
    /// A Consul client on this stack's registry.
    pub fn consul(&self) -> ConsulClient {
        ConsulClient::new(ConsulConfig {
            address: self.consul_url(),
            ..Default::default()
        })
        .unwrap()
    }

    /// Waits until `count` instances of `service` pass their checks.
    pub async fn wait_passing(&self, service: &str, count: usize) {
        let client = self.consul();
        eventually(
            Duration::from_secs(30),
            &format!("{count} passing {service}"),
            || {
                let client = client.clone();
                async move { (passing_instances(&client, service).await.len() >= count).then_some(()) }
            },
        )
        .await;
    }

    pub async fn start(visibility: Duration, max_receive_count: u32) -> Self {
        Self::start_with(QueueOptions {
            visibility,
            max_receive_count: Some(max_receive_count),
            ..QueueOptions::default()
        })
        .await
    }

    /// A stack whose queues are made as `options` say.
    pub async fn start_with(options: QueueOptions) -> Self {
        let sqs = Sqs::start().await;
        let queues = sqs.create_queues_with("plugworker", &options).await;
        let registry_address = format!("127.0.0.1:{}", free_port());
        let registry = Registry::spawn(&registry_address, RegistryConfig::default())
            .await
            .unwrap();
        Self {
            sqs,
            queues,
            registry: Some(registry),
            registry_address,
        }
    }

    pub fn consul_url(&self) -> String {
        format!("http://{}", self.registry_address)
    }

    pub async fn stop_registry(&mut self) {
        if let Some(registry) = self.registry.take() {
            registry.stop().await;
        }
    }

    pub async fn restart_registry(&mut self) {
        self.stop_registry().await;
        self.registry = Some(
            Registry::spawn(&self.registry_address, RegistryConfig::default())
                .await
                .unwrap(),
        );
    }

    /// Starts a runner; returns it with its gRPC address.
    pub fn runner(&self, binary: &str, envs: &[(&str, &str)]) -> (Process, String) {
        let listen = format!("127.0.0.1:{}", free_port());
        let consul = self.consul_url();
        let process = Process::spawn(
            &bin_path(binary),
            &[
                "--listen",
                &listen,
                "--consul-address",
                &consul,
                "--check-interval",
                "1s",
                "--deregister-critical-after",
                "5s",
                // TODO(mesh): mTLS once the controller dials through the mesh.
                "--insecure-plaintext",
            ],
            envs,
        );
        (process, listen)
    }

    /// Starts `plugworker controller`; returns it with its health URL.
    pub fn controller(&self, extra: &[&str]) -> (Process, String) {
        self.controller_with_env(extra, &[])
    }

    /// Starts `plugworker controller` with extra environment variables.
    pub fn controller_with_env(&self, extra: &[&str], envs: &[(&str, &str)]) -> (Process, String) {
        let consul = self.consul_url();
        let health = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "controller",
            "--jobs-queue-url",
            &self.queues.jobs,
            "--results-queue-url",
            &self.queues.results,
            "--sqs-endpoint",
            &self.sqs.endpoint,
            "--consul-address",
            &consul,
            "--health-address",
            &health,
            "--receive-wait",
            "1s",
            "--consul-wait",
            "10s",
        ];
        args.extend_from_slice(extra);
        let mut all_envs = AWS_ENV.to_vec();
        all_envs.extend_from_slice(envs);
        let process = Process::spawn(&bin_path("plugworker"), &args, &all_envs);
        (process, format!("http://{health}/healthz"))
    }

    pub async fn submit(&self, job: serde_json::Value) -> String {
        self.sqs.send(&self.queues.jobs, &job.to_string()).await
    }

    /// Both counts of the jobs queue and the DLQ.
    pub async fn queue_depths(&self) -> ((u64, u64), (u64, u64)) {
        (
            self.sqs.counts(&self.queues.jobs).await,
            self.sqs.counts(&self.queues.dlq).await,
        )
    }
}

pub fn job(algorithm: &str, payload: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "algorithm": algorithm, "payload": payload })
}
