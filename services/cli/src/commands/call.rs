//! `plugworker call`: resolve a healthy runner for an algorithm through Consul and run one
//! payload on it, printing the JSON result. Useful to try a runner without the queue.
//!
//! In the mesh (the default) the call is made over mTLS as the Connect service named by
//! `--mesh-service` (default `operator`): the Consul token must be allowed to get that
//! service's certificate (`service "<name>" { policy = "write" }`) and the runner's
//! intentions must allow it. Without `--consul-address` or `CONSUL_HTTP_ADDR` it finds a
//! running `plugworker dev` through dev.json, whose operator token allows both.
//! `--insecure-plaintext` calls runners started with `--insecure-plaintext`.

use super::runner_link::Link;
use crate::ConsulArgs;
use anyhow::{Context, bail};
use plugworker_consul_client::{ConsulClient, QueryOptions, ServiceEntry};
use plugworker_discovery::{Mode, passing_instances_for};
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use rand::seq::IndexedRandom;
use std::time::Duration;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["payload", "text"])))]
pub struct Args {
    #[command(flatten)]
    pub consul: ConsulArgs,
    /// Algorithm to run, e.g. language_detection.
    #[arg(long)]
    pub algorithm: String,
    /// The algorithm's input as JSON.
    #[arg(long)]
    pub payload: Option<String>,
    /// Shortcut for text algorithms: the payload {"text": TEXT}.
    #[arg(long)]
    pub text: Option<String>,
    /// How long to wait for the result.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Who you are in the mesh: the Connect service whose certificate the call presents.
    /// Your Consul token needs `service "<name>" { policy = "write" }`, and the runner's
    /// intentions must allow <name>. Default: `operator` (what `plugworker dev` grants).
    #[arg(long, env = "PLUGWORKER_MESH_SERVICE")]
    pub mesh_service: Option<String>,
    /// INSECURE: call over plaintext gRPC, with no certificate on either side. Only
    /// runners started with --insecure-plaintext answer; a mesh runner refuses.
    #[arg(
        long,
        env = "PLUGWORKER_INSECURE_PLAINTEXT",
        conflicts_with = "mesh_service"
    )]
    pub insecure_plaintext: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The answer is the output; INFO lines (a certificate issued) would only bury it.
    plugworker_telemetry::quiet_by_default();
    let payload = match (&args.payload, &args.text) {
        (Some(payload), _) => {
            serde_json::from_str::<serde_json::Value>(payload)
                .context("--payload is not valid JSON")?;
            payload.clone()
        }
        (None, Some(text)) => serde_json::json!({ "text": text }).to_string(),
        (None, None) => unreachable!("clap requires one input"),
    };
    let consul = super::dev_session::client(&args.consul)?;
    let mesh_service = args
        .mesh_service
        .as_deref()
        .unwrap_or(super::runner_link::OPERATOR);
    let link = Link::from_flags(&consul, Some(mesh_service), args.insecure_plaintext)
        .await?
        .expect("an identity or plaintext is always asked for");
    let mesh = link.is_mesh().then_some(());
    let mode = if mesh.is_some() {
        Mode::Connect
    } else {
        Mode::Plain
    };
    let instances = passing_instances_for(&consul, &args.algorithm, mode)
        .await
        .with_context(|| format!("cannot query Consul at {}", consul.base_url()))?;
    let Some(instance) = instances.choose(&mut rand::rng()) else {
        bail!(
            "no healthy runner serves {:?}{} (see `plugworker algorithms`)",
            args.algorithm,
            if mesh.is_some() {
                " among Connect-native instances"
            } else {
                ""
            },
        );
    };
    let id = &instance.service.id;
    let channel = link.dial(instance, Duration::from_secs(5)).await?;
    let mut client = RunnerClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut request = tonic::Request::new(RunRequest {
        algorithm: args.algorithm.clone(),
        payload: payload.into_bytes(),
    });
    request.set_timeout(args.timeout);
    let response = match client.run(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let code = status.code();
            // The status with its causes, which tonic keeps out of its own message.
            let mut message = format!(
                "{} failed on {id}: {code:?}: {}",
                args.algorithm,
                crate::describe(&status.into())
            );
            if mesh.is_none() && is_connect_native(&consul, instance).await {
                message.push_str(
                    "\nthis runner serves mTLS only (it is Connect-native): call it with --mesh-service NAME, an identity its intentions allow, instead of --insecure-plaintext",
                );
            } else if mesh.is_some() && code == tonic::Code::Unavailable {
                message.push_str(
                    "\nif the runner closed the connection at once, its intentions may not allow your --mesh-service identity",
                );
            }
            bail!(message);
        }
    };
    let result: serde_json::Value = serde_json::from_slice(&response.result)
        .context("runner returned a result that is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    // Who answered, beside the result (which stays pure JSON on stdout).
    eprintln!(
        "{} {} on {} in {} ms",
        args.algorithm,
        response.algorithm_version,
        response.instance_id,
        response.run_micros as f64 / 1000.0
    );
    Ok(())
}

/// Whether `instance` is listed as Connect-native (it then speaks mTLS only).
async fn is_connect_native(consul: &ConsulClient, instance: &ServiceEntry) -> bool {
    consul
        .health_connect(
            &instance.service.service,
            &[],
            false,
            QueryOptions::default(),
        )
        .await
        .is_ok_and(|(entries, _)| entries.iter().any(|e| e.service.id == instance.service.id))
}
