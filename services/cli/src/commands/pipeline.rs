//! `plugworker pipeline put NAME FILE | get NAME | list | delete NAME`: named pipelines
//! in Consul's KV store under `plugworker/pipelines/` (docs/pipelines.md), read and
//! written with the caller's token. The controller watches that prefix, so a stored
//! pipeline applies to jobs received after the change, with no restart.
//!
//! `put` refuses a pipeline whose graph is wrong (always), and one that does not fit the
//! schemas its algorithms announce now (unless `--force`), reporting every fault.

use super::algorithms::{self, RunnerFlags};
use crate::ConsulArgs;
use anyhow::{Context, bail};
use plugworker_consul_client::{ConsulClient, KvPair, QueryOptions};
use plugworker_discovery::all_runner_instances;
use plugworker_jobs::pipeline::{
    KV_PREFIX, Pipeline, check_schemas, pipeline_name_of_key, valid_pipeline_name,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Subcommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum Subcommand {
    /// Store (create or replace) the pipeline NAME from a JSON file: its graph is checked
    /// (always), and, where its steps' algorithms are announced now, its pointers and
    /// inputs against their schemas (read from the runners: --mesh-service or
    /// --insecure-plaintext).
    Put(PutArgs),
    /// Print a stored pipeline's JSON (its revision, the KV ModifyIndex, on stderr).
    Get(NameArgs),
    /// List the stored pipelines: name, revision and steps (step=algorithm).
    List(ListArgs),
    /// Delete a stored pipeline.
    Delete(NameArgs),
}

#[derive(clap::Args, Debug)]
pub struct PutArgs {
    /// The pipeline's name: [a-z][a-z0-9_-]{0,127}; jobs name it as `"pipeline": NAME`.
    pub name: String,
    /// JSON file holding the pipeline (an object of named steps), `-` for stdin.
    pub file: PathBuf,
    /// Store it even if it does not fit its algorithms' schemas (the mismatches are still
    /// printed). Graph faults are always refused.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub runners: RunnerFlags,
    #[command(flatten)]
    pub consul: ConsulArgs,
}

#[derive(clap::Args, Debug)]
pub struct NameArgs {
    pub name: String,
    #[command(flatten)]
    pub consul: ConsulArgs,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub consul: ConsulArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Subcommand::Put(args) => put(args).await,
        Subcommand::Get(args) => get(args).await,
        Subcommand::List(args) => list(args).await,
        Subcommand::Delete(args) => delete(args).await,
    }
}

/// The KV key of the pipeline `name`, once the name is known to be valid.
fn key(name: &str) -> anyhow::Result<String> {
    if !valid_pipeline_name(name) {
        bail!("{name:?} cannot name a pipeline: a name is [a-z][a-z0-9_-]{{0,127}}");
    }
    Ok(format!("{KV_PREFIX}{name}"))
}

/// Explains a refused KV request: the token, and the rule it lacks.
fn kv_context(error: plugworker_consul_client::Error, access: &str) -> anyhow::Error {
    let denied = matches!(&error, plugworker_consul_client::Error::Status { status, .. } if status.as_u16() == 403);
    let error = anyhow::Error::new(error);
    if denied {
        error.context(format!(
            "Consul refused: the token (CONSUL_HTTP_TOKEN) needs key_prefix \"{KV_PREFIX}\" {{ policy = \"{access}\" }}"
        ))
    } else {
        error
    }
}

async fn put(args: PutArgs) -> anyhow::Result<()> {
    key(&args.name)?; // A bad name fails before anything is read.
    let (source, text) = if args.file.as_os_str() == "-" {
        let text = std::io::read_to_string(std::io::stdin())
            .context("cannot read the pipeline from stdin")?;
        ("stdin".to_string(), text)
    } else {
        let text = std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        (args.file.display().to_string(), text)
    };
    let pipeline = Pipeline::parse(&text).with_context(|| format!("{source}: not stored"))?;
    let consul = super::dev_session::client(&args.consul)?;
    let mismatches = schema_mismatches(&consul, &pipeline, &args.runners).await?;
    for mismatch in &mismatches {
        eprintln!("schema mismatch: {mismatch}");
    }
    if !mismatches.is_empty() && !args.force {
        bail!(
            "{source}: {} schema mismatch{}; not stored (--force stores it anyway)",
            mismatches.len(),
            if mismatches.len() == 1 { "" } else { "es" }
        );
    }
    let revision = store(&consul, &args.name, text.trim()).await?;
    println!(
        "stored pipeline {} (revision {revision}): {}",
        args.name,
        steps_summary(&pipeline)
    );
    Ok(())
}

/// Stores `json` (a pipeline already checked) as the pipeline `name`; its new revision.
pub async fn store(consul: &ConsulClient, name: &str, json: &str) -> anyhow::Result<u64> {
    let key = key(name)?;
    consul
        .kv_put(&key, json.as_bytes(), None)
        .await
        .map_err(|e| kv_context(e, "write"))
        .with_context(|| format!("cannot store pipeline {name}"))?;
    let stored = read(consul, name)
        .await
        .with_context(|| format!("stored pipeline {name}, but cannot read it back"))?;
    Ok(stored.modify_index)
}

/// The pipeline's mismatches with the schemas of the algorithms announced now, read from
/// the runners the way `plugworker algorithms` reads them. Steps whose algorithm is not
/// announced, or whose schemas no runner gave, are named on stderr and not checked.
async fn schema_mismatches(
    consul: &ConsulClient,
    pipeline: &Pipeline,
    runners: &RunnerFlags,
) -> anyhow::Result<Vec<String>> {
    let Some(link) = runners.link(consul).await? else {
        eprintln!(
            "note: schemas not checked: pass --mesh-service NAME (or --insecure-plaintext) to read them from the runners"
        );
        return Ok(Vec::new());
    };
    let instances = all_runner_instances(consul)
        .await
        .context("cannot list the runners in Consul to read their schemas")?;
    let views = algorithms::collect(&instances, Some(&link)).await;
    let mut schemas = BTreeMap::new();
    for step in pipeline.steps() {
        let view = views.iter().find(|v| v.name == step.algorithm);
        match view.map(|v| (&v.input_schema, &v.output_schema)) {
            Some((Some(input), Some(output))) => {
                schemas.insert(step.algorithm.clone(), (input.clone(), output.clone()));
            }
            Some(_) => eprintln!(
                "note: step {:?}: no runner of {:?} gave its schemas; not checked",
                step.name, step.algorithm
            ),
            None => eprintln!(
                "note: step {:?}: {:?} is not announced now; not checked",
                step.name, step.algorithm
            ),
        }
    }
    Ok(check_schemas(pipeline, &schemas))
}

/// The KV entry of the stored pipeline `name`, or an error saying there is none.
async fn read(consul: &ConsulClient, name: &str) -> anyhow::Result<KvPair> {
    let (stored, _) = consul
        .kv_get(&key(name)?, QueryOptions::default())
        .await
        .map_err(|e| kv_context(e, "read"))
        .with_context(|| format!("cannot read pipeline {name}"))?;
    stored.with_context(|| format!("no stored pipeline named {name:?}"))
}

async fn get(args: NameArgs) -> anyhow::Result<()> {
    let stored = read(&super::dev_session::client(&args.consul)?, &args.name).await?;
    eprintln!("pipeline {} revision {}", args.name, stored.modify_index);
    println!("{}", String::from_utf8_lossy(&stored.value));
    Ok(())
}

async fn delete(args: NameArgs) -> anyhow::Result<()> {
    let consul = super::dev_session::client(&args.consul)?;
    let stored = read(&consul, &args.name).await?;
    consul
        .kv_delete(&stored.key)
        .await
        .map_err(|e| kv_context(e, "write"))
        .with_context(|| format!("cannot delete pipeline {}", args.name))?;
    println!("deleted pipeline {}", args.name);
    Ok(())
}

/// One stored pipeline, as `list` and `plugworker algorithms` show it.
#[derive(Serialize, Debug)]
pub struct StoredView {
    pub name: String,
    pub revision: u64,
    /// The steps, in the order they run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepView>>,
    /// Why the stored value is not a valid pipeline (jobs naming it fail with
    /// `invalid_pipeline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct StepView {
    pub step: String,
    pub algorithm: String,
}

impl StoredView {
    /// `label=meme_classifier text=ocr lang=language_detection`, or what is wrong.
    pub fn summary(&self) -> String {
        match (&self.steps, &self.error) {
            (Some(steps), _) => steps
                .iter()
                .map(|s| format!("{}={}", s.step, s.algorithm))
                .collect::<Vec<_>>()
                .join(" "),
            (None, Some(error)) => format!("invalid: {error}"),
            (None, None) => String::new(),
        }
    }
}

fn steps_summary(pipeline: &Pipeline) -> String {
    view("", 0, pipeline).summary()
}

fn view(name: &str, revision: u64, pipeline: &Pipeline) -> StoredView {
    let steps = pipeline.steps().iter();
    StoredView {
        name: name.to_string(),
        revision,
        steps: Some(
            steps
                .map(|s| StepView {
                    step: s.name.clone(),
                    algorithm: s.algorithm.clone(),
                })
                .collect(),
        ),
        error: None,
    }
}

/// Every pipeline stored under [`KV_PREFIX`], in name order.
pub async fn stored_pipelines(consul: &ConsulClient) -> anyhow::Result<Vec<StoredView>> {
    let (pairs, _) = consul
        .kv_list(KV_PREFIX, QueryOptions::default())
        .await
        .map_err(|e| kv_context(e, "read"))
        .context("cannot list the stored pipelines")?;
    Ok(pairs
        .into_iter()
        .filter_map(|pair| {
            // The keys jobs can name, as the controller reads them: no nested keys, no
            // names a job could not give.
            let name = pipeline_name_of_key(&pair.key)?.to_string();
            let text = String::from_utf8_lossy(&pair.value);
            Some(match Pipeline::parse(&text) {
                Ok(pipeline) => view(&name, pair.modify_index, &pipeline),
                Err(error) => StoredView {
                    name,
                    revision: pair.modify_index,
                    steps: None,
                    error: Some(error.to_string()),
                },
            })
        })
        .collect())
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let consul = super::dev_session::client(&args.consul)?;
    let views = stored_pipelines(&consul).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    if views.is_empty() {
        // Consul leaves out of a listing the keys the token may not read.
        println!(
            "no pipelines stored in Consul at {} (that this token may read)",
            consul.address()
        );
    }
    for view in &views {
        println!(
            "{}  revision {}  {}",
            view.name,
            view.revision,
            view.summary()
        );
    }
    Ok(())
}
