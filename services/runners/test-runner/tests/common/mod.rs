//! Shared set-up for the runner process tests.

#![allow(dead_code)]

pub mod attack;

use plugworker_consul_client::{ConsulClient, ConsulConfig};
use plugworker_embedded_consul::{Registry, RegistryConfig, RunningRegistry};
use plugworker_testkit::{Addresses, Process, bin_path};
use std::path::PathBuf;

pub const CHECK_INTERVAL_SECS: u64 = 1;

/// An embedded registry and a client for it.
pub async fn registry() -> (RunningRegistry, ConsulClient) {
    registry_on(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
}

/// [`registry`] on a listener already bound: a test restarting the agent keeps a clone of
/// the first one's listener, so the port is never released between the two.
pub fn registry_on(listener: std::net::TcpListener) -> (RunningRegistry, ConsulClient) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let registry = Registry::spawn_on(listener, RegistryConfig::default()).unwrap();
    let client = ConsulClient::new(ConsulConfig {
        address: registry.url(),
        ..Default::default()
    })
    .unwrap();
    (registry, client)
}

/// Starts `binary` registered in the registry at `consul_url` under `service_name`, with
/// a 1 s check interval, on port 0. Returns the process and its gRPC address (from its
/// address file).
pub async fn start_runner(
    binary: &str,
    service_name: &str,
    consul_url: &str,
    extra_args: &[&str],
    envs: &[(&str, &str)],
) -> (Process, String) {
    let (process, addresses) =
        start_runner_reporting(binary, service_name, consul_url, extra_args, envs).await;
    (process, addresses.grpc().to_string())
}

/// [`start_runner`], returning every address the runner reported (metrics when
/// `--metrics-address` is among `extra_args`).
pub async fn start_runner_reporting(
    binary: &str,
    service_name: &str,
    consul_url: &str,
    extra_args: &[&str],
    envs: &[(&str, &str)],
) -> (Process, Addresses) {
    let interval = format!("{CHECK_INTERVAL_SECS}s");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--service-name",
        service_name,
        "--consul-address",
        consul_url,
        "--check-interval",
        &interval,
        "--check-timeout",
        "1s",
        "--deregister-critical-after",
        "30s",
        // These tests drive the runner with plaintext gRPC clients; mesh mode has its own
        // tests (mesh.rs).
        "--insecure-plaintext",
    ];
    args.extend_from_slice(extra_args);
    Process::spawn_reporting(&bin_path(binary), &args, envs).await
}

/// Starts `binary` without Consul registration, on port 0. Returns the process and its
/// gRPC address.
pub async fn start_unregistered(
    binary: &str,
    extra_args: &[&str],
    envs: &[(&str, &str)],
) -> (Process, String) {
    // No Consul: no Connect certificate, so plaintext.
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--no-register",
        "--insecure-plaintext",
    ];
    args.extend_from_slice(extra_args);
    let (process, addresses) = Process::spawn_reporting(&bin_path(binary), &args, envs).await;
    (process, addresses.grpc().to_string())
}

/// The algorithm module names of a runner crate, read from its `src/algorithms/` folder:
/// what the kit must discover without any list.
pub fn algorithm_modules(runner_crate_dir: &str) -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(runner_crate_dir)
        .join("src/algorithms");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            if p.is_dir() {
                p.join("mod.rs")
                    .exists()
                    .then(|| p.file_name().unwrap().to_string_lossy().into_owned())
            } else {
                (p.extension()? == "rs")
                    .then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
            }
        })
        .collect();
    names.sort();
    names
}

pub use plugworker_testkit::rss;
