//! A whole plugworker stack per test: moto SQS, the embedded registry, runner processes
//! and `plugworker controller` processes.
//!
//! By default the stack is the production trust model (docs/security.md): the registry
//! enforces ACLs (default deny) and intentions (default deny); each runner holds a token
//! whose only rule is its service identity, the controller a token with the controller
//! policy, and an intention allows controller → each runner service; runners serve mTLS
//! (Connect native) and the controller dials them with its own leaf certificate.
//! [`Stack::start_plain`] is the `--insecure-plaintext` stack with ACLs off, for tests
//! about something else that need what the mesh rules out (a registry restarted empty is a
//! new cluster with a new CA; hand-made registrations without certificates).

#![allow(dead_code)]

pub mod proxy;

use plugworker_consul_client::admin::{
    IntentionAction, IntentionSource, NewPolicy, NewToken, PolicyLink, ServiceIdentity,
    ServiceIntentions,
};
use plugworker_consul_client::{ConsulClient, ConsulConfig};
use plugworker_discovery::policy::controller_rules;
use plugworker_embedded_consul::{
    IntentionAction as Policy, Registry, RegistryConfig, RunningRegistry,
};
use plugworker_testkit::sqs::{AWS_ENV, QueueOptions, Queues, Sqs};
use plugworker_testkit::{Addresses, Process, bin_path, eventually, passing_instances};
use std::collections::HashMap;
use std::time::Duration;

/// The environment variable asking a runner to serve metrics, on a port the kernel picks
/// (read back from [`Stack::runner_reporting`]'s addresses).
pub const METRICS_ON_ANY_PORT: (&str, &str) = ("PLUGWORKER_METRICS_ADDRESS", "127.0.0.1:0");

/// The runner services every mesh stack admits at start (token + intention).
pub const RUNNER_SERVICES: &[&str] = &["test-runner", "nlp-runner", "image-runner"];

/// The key every controller of a stack signs its re-queued copies with (as all the
/// controllers of a deployment share one): a copy one re-queued keeps its message id at
/// another.
pub const MESSAGE_KEYS: &str = "tests:0123456789abcdef0123456789abcdef";

/// The management token of every mesh stack's registry.
pub const BOOTSTRAP_TOKEN: &str = "5b3a8f4e-0d1c-4e6a-9f2b-7c8d9e0a1b2c";

pub struct Stack {
    pub sqs: Sqs,
    pub queues: Queues,
    pub registry: Option<RunningRegistry>,
    pub registry_address: String,
    /// ACLs, intentions and mTLS on (false: `--insecure-plaintext`, ACLs off).
    pub mesh: bool,
    /// Token secrets by runner service name, and the controller's under "controller".
    pub tokens: HashMap<String, String>,
}

/// The registry of a mesh stack: ACLs and intentions on, both default deny.
pub fn mesh_registry_config() -> RegistryConfig {
    RegistryConfig {
        acl_enabled: true,
        acl_default_policy: Policy::Deny,
        acl_bootstrap_token: Some(BOOTSTRAP_TOKEN.into()),
        default_intention_policy: Some(Policy::Deny),
        ..RegistryConfig::default()
    }
}

impl Stack {
    /// A Consul client on this stack's registry, with the management token.
    pub fn consul(&self) -> ConsulClient {
        self.consul_with_token(self.mesh.then_some(BOOTSTRAP_TOKEN))
    }

    /// A Consul client on this stack's registry with `token` (none: anonymous).
    pub fn consul_with_token(&self, token: Option<&str>) -> ConsulClient {
        ConsulClient::new(ConsulConfig {
            address: self.consul_url(),
            token: token.map(str::to_string),
            ..Default::default()
        })
        .unwrap()
    }

    /// Creates the token of runner `service` (its service identity only) and allows the
    /// controller to call it; returns the token's secret.
    pub async fn admit_runner(&mut self, service: &str) -> String {
        let consul = self.consul();
        let token = consul
            .acl_token_create(&NewToken {
                description: format!("runner {service}"),
                service_identities: vec![ServiceIdentity {
                    service_name: service.into(),
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        self.set_intention(service, IntentionAction::Allow).await;
        self.tokens.insert(service.into(), token.secret_id.clone());
        token.secret_id
    }

    /// Replaces the intentions of `service`: `action` for the controller.
    pub async fn set_intention(&self, service: &str, action: IntentionAction) {
        self.consul()
            .apply_service_intentions(&ServiceIntentions {
                name: service.into(),
                sources: vec![IntentionSource {
                    name: "controller".into(),
                    action,
                    description: String::new(),
                }],
            })
            .await
            .unwrap();
    }

    /// Creates the controller's policy and token.
    async fn admit_controller(&mut self) {
        let secret = self
            .policy_token("plugworker-controller", &controller_rules("controller"))
            .await;
        self.tokens.insert("controller".into(), secret);
    }

    /// Creates a policy `name` with `rules` and a token holding it; returns the secret.
    pub async fn policy_token(&self, name: &str, rules: &str) -> String {
        let consul = self.consul();
        let policy = consul
            .acl_policy_create(&NewPolicy {
                name: name.into(),
                description: name.into(),
                rules: rules.into(),
            })
            .await
            .unwrap();
        let token = consul
            .acl_token_create(&NewToken {
                description: name.into(),
                policies: vec![PolicyLink {
                    id: policy.id,
                    name: String::new(),
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        token.secret_id
    }

    /// Waits until `count` instances of `service` pass their checks.
    pub async fn wait_passing(&self, service: &str, count: usize) {
        let client = self.consul();
        // A bound, not a timing: on 2 busy cores a runner's start (certificate, load,
        // first check) has been seen to take over 30 s while other tests start theirs.
        eventually(
            Duration::from_secs(90),
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

    /// A plaintext stack (ACLs off, `--insecure-plaintext` everywhere).
    pub async fn start_plain(visibility: Duration, max_receive_count: u32) -> Self {
        Self::start_mode(
            QueueOptions {
                visibility,
                max_receive_count: Some(max_receive_count),
                ..QueueOptions::default()
            },
            false,
        )
        .await
    }

    /// A mesh stack whose queues are made as `options` say.
    pub async fn start_with(options: QueueOptions) -> Self {
        Self::start_mode(options, true).await
    }

    pub async fn start_mode(options: QueueOptions, mesh: bool) -> Self {
        let config = if mesh {
            mesh_registry_config()
        } else {
            RegistryConfig::default()
        };
        Self::start_with_registry(options, config, mesh).await
    }

    /// A stack whose registry runs with `config` (`mesh`: its ACLs are
    /// [`mesh_registry_config`]'s, and the stack creates tokens and intentions).
    pub async fn start_with_registry(
        options: QueueOptions,
        config: RegistryConfig,
        mesh: bool,
    ) -> Self {
        let sqs = Sqs::start().await;
        let queues = sqs.create_queues_with("plugworker", &options).await;
        let registry = Registry::spawn("127.0.0.1:0", config).await.unwrap();
        let registry_address = registry.address().to_string();
        let mut stack = Self {
            sqs,
            queues,
            registry: Some(registry),
            registry_address,
            mesh,
            tokens: HashMap::new(),
        };
        if mesh {
            for service in RUNNER_SERVICES {
                stack.admit_runner(service).await;
            }
            stack.admit_controller().await;
        }
        stack
    }

    pub fn consul_url(&self) -> String {
        format!("http://{}", self.registry_address)
    }

    pub async fn stop_registry(&mut self) {
        if let Some(registry) = self.registry.take() {
            registry.stop().await;
        }
    }

    /// Restarts the registry empty (plaintext stacks only: a restarted embedded registry
    /// is a new cluster, with a new CA and no tokens, which a real Consul server is not).
    pub async fn restart_registry(&mut self) {
        assert!(!self.mesh, "restart_registry needs Stack::start_plain");
        self.stop_registry().await;
        // The same address, as a restarted Consul agent keeps its own: the port is the one
        // the first registry bound and just released (the kernel hands out ephemeral ports
        // in turn, so another test taking it in these few milliseconds is not expected).
        self.registry = Some(
            Registry::spawn(&self.registry_address, RegistryConfig::default())
                .await
                .unwrap(),
        );
    }

    /// Starts a runner (service name: the binary's, or `PLUGWORKER_SERVICE_NAME` in
    /// `envs`, admitted beforehand); returns it with its gRPC address.
    pub async fn runner(&self, binary: &str, envs: &[(&str, &str)]) -> (Process, String) {
        let (process, addresses) = self.runner_reporting(binary, envs).await;
        (process, addresses.grpc().to_string())
    }

    /// [`Stack::runner`], returning every address the runner bound (its metrics address
    /// too when `envs` has `PLUGWORKER_METRICS_ADDRESS=127.0.0.1:0`).
    pub async fn runner_reporting(
        &self,
        binary: &str,
        envs: &[(&str, &str)],
    ) -> (Process, Addresses) {
        let consul = self.consul_url();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--consul-address",
            &consul,
            "--check-interval",
            "1s",
            "--deregister-critical-after",
            "5s",
        ];
        let mut all_envs = envs.to_vec();
        let service = envs
            .iter()
            .find(|(k, _)| *k == "PLUGWORKER_SERVICE_NAME")
            .map_or(binary, |(_, v)| v);
        if self.mesh {
            args.extend(["--health-listen", "127.0.0.1:0"]);
            let token = self.tokens.get(service).unwrap_or_else(|| {
                panic!("runner service {service} has no token: call stack.admit_runner first")
            });
            all_envs.push(("CONSUL_HTTP_TOKEN", token));
        } else {
            args.push("--insecure-plaintext");
        }
        Process::spawn_reporting(&bin_path(binary), &args, &all_envs).await
    }

    /// Starts `plugworker controller`; returns it with its health URL.
    pub async fn controller(&self, extra: &[&str]) -> (Process, String) {
        self.controller_with_env(extra, &[]).await
    }

    /// Starts `plugworker controller` with extra environment variables.
    pub async fn controller_with_env(
        &self,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> (Process, String) {
        let consul = self.consul_url();
        let mut args = vec![
            "controller",
            "--jobs-queue-url",
            &self.queues.jobs,
            "--results-queue-url",
            &self.queues.results,
            "--health-address",
            "127.0.0.1:0",
            "--receive-wait",
            "1s",
            "--consul-wait",
            "10s",
        ];
        if self.mesh {
            args.extend(["--mesh-ready-within", "20s"]);
        } else {
            args.push("--insecure-plaintext");
        }
        // moto and the registry, unless the test puts something in between.
        if !extra.contains(&"--consul-address") {
            args.extend(["--consul-address", &consul]);
        }
        if !extra.contains(&"--sqs-endpoint") {
            args.extend(["--sqs-endpoint", &self.sqs.endpoint]);
        }
        args.extend_from_slice(extra);
        let mut all_envs = AWS_ENV.to_vec();
        all_envs.push(("PLUGWORKER_MESSAGE_KEYS", MESSAGE_KEYS));
        if let Some(token) = self.tokens.get("controller") {
            all_envs.push(("CONSUL_HTTP_TOKEN", token));
        }
        all_envs.extend_from_slice(envs);
        let (process, addresses) =
            Process::spawn_reporting(&bin_path("plugworker"), &args, &all_envs).await;
        (process, format!("http://{}/healthz", addresses.health()))
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

/// A runner's `ok` runs of `algorithm` so far, from its `--metrics-address` (0 before the
/// first).
pub async fn runner_runs(metrics_address: &str, algorithm: &str) -> f64 {
    runner_metric(
        metrics_address,
        "plugworker_runner_runs_total",
        &[("algorithm", algorithm), ("code", "ok")],
    )
    .await
}

/// The value of a runner's metric `name` with `labels`, from its `--metrics-address` (0
/// while it has none).
pub async fn runner_metric(metrics_address: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::get(format!("http://{metrics_address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    plugworker_testkit::metric_value(&text, name, labels).unwrap_or(0.0)
}
