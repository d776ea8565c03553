//! `plugworker call`: resolve a healthy runner for an algorithm through Consul and run one
//! payload on it, printing the JSON result. Useful to try a runner without the queue.

use crate::ConsulArgs;
use anyhow::{Context, bail};
use plugworker_discovery::runners::passing_instances_for;
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
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let payload = match (&args.payload, &args.text) {
        (Some(payload), _) => {
            serde_json::from_str::<serde_json::Value>(payload)
                .context("--payload is not valid JSON")?;
            payload.clone()
        }
        (None, Some(text)) => serde_json::json!({ "text": text }).to_string(),
        (None, None) => unreachable!("clap requires one input"),
    };
    let consul = args.consul.client()?;
    let instances = passing_instances_for(&consul, &args.algorithm)
        .await
        .with_context(|| format!("cannot query Consul at {}", consul.base_url()))?;
    let Some(instance) = instances.choose(&mut rand::rng()) else {
        bail!(
            "no healthy runner serves {:?} (see `plugworker algorithms`)",
            args.algorithm
        );
    };
    let address = format!("http://{}:{}", instance.address(), instance.service.port);
    let mut client = RunnerClient::connect(address.clone())
        .await
        .with_context(|| {
            format!(
                "cannot connect to runner {} at {address}",
                instance.service.id
            )
        })?;
    let mut request = tonic::Request::new(RunRequest {
        algorithm: args.algorithm.clone(),
        payload: payload.into_bytes(),
    });
    request.set_timeout(args.timeout);
    let response = client
        .run(request)
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "{} failed on {}: {:?}: {}",
                args.algorithm,
                instance.service.id,
                status.code(),
                status.message()
            )
        })?
        .into_inner();
    let result: serde_json::Value = serde_json::from_slice(&response.result)
        .context("runner returned a result that is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    tracing::info!(
        instance = %response.instance_id,
        version = %response.algorithm_version,
        run_ms = response.run_micros as f64 / 1000.0,
        "ran {}", args.algorithm
    );
    Ok(())
}
