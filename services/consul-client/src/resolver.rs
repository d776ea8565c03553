//! [`Resolver`]: algorithm → healthy runner instances, kept live by Consul blocking queries.
//!
//! One watch follows `/v1/catalog/services`; for every service in it, one watch follows
//! its passing instances: `/v1/health/connect/:name?passing` in [`Mode::Connect`] (only
//! Connect-native instances, the ones that can prove their identity with a leaf
//! certificate), `/v1/health/service/:name?passing` in [`Mode::Plain`]. Each change rebuilds an immutable snapshot that
//! readers take without any I/O, so a job's hot path never waits on Consul. When Consul is
//! unreachable the watches back off and the last snapshot keeps serving; when it comes
//! back (even restarted, with its indexes reset) the watches pick the changes up again.

use crate::CheckStatus;
use crate::client::ConsulClient;
use crate::runners::is_runner;
use crate::watch::Watch;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A runner instance that can take work.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Instance {
    /// Consul service name (the runner kind).
    pub service: String,
    /// Consul service instance ID (one per runner process).
    pub id: String,
    /// `host:port` of its gRPC server.
    pub address: String,
}

/// An immutable view: which passing instances carry each algorithm tag.
#[derive(Debug, Default)]
pub struct Snapshot {
    by_algorithm: BTreeMap<String, Vec<Instance>>,
}

impl Snapshot {
    /// Each algorithm with its number of passing instances.
    pub fn instance_counts(&self) -> impl Iterator<Item = (&str, usize)> {
        self.by_algorithm
            .iter()
            .map(|(algorithm, instances)| (algorithm.as_str(), instances.len()))
    }

    pub fn instances(&self, algorithm: &str) -> &[Instance] {
        self.by_algorithm
            .get(algorithm)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// Which instances the resolver hands out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Connect-native instances only (`/v1/health/connect/:service`): callers dial them
    /// with mTLS and check the service name in their certificate.
    #[default]
    Connect,
    /// Every instance (`/v1/health/service/:service`), for plaintext callers
    /// (`--insecure-plaintext`).
    Plain,
}

/// Counters a metrics endpoint can expose.
#[derive(Debug, Default)]
pub struct ResolverStats {
    /// Failed Consul requests (the last view kept serving meanwhile).
    pub consul_errors: AtomicU64,
    /// Snapshots published.
    pub updates: AtomicU64,
}

/// One service's passing instances (each with its algorithm tags) and the task watching them.
struct Followed {
    instances: Vec<(Instance, Vec<String>)>,
    task: JoinHandle<()>,
}

struct State {
    /// Per service name, as last seen.
    per_service: Mutex<HashMap<String, Followed>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    stats: Arc<ResolverStats>,
    client: ConsulClient,
    wait: Duration,
    mode: Mode,
}

/// A live algorithm → instances view. Dropping it stops its watches.
pub struct Resolver {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    stats: Arc<ResolverStats>,
    state: Arc<State>,
    catalog_task: JoinHandle<()>,
}

impl Resolver {
    /// Starts watching every instance, Connect-native or not ([`Mode::Plain`]). `wait` is
    /// how long Consul may hold each blocking query.
    pub fn start(client: ConsulClient, wait: Duration) -> Self {
        Self::start_with_mode(client, wait, Mode::Plain)
    }

    /// Starts watching the instances `mode` selects.
    pub fn start_with_mode(client: ConsulClient, wait: Duration, mode: Mode) -> Self {
        let (sender, snapshot) = watch::channel(Arc::new(Snapshot::default()));
        let stats = Arc::new(ResolverStats::default());
        let state = Arc::new(State {
            per_service: Mutex::new(HashMap::new()),
            snapshot: sender,
            stats: stats.clone(),
            client,
            wait,
            mode,
        });
        let catalog_task = tokio::spawn(follow_catalog(state.clone()));
        Self {
            snapshot,
            stats,
            state,
            catalog_task,
        }
    }

    /// The current view (no I/O).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that sees every new snapshot, e.g. to wait for a runner to appear.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    pub fn stats(&self) -> &Arc<ResolverStats> {
        &self.stats
    }

    pub fn mode(&self) -> Mode {
        self.state.mode
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.catalog_task.abort();
        let mut services = self
            .state
            .per_service
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (_, followed) in services.drain() {
            followed.task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Follows the service list: starts a health watch per new service, drops vanished ones.
async fn follow_catalog(state: Arc<State>) {
    let mut watch = Watch::new(state.wait);
    loop {
        let client = state.client.clone();
        match watch.next(|options| client.catalog_services(options)).await {
            Ok(services) => {
                let mut changed = false;
                {
                    let mut per_service = lock(&state.per_service);
                    per_service.retain(|name, followed| {
                        let keep = services.contains_key(name);
                        if !keep {
                            followed.task.abort();
                            changed = true;
                        }
                        keep
                    });
                    for name in services.keys() {
                        if name == "consul" || per_service.contains_key(name) {
                            continue;
                        }
                        let task = tokio::spawn(follow_service(state.clone(), name.clone()));
                        per_service.insert(
                            name.clone(),
                            Followed {
                                instances: Vec::new(),
                                task,
                            },
                        );
                    }
                }
                if changed {
                    publish(&state);
                }
            }
            Err(error) => {
                state.stats.consul_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "Consul catalog watch failed; keeping the last known runners");
            }
        }
    }
}

/// Follows one service's passing instances.
async fn follow_service(state: Arc<State>, name: String) {
    let mut watch = Watch::new(state.wait);
    loop {
        let client = state.client.clone();
        let mode = state.mode;
        let result = watch
            .next(|options| {
                let client = client.clone();
                let name = name.clone();
                async move {
                    match mode {
                        Mode::Connect => client.health_connect(&name, &[], true, options).await,
                        Mode::Plain => client.health_service(&name, &[], true, options).await,
                    }
                }
            })
            .await;
        match result {
            Ok(entries) => {
                let instances: Vec<(Instance, Vec<String>)> = entries
                    .iter()
                    .filter(|e| is_runner(e) && e.aggregated_status() == CheckStatus::Passing)
                    .map(|e| {
                        let instance = Instance {
                            service: e.service.service.clone(),
                            id: e.service.id.clone(),
                            address: format!("{}:{}", e.address(), e.service.port),
                        };
                        (instance, e.service.tags.clone())
                    })
                    .collect();
                tracing::debug!(service = %name, passing = instances.len(), "runner instances changed");
                if let Some(followed) = lock(&state.per_service).get_mut(&name) {
                    followed.instances = instances;
                } else {
                    return; // the service left the catalog meanwhile
                }
                publish(&state);
            }
            Err(error) => {
                state.stats.consul_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(service = %name, %error, "Consul health watch failed; keeping the last known instances");
            }
        }
    }
}

fn publish(state: &State) {
    let mut by_algorithm: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    for followed in lock(&state.per_service).values() {
        for (instance, tags) in &followed.instances {
            for tag in tags {
                by_algorithm
                    .entry(tag.clone())
                    .or_default()
                    .push(instance.clone());
            }
        }
    }
    state.stats.updates.fetch_add(1, Ordering::Relaxed);
    state
        .snapshot
        .send_replace(Arc::new(Snapshot { by_algorithm }));
}
