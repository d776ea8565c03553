//! Certificates change under load without losing a call: leaves renewed every few
//! seconds, and the CA root rotated, while calls run over long-lived connections and over
//! connections opened all along.

mod common;

use common::*;
use plugworker_embedded_consul::RegistryConfig;
use plugworker_mesh::Identity;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Calls `address` until `stop`: four callers sharing one long-lived connection, and one
/// caller opening a new connection for every call. Returns (calls, failures).
fn load(
    client: Identity,
    address: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let calls = Arc::new(AtomicU64::new(0));
        let mut callers = Vec::new();
        let shared = mesh_channel(&client, "runner", address);
        for _ in 0..4 {
            let channel = shared.clone();
            let (stop, calls) = (stop.clone(), calls.clone());
            callers.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match echo(channel.clone(), b"reused").await {
                        Ok(answer) if answer.result == b"reused" => {}
                        Ok(answer) => failures.push(format!("wrong answer {answer:?}")),
                        Err(status) => failures.push(format!("reused connection: {status:?}")),
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                failures
            }));
        }
        let (stop_fresh, fresh_calls) = (stop.clone(), calls.clone());
        callers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop_fresh.load(Ordering::Relaxed) {
                let channel = mesh_channel(&client, "runner", address);
                if let Err(status) = echo(channel, b"fresh").await {
                    failures.push(format!("new connection: {status:?}"));
                }
                fresh_calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            failures
        }));
        let mut failures = Vec::new();
        for caller in callers {
            failures.extend(caller.await.unwrap());
        }
        (calls.load(Ordering::Relaxed), failures)
    })
}

/// Polls `identity`'s leaf serial until `stop`, collecting every one seen.
fn serials(identity: Identity, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<BTreeSet<String>> {
    tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        while !stop.load(Ordering::Relaxed) {
            seen.insert(identity.leaf_serial());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        seen.insert(identity.leaf_serial());
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_renewed_during_continuous_calls_lose_none() {
    // 4 s leaves: the agent renews each at 60–90 % of its life, so the run below spans
    // about three generations, and the first leaves expire long before it ends.
    let registry = registry(RegistryConfig {
        connect_leaf_ttl: Duration::from_secs(4),
        ..RegistryConfig::default()
    })
    .await;
    let runner = identity(&registry, "runner").await;
    let controller = identity(&registry, "controller").await;
    let server = EchoServer::start(
        runner.clone(),
        consul(&registry),
        settings(Duration::from_secs(1)),
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let runner_serials = serials(runner.clone(), stop.clone());
    let controller_serials = serials(controller.clone(), stop.clone());
    let calls = load(controller.clone(), server.address, stop.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let (calls, failures) = calls.await.unwrap();
    let runner_serials = runner_serials.await.unwrap();
    let controller_serials = controller_serials.await.unwrap();

    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:#?}",
        failures.len()
    );
    assert!(calls > 100, "only {calls} calls");
    // At least two renewals on each side (three leaves), so calls ran on connections made
    // with leaves that had expired, and new connections used renewed leaves.
    assert!(runner_serials.len() >= 3, "{runner_serials:?}");
    assert!(controller_serials.len() >= 3, "{controller_serials:?}");
    assert_eq!(server.calls(), calls);
}

/// The server is handed its only `Identity` (as the runner kit does): its leaf must keep
/// renewing through the acceptor's own clone, or new connections would meet an expired
/// certificate once the first 4 s leaf runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_given_its_only_identity_keeps_renewing_its_leaf() {
    let registry = registry(RegistryConfig {
        connect_leaf_ttl: Duration::from_secs(4),
        ..RegistryConfig::default()
    })
    .await;
    let controller = identity(&registry, "controller").await;
    let server = EchoServer::start(
        identity(&registry, "runner").await,
        consul(&registry),
        settings(Duration::from_secs(1)),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = load(controller.clone(), server.address, stop.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let (calls, failures) = calls.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:#?}",
        failures.len()
    );
    assert!(calls > 100, "only {calls} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_root_rotation_during_continuous_calls_loses_none() {
    let registry = registry(RegistryConfig::default()).await;
    let runner = identity(&registry, "runner").await;
    let controller = identity(&registry, "controller").await;
    let server = EchoServer::start(
        runner.clone(),
        consul(&registry),
        settings(Duration::from_secs(1)),
    )
    .await;
    let first_runner_leaf = runner.leaf_serial();
    let first_controller_leaf = controller.leaf_serial();

    let stop = Arc::new(AtomicBool::new(false));
    let calls = load(controller.clone(), server.address, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    registry.registry().rotate_ca_root().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    registry.registry().rotate_ca_root().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (calls, failures) = calls.await.unwrap();

    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:#?}",
        failures.len()
    );
    assert!(calls > 50, "only {calls} calls");
    // Both leaves were re-issued under the new root; the trust domain stays.
    assert_ne!(runner.leaf_serial(), first_runner_leaf);
    assert_ne!(controller.leaf_serial(), first_controller_leaf);
    assert_eq!(runner.trust_domain(), registry.registry().trust_domain());
    // New connections after the rotations work both ways round.
    let answer = echo(
        mesh_channel(&controller, "runner", server.address),
        b"after",
    )
    .await
    .unwrap();
    assert_eq!(answer.instance_id, controller.spiffe_id());
}
