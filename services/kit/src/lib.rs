//! The plugworker runner kit.
//!
//! A runner is a binary crate whose `src/algorithms/` holds one module per algorithm. The
//! kit turns it into a gRPC server that:
//!
//! - finds every algorithm linked in at start-up (each module calls
//!   [`register_algorithm!`]; there is no list to maintain),
//! - publishes each algorithm's name, version, description and input/output JSON Schemas
//!   (`ListAlgorithms`), validates payloads against the input schema before running them
//!   (`Run`), bounds concurrency and honours deadlines,
//! - serves `grpc.health.v1` (`SERVING` only once every algorithm loaded, and not while
//!   draining) and server reflection,
//! - serves all of that over Consul Connect-native mTLS (its own leaf certificate, callers
//!   verified against the CA roots and authorized by intentions; see `plugworker-mesh`),
//!   with health alone in plaintext on `--health-listen` for Consul's checks; or plaintext
//!   on one port with `--insecure-plaintext`,
//! - registers in Consul (`Connect: {"Native": true}`), tagged with exactly its algorithm
//!   names, re-registers if the agent forgets it, and deregisters after draining on SIGTERM;
//! - tells each call who made it ([`RunContext::caller`]: the peer's address, and its
//!   SPIFFE ID in mesh mode),
//! - also serves inside another process: [`Runner::start`] binds (port 0 picks a free
//!   port), reports the bound addresses and stops on [`Runner::stop`] as SIGTERM stops a
//!   runner process (tests serve a catalog that way, without a process).
//!
//! A runner's `main.rs` is three lines:
//!
//! ```ignore
//! plugworker_kit::algorithms!();
//!
//! fn main() -> std::process::ExitCode {
//!     plugworker_kit::main(env!("CARGO_BIN_NAME"))
//! }
//! ```
//!
//! and its `build.rs` calls `plugworker_kit_build::declare_algorithms()`.

mod algorithm;
mod catalog;
mod config;
mod deadline;
mod metrics;
mod probe;
mod registration;
mod runtime;
mod service;
pub mod settings;
mod slots;
#[cfg(test)]
mod test_algorithms;
mod transport;

pub use algorithm::{
    Algorithm, AlgorithmEntry, Caller, LoadContext, LoadError, RunContext, RunError,
};
pub use catalog::{Catalog, CatalogError};
pub use config::RunnerConfig;
pub use runtime::{BoundAddresses, Listeners, Runner, run};

/// Re-exported for [`register_algorithm!`]; not part of the API.
#[doc(hidden)]
pub use inventory;

/// The kit version runners publish in their Consul meta.
pub const KIT_VERSION: &str = env!("CARGO_PKG_VERSION");

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

/// Entry point of a runner binary: parses flags and environment, sets up logging, runs
/// until SIGTERM/SIGINT. Exits non-zero with a message if the runner cannot start.
pub fn main(runner_name: &'static str) -> ExitCode {
    // An unusable algorithm set is a build mistake: say so before anything else.
    let catalog = match Catalog::discover() {
        Ok(catalog) => catalog,
        Err(error) => {
            eprintln!("{runner_name}: {error}");
            return ExitCode::FAILURE;
        }
    };
    // `--help` lists what this particular binary serves.
    let mut list = String::from("Algorithms compiled into this runner (its Consul tags):\n");
    for info in catalog.infos() {
        list.push_str(&format!(
            "  {:<24} {} (v{})\n",
            info.name, info.description, info.version
        ));
    }
    // The algorithms' settings are flags of the runner's own command, so `--help` lists
    // them and a bad value stops the start like a bad flag.
    let command = settings::augment(RunnerConfig::command())
        .name(runner_name)
        .bin_name(runner_name)
        .after_help(list);
    let matches = command.get_matches();
    let mut config = RunnerConfig::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    config.settings =
        settings::AlgorithmSettings::from_matches(&matches).unwrap_or_else(|e| e.exit());
    // A health probe runs every few seconds and has nothing to log or trace.
    let telemetry = (!config.health_probe).then(|| {
        (
            config.service_name.as_deref().unwrap_or(runner_name),
            config.log_format,
        )
    });
    let process = match plugworker_telemetry::bootstrap(telemetry) {
        Ok(process) => process,
        Err(error) => {
            eprintln!("{runner_name}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if config.health_probe {
        return match process.block_on(probe::check(&config)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{runner_name}: unhealthy: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match process.block_on(run(config, catalog, runner_name)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "runner failed");
            eprintln!("{runner_name}: {error:#}");
            ExitCode::FAILURE
        }
    }
    // `process` drops here: spans flushed, then the runtime stopped.
}
