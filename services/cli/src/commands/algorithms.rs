//! `plugworker algorithms`: one view of every algorithm Consul knows, instead of visiting
//! each runner. Instances come from Consul's catalog and health endpoints; version,
//! description and schemas from `ListAlgorithms` on a passing instance, asked over mTLS as
//! `operator` (or `--mesh-service`). Without `--consul-address` or `CONSUL_HTTP_ADDR` it
//! finds a running `plugworker dev` through dev.json.

use super::runner_link::Link;
use crate::ConsulArgs;
use plugworker_consul_client::{CheckStatus, ConsulClient, ServiceEntry};
use plugworker_discovery::all_runner_instances;
use plugworker_rpc::runner::v1::ListAlgorithmsRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub consul: ConsulArgs,
    /// Print the algorithms as JSON instead of text (`plugworker pipeline list --json`
    /// prints the stored pipelines).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runners: RunnerFlags,
}

/// How to read what the runners themselves say of their algorithms (version,
/// description, schemas): `plugworker algorithms` and `plugworker pipeline put`.
#[derive(clap::Args, Debug)]
pub struct RunnerFlags {
    /// Read versions, descriptions and schemas from the runners over mTLS as this
    /// Connect service (your token needs `service "<name>" write`, and the runners'
    /// intentions must allow it). Default: `operator` when your token may take it (a
    /// running `plugworker dev`'s does, through dev.json); otherwise only what Consul
    /// knows is shown: algorithms, instances and their health.
    #[arg(long, env = "PLUGWORKER_MESH_SERVICE")]
    pub mesh_service: Option<String>,
    /// INSECURE: read them over plaintext gRPC, from runners started with
    /// --insecure-plaintext.
    #[arg(
        long,
        env = "PLUGWORKER_INSECURE_PLAINTEXT",
        conflicts_with = "mesh_service"
    )]
    pub insecure_plaintext: bool,
}

impl RunnerFlags {
    /// The way to the runners these flags ask for; without flags, the `operator`
    /// identity if the token may take it ([`Link::operator`]), else `None`.
    pub async fn link(&self, consul: &ConsulClient) -> anyhow::Result<Option<Link>> {
        if self.mesh_service.is_none() && !self.insecure_plaintext {
            return Ok(Link::operator(consul).await);
        }
        Link::from_flags(
            consul,
            self.mesh_service.as_deref(),
            self.insecure_plaintext,
        )
        .await
    }
}

#[derive(Serialize, Debug, Default)]
pub struct AlgorithmView {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub input_schema: Option<serde_json::Value>,
    /// What the algorithm answers (`plugworker pipeline put` checks pointers into it).
    pub output_schema: Option<serde_json::Value>,
    pub instances: Vec<InstanceView>,
}

#[derive(Serialize, Debug)]
pub struct InstanceView {
    pub service: String,
    pub id: String,
    pub address: String,
    pub status: CheckStatus,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The answer is the output; INFO lines (a certificate issued) would only bury it.
    plugworker_telemetry::quiet_by_default();
    let consul = super::dev_session::client(&args.consul)?;
    let link = args.runners.link(&consul).await?;
    let views = collect(&all_runner_instances(&consul).await?, link.as_ref()).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if views.is_empty() {
        println!(
            "no runners are registered in Consul at {}",
            consul.address()
        );
        println!();
    }
    for view in &views {
        let passing = view
            .instances
            .iter()
            .filter(|i| i.status == CheckStatus::Passing)
            .count();
        println!(
            "{}  v{}  ({passing}/{} instances passing)",
            view.name,
            view.version.as_deref().unwrap_or("?"),
            view.instances.len()
        );
        if let Some(description) = &view.description {
            println!("  {description}");
        }
        for instance in &view.instances {
            println!(
                "  - {:<8} {}  {}  [{}]",
                instance.status.to_string(),
                instance.address,
                instance.id,
                instance.service
            );
        }
        match &view.input_schema {
            Some(schema) => println!("  input schema: {schema}"),
            None if link.is_none() => println!(
                "  input schema: not read (your Consul token cannot take the Connect identity `operator`; pass --mesh-service NAME, an identity the runners' intentions allow)"
            ),
            None => {
                println!("  input schema: unknown (no passing instance answered ListAlgorithms)")
            }
        }
        println!();
    }
    // Pipelines name algorithms that may come and go; a token that cannot read them
    // still gets the algorithms.
    match super::pipeline::stored_pipelines(&consul).await {
        Ok(pipelines) if pipelines.is_empty() => {
            println!("no pipelines stored (plugworker pipeline put NAME FILE stores one)")
        }
        Ok(pipelines) => {
            println!("pipelines:");
            for pipeline in &pipelines {
                // A step whose algorithm no runner announces now fails its jobs with
                // `no_runner` (transient) until one does.
                let missing: Vec<&str> = (pipeline.steps.iter().flatten())
                    .map(|step| step.algorithm.as_str())
                    .filter(|algorithm| !views.iter().any(|view| view.name == *algorithm))
                    .collect();
                let missing = if missing.is_empty() {
                    String::new()
                } else {
                    format!("  (not announced now: {})", missing.join(", "))
                };
                println!(
                    "  {}  revision {}  {}{missing}",
                    pipeline.name,
                    pipeline.revision,
                    pipeline.summary()
                );
            }
        }
        Err(error) => println!("pipelines: not read ({error:#})"),
    }
    Ok(())
}

/// Groups instances by algorithm (tag) and, given a way to reach runners, asks one passing
/// instance per runner service for the algorithms' descriptions.
pub async fn collect(instances: &[ServiceEntry], link: Option<&Link>) -> Vec<AlgorithmView> {
    let mut views: BTreeMap<String, AlgorithmView> = BTreeMap::new();
    let mut described_services = Vec::new();
    for entry in instances {
        let address = format!("{}:{}", entry.address(), entry.service.port);
        for tag in &entry.service.tags {
            views
                .entry(tag.clone())
                .or_insert_with(|| AlgorithmView {
                    name: tag.clone(),
                    ..Default::default()
                })
                .instances
                .push(InstanceView {
                    service: entry.service.service.clone(),
                    id: entry.service.id.clone(),
                    address: address.clone(),
                    status: entry.aggregated_status(),
                });
        }
        let Some(link) = link else {
            continue;
        };
        if entry.aggregated_status() != CheckStatus::Passing
            || described_services.contains(&entry.service.service)
        {
            continue;
        }
        let Ok(Ok(Ok(response))) = tokio::time::timeout(Duration::from_secs(5), async {
            match link.dial(entry, Duration::from_secs(3)).await {
                Ok(channel) => Ok(RunnerClient::new(channel)
                    .list_algorithms(ListAlgorithmsRequest {})
                    .await),
                Err(e) => Err(e),
            }
        })
        .await
        else {
            tracing::warn!(%address, mesh = link.is_mesh(), "runner did not answer ListAlgorithms");
            continue;
        };
        described_services.push(entry.service.service.clone());
        for info in response.into_inner().algorithms {
            if let Some(view) = views.get_mut(&info.name) {
                view.version = Some(info.version);
                view.description = Some(info.description);
                view.input_schema = serde_json::from_str(&info.input_schema).ok();
                view.output_schema = serde_json::from_str(&info.output_schema).ok();
            }
        }
    }
    views.into_values().collect()
}
