//! [`Resolver`]: algorithm → healthy runner instances, kept live by Consul blocking queries.
//!
//! One watch follows `/v1/catalog/services`; for every service in it, one watch follows
//! its passing instances: `/v1/health/connect/:name?passing` in [`Mode::Connect`] (only
//! Connect-native instances, the ones that can prove their identity with a leaf
//! certificate), `/v1/health/service/:name?passing` in [`Mode::Plain`]. Each change rebuilds an immutable snapshot that
//! readers take without any I/O, so a job's hot path never waits on Consul. When Consul is
//! unreachable the watches back off and the last snapshot keeps serving; when it comes
//! back (even restarted, with its indexes reset) the watches pick the changes up again.
//!
//! Two more things decide what a snapshot holds:
//! - **Admission** ([`Admission`]): a service's instances enter the snapshot only once the
//!   operator allowed it, by an intention `source → service` (Consul's
//!   `/v1/connect/intentions/check`, its default policy included, re-checked every
//!   [`Admission::ttl`]) or by name in an allow-list. A service with a valid identity of its
//!   own that registers with a runner's algorithm tag (tag squatting) gets no connection.
//! - **Readiness** ([`Resolver::readiness`]): false until Consul has answered once for the
//!   catalog and, for every service listed in that first answer, its instances and its
//!   admission. An empty snapshot before that means "not heard from Consul", not "no
//!   runner", and callers must not fail jobs on it.

use crate::runners::{Mode, is_runner};
use plugworker_consul_client::{CheckStatus, ConsulClient, Error, Watch};
use plugworker_lifecycle::Backoff;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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

/// Which services may receive work: those an intention lets `source` call, and those
/// named in `allow_list`. With no `source` and an empty allow-list, every service
/// (plaintext callers, which have no identity an intention could name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// The caller's Consul service name (the source of the intentions checked).
    pub source: Option<String>,
    /// Services admitted whatever the intentions say.
    pub allow_list: BTreeSet<String>,
    /// How long an intention decision is reused before it is checked again.
    pub ttl: Duration,
}

impl Admission {
    /// Every service is admitted.
    pub fn open() -> Self {
        Self::default()
    }

    /// Services an intention lets `source` call (re-checked every `ttl`), plus `allow_list`.
    pub fn intentions(
        source: impl Into<String>,
        allow_list: impl IntoIterator<Item = String>,
        ttl: Duration,
    ) -> Self {
        Self {
            source: Some(source.into()),
            allow_list: allow_list.into_iter().collect(),
            ttl,
        }
    }

    /// Admitted without asking Consul: `Some(decision)`; `None`: ask the intentions.
    fn fixed(&self, service: &str) -> Option<bool> {
        if self.allow_list.contains(service) {
            Some(true)
        } else if self.source.is_none() {
            Some(self.allow_list.is_empty())
        } else {
            None
        }
    }
}

/// Counters a metrics endpoint can expose.
#[derive(Debug, Default)]
pub struct ResolverStats {
    /// Failed Consul requests (the last view kept serving meanwhile).
    pub consul_errors: AtomicU64,
    /// Snapshots published.
    pub updates: AtomicU64,
    /// Services refused work because no intention (nor the allow-list) admits them,
    /// counted once per service.
    pub services_refused: AtomicU64,
}

/// One service's passing instances (each with its algorithm tags) and the tasks watching
/// them.
struct Followed {
    instances: Vec<(Instance, Vec<String>)>,
    /// Consul has answered for its instances at least once.
    heard: bool,
    /// The admission decision: `None` until one is known.
    admitted: Option<bool>,
    task: JoinHandle<()>,
    admission_task: Option<JoinHandle<()>>,
}

impl Followed {
    fn abort(&self) {
        self.task.abort();
        if let Some(task) = &self.admission_task {
            task.abort();
        }
    }
}

struct State {
    /// Per service name, as last seen.
    per_service: Mutex<HashMap<String, Followed>>,
    /// The services of the first catalog answer (`None` before it): readiness waits for
    /// each of them.
    first_catalog: Mutex<Option<HashSet<String>>>,
    ready: watch::Sender<bool>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    stats: Arc<ResolverStats>,
    client: ConsulClient,
    wait: Duration,
    mode: Mode,
    admission: Admission,
    /// Services whose refusal was logged (and counted) already.
    refusals_logged: Mutex<HashSet<String>>,
    /// Services whose instances were all found uncallable in this mode, logged already.
    uncallable_logged: Mutex<HashSet<String>>,
}

/// A live algorithm → instances view. Dropping it stops its watches.
pub struct Resolver {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    ready: watch::Receiver<bool>,
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

    /// Starts watching the instances `mode` selects, of every service.
    pub fn start_with_mode(client: ConsulClient, wait: Duration, mode: Mode) -> Self {
        Self::start_admitting(client, wait, mode, Admission::open())
    }

    /// Starts watching the instances `mode` selects, of the services `admission` admits.
    pub fn start_admitting(
        client: ConsulClient,
        wait: Duration,
        mode: Mode,
        admission: Admission,
    ) -> Self {
        let (sender, snapshot) = watch::channel(Arc::new(Snapshot::default()));
        let (ready_sender, ready) = watch::channel(false);
        let stats = Arc::new(ResolverStats::default());
        let state = Arc::new(State {
            per_service: Mutex::new(HashMap::new()),
            first_catalog: Mutex::new(None),
            ready: ready_sender,
            snapshot: sender,
            stats: stats.clone(),
            client,
            wait,
            mode,
            admission,
            refusals_logged: Mutex::new(HashSet::new()),
            uncallable_logged: Mutex::new(HashSet::new()),
        });
        let catalog_task = tokio::spawn(follow_catalog(state.clone()));
        Self {
            snapshot,
            ready,
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

    /// Whether Consul has answered once (the catalog, and each service it listed then):
    /// until it is true, an empty view means "not heard yet", not "no runner". It never
    /// turns false again: when Consul goes away later, the last view keeps serving.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn stats(&self) -> &Arc<ResolverStats> {
        &self.stats
    }

    pub fn mode(&self) -> Mode {
        self.state.mode
    }

    pub fn admission(&self) -> &Admission {
        &self.state.admission
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.catalog_task.abort();
        let mut services = lock(&self.state.per_service);
        for (_, followed) in services.drain() {
            followed.abort();
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
                            followed.abort();
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
                                heard: false,
                                admitted: state.admission.fixed(name),
                                task,
                                admission_task: None,
                            },
                        );
                    }
                }
                lock(&state.first_catalog).get_or_insert_with(|| {
                    services
                        .keys()
                        .filter(|name| *name != "consul")
                        .cloned()
                        .collect()
                });
                if changed {
                    publish(&state);
                }
                update_readiness(&state);
            }
            Err(error) => {
                state.stats.consul_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "Consul catalog watch failed; keeping the last known runners");
            }
        }
    }
}

/// Ready once the catalog answered and every service of that first answer (still listed)
/// has had its instances and its admission answered.
fn update_readiness(state: &State) {
    if *state.ready.borrow() {
        return;
    }
    let first = lock(&state.first_catalog);
    let Some(first) = first.as_ref() else {
        return;
    };
    let per_service = lock(&state.per_service);
    let answered = first.iter().all(|name| {
        per_service
            .get(name)
            .is_none_or(|f| f.heard && (f.instances.is_empty() || f.admitted.is_some()))
    });
    if answered {
        tracing::info!(
            services = per_service.len(),
            "first answer from Consul: the runner view is ready"
        );
        state.ready.send_replace(true);
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
                let none = instances.is_empty();
                let refused = match lock(&state.per_service).get_mut(&name) {
                    Some(followed) => {
                        followed.instances = instances;
                        followed.heard = true;
                        // Intentions are asked about services with runner instances only:
                        // the catalog also lists Consul itself, this controller, Prometheus.
                        if !none && followed.admitted.is_none() && followed.admission_task.is_none()
                        {
                            followed.admission_task =
                                Some(tokio::spawn(follow_admission(state.clone(), name.clone())));
                        }
                        !none && followed.admitted == Some(false)
                    }
                    None => return, // the service left the catalog meanwhile
                };
                if refused {
                    log_refusal(&state, &name);
                }
                publish(&state);
                update_readiness(&state);
                if none && mode == Mode::Connect {
                    warn_if_uncallable(&state, &name).await;
                }
            }
            Err(error) => {
                state.stats.consul_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(service = %name, %error, "Consul health watch failed; keeping the last known instances");
            }
        }
    }
}

/// In [`Mode::Connect`], a service with passing runner instances none of which is
/// Connect-native (runners started with `--insecure-plaintext` beside an mTLS caller)
/// looks exactly like a service with no runner: say so, once per service.
async fn warn_if_uncallable(state: &State, name: &str) {
    if lock(&state.uncallable_logged).contains(name) {
        return;
    }
    let Ok((entries, _)) = state
        .client
        .health_service(name, &[], true, Default::default())
        .await
    else {
        return;
    };
    let plaintext = entries
        .iter()
        .filter(|e| is_runner(e) && e.aggregated_status() == CheckStatus::Passing)
        .count();
    if plaintext > 0 && lock(&state.uncallable_logged).insert(name.to_string()) {
        tracing::warn!(
            service = %name,
            plaintext_instances = plaintext,
            "runner instances of this service pass their checks but none is Connect-native: this controller calls runners over mTLS and cannot call them (start the runners without --insecure-plaintext, or this controller with it)"
        );
    }
}

/// Between failed intention checks: quick at first, then at most every 10 s.
const ADMISSION_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// Keeps one service's admission decision fresh: asks Consul whether an intention lets
/// the source call it, every [`Admission::ttl`].
async fn follow_admission(state: Arc<State>, name: String) {
    let Some(source) = state.admission.source.clone() else {
        return;
    };
    let mut failures = 0u32;
    loop {
        let decision = match state.client.intention_check(&source, &name).await {
            Ok(allowed) => Some(allowed),
            // Consul refused the question (a token without `service:read` on the
            // service): nothing admits it. Any other failure keeps the last decision.
            Err(Error::Status { status, body, .. }) if status.as_u16() == 403 => {
                tracing::warn!(service = %name, %status, %body, "Consul refused the intention check; the service gets no jobs");
                Some(false)
            }
            Err(error) => {
                state.stats.consul_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(service = %name, %error, "intention check failed; keeping the last decision");
                None
            }
        };
        let delay = match decision {
            Some(allowed) => {
                failures = 0;
                let (previous, runners) = {
                    let mut per_service = lock(&state.per_service);
                    let Some(followed) = per_service.get_mut(&name) else {
                        return;
                    };
                    (
                        followed.admitted.replace(allowed),
                        !followed.instances.is_empty(),
                    )
                };
                if !allowed && runners {
                    log_refusal(&state, &name);
                } else if allowed && previous == Some(false) {
                    tracing::info!(service = %name, %source, "an intention now allows calling this service");
                }
                if previous != Some(allowed) {
                    publish(&state);
                }
                update_readiness(&state);
                state.admission.ttl
            }
            None => {
                failures = failures.saturating_add(1);
                ADMISSION_BACKOFF.delay(failures)
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// Logs and counts a service with runner instances that is refused, once per service.
fn log_refusal(state: &State, name: &str) {
    if lock(&state.refusals_logged).insert(name.to_string()) {
        state.stats.services_refused.fetch_add(1, Ordering::Relaxed);
        let source = state.admission.source.as_deref().unwrap_or("");
        tracing::warn!(
            service = %name,
            %source,
            "not sending jobs to this service: it registers runner instances, but no intention allows this caller to call it (the default intention policy included) and the allow-list does not name it"
        );
    }
}

fn publish(state: &State) {
    let mut by_algorithm: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
    for followed in lock(&state.per_service).values() {
        if followed.admitted != Some(true) {
            continue;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_asks_intentions_unless_the_allow_list_or_the_mode_decides() {
        let open = Admission::open();
        assert_eq!(
            open.fixed("anything"),
            Some(true),
            "no identity, no list: all"
        );
        let listed_only = Admission {
            allow_list: ["ocr-runner".to_string()].into(),
            ..Admission::open()
        };
        assert_eq!(listed_only.fixed("ocr-runner"), Some(true));
        assert_eq!(listed_only.fixed("intruder"), Some(false));
        let mesh = Admission::intentions(
            "controller",
            ["ocr-runner".to_string()],
            Duration::from_secs(10),
        );
        assert_eq!(mesh.fixed("ocr-runner"), Some(true), "listed: no question");
        assert_eq!(mesh.fixed("intruder"), None, "the intentions decide");
    }
}
