//! The `plugworker` command. One module per subcommand under [`commands`]; this file only
//! parses arguments and reports errors.

pub mod commands;
pub mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// plugworker: a plug & play ML worker. Runners announce their algorithms in Consul; jobs
/// are routed to whichever healthy runner serves the algorithm they name.
#[derive(Parser, Debug)]
#[command(name = "plugworker", version, propagate_version = true)]
#[cfg_attr(
    not(feature = "aws"),
    command(
        after_help = "This build has no AWS support (built without the `aws` feature, as scripts/demo.sh builds it): the SQS commands `controller`, `submit` and `results` need the default build (`cargo build -p plugworker-cli`)."
    )
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format (level comes from RUST_LOG, default info).
    #[arg(long, global = true, env = "PLUGWORKER_LOG_FORMAT", value_enum, default_value_t = plugworker_telemetry::LogFormat::Human)]
    pub log_format: plugworker_telemetry::LogFormat,
}

/// Where Consul (or the embedded registry) is and how to reach it: the flags and
/// `CONSUL_*` variables every command that talks to Consul shares with the runners.
pub use plugworker_consul_client::ConsulArgs;

// Parsed once per process and matched at once: the size of its variants costs nothing,
// and boxing them would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    #[cfg(feature = "dev")]
    /// Serve the embedded Consul-compatible registry (for machines without Consul; like
    /// `consul agent -dev`: one node, ACLs off, state in memory).
    Registry(commands::registry::Args),
    /// List every algorithm the healthy and unhealthy runners in Consul announce, with
    /// their instances, health, version and input schema, and the stored pipelines.
    Algorithms(commands::algorithms::Args),
    /// Store, print, list and delete named pipelines (Consul KV `plugworker/pipelines/`).
    Pipeline(commands::pipeline::Args),
    /// Run one algorithm now on a healthy runner found through Consul, and print the result.
    Call(commands::call::Args),
    #[cfg(feature = "gallery")]
    /// Change, list and roll back meme_classifier's gallery of templates (a folder or
    /// s3://bucket/prefix), one atomically published version at a time.
    Gallery(commands::gallery::Args),
    #[cfg(feature = "aws")]
    /// Run the controller: jobs from SQS, runners from Consul, results to SQS.
    Controller(commands::controller::Args),
    #[cfg(feature = "aws")]
    /// Put a job on the jobs queue; prints its message id.
    Submit(commands::submit::Args),
    #[cfg(feature = "aws")]
    /// Print (and remove) results from the results queue.
    Results(commands::results::Args),
    #[cfg(feature = "dev")]
    /// Run everything on this machine: embedded registry, this build's runners and the
    /// controller, with jobs from a JSONL file and results as JSON lines. No AWS, no Consul.
    Dev(commands::dev::Args),
    /// Exit 0 if the controller on this machine answers 200 on /healthz, 1 otherwise (for
    /// container health checks).
    Healthcheck(commands::healthcheck::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Traces name the role, not the binary: the producer and the controller are both
    // `plugworker`. A health probe runs every few seconds and has nothing to trace or log.
    let service_name = match &cli.command {
        #[cfg(feature = "dev")]
        Command::Dev(_) => "plugworker-controller",
        #[cfg(feature = "aws")]
        Command::Controller(_) => "plugworker-controller",
        #[cfg(feature = "aws")]
        Command::Submit(_) => "plugworker-submit",
        _ => "plugworker",
    };
    let telemetry =
        (!matches!(cli.command, Command::Healthcheck(_))).then_some((service_name, cli.log_format));
    let process = match plugworker_telemetry::bootstrap(telemetry) {
        Ok(process) => process,
        Err(error) => {
            eprintln!("plugworker: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = process.block_on(async {
        match cli.command {
            #[cfg(feature = "dev")]
            Command::Registry(args) => commands::registry::run(args).await,
            Command::Algorithms(args) => commands::algorithms::run(args).await,
            Command::Pipeline(args) => commands::pipeline::run(args).await,
            Command::Call(args) => commands::call::run(args).await,
            #[cfg(feature = "gallery")]
            Command::Gallery(args) => commands::gallery::run(args).await,
            #[cfg(feature = "aws")]
            Command::Controller(args) => commands::controller::run(args).await,
            #[cfg(feature = "aws")]
            Command::Submit(args) => commands::submit::run(args).await,
            #[cfg(feature = "aws")]
            Command::Results(args) => commands::results::run(args).await,
            #[cfg(feature = "dev")]
            Command::Dev(args) => commands::dev::run(args).await,
            Command::Healthcheck(args) => commands::healthcheck::run(args).await,
        }
    });
    // Traces flushed, runtime stopped.
    drop(process);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("plugworker: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once: some errors (the Consul client's
/// transport errors) already carry their causes in their own message, for log lines.
pub(crate) fn describe(error: &anyhow::Error) -> String {
    plugworker_lifecycle::error_chain::with_causes(String::new(), error.chain())
}
