//! The registry's state: services, checks and the indexes blocking queries wait on.
//!
//! One mutex guards everything; every critical section is a few map operations, and
//! check probes run outside it. A `watch` channel carries the global index so blocked
//! readers wake on any change and re-check the index of the view they asked for.

use plugworker_discovery::{
    AgentService, CatalogService, CheckDefinition, CheckStatus, HealthCheck, Node, ServiceEntry,
    ServiceRegistration,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// How the registry presents itself.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub node_name: String,
    pub datacenter: String,
    /// Address reported for the node (and for services that register without one).
    pub node_address: String,
    /// How often instances with long-critical checks are looked for.
    pub reap_interval: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            node_name: "plugworker-dev".into(),
            datacenter: "dc1".into(),
            node_address: "127.0.0.1".into(),
            reap_interval: Duration::from_secs(1),
        }
    }
}

/// Everything the HTTP handlers and check tasks share.
pub(crate) struct Shared {
    pub config: RegistryConfig,
    store: Mutex<Store>,
    /// The global index after every change.
    pub changes: watch::Sender<u64>,
    /// Flips to `true` once when the registry stops; background tasks watch it.
    pub stopped: watch::Sender<bool>,
    pub http: reqwest::Client,
}

impl Shared {
    pub fn new(config: RegistryConfig) -> Arc<Self> {
        let mut store = Store::default();
        store.insert_consul_service(&config);
        Arc::new(Self {
            config,
            changes: watch::Sender::new(store.index),
            store: Mutex::new(store),
            stopped: watch::Sender::new(false),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("static reqwest configuration is valid"),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves maps that are still individually valid.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces a change; call after releasing the lock.
    pub fn notify(&self, index: u64) {
        self.changes.send_replace(index);
    }

    pub fn stop(&self) {
        self.stopped.send_replace(true);
        let mut store = self.lock();
        for check in store.checks.values_mut() {
            if let Some(probe) = check.probe.take() {
                probe.abort();
            }
        }
    }

    pub fn node(&self) -> Node {
        Node {
            id: node_id(&self.config.node_name),
            node: self.config.node_name.clone(),
            address: self.config.node_address.clone(),
            datacenter: self.config.datacenter.clone(),
        }
    }
}

/// A stable, UUID-shaped node ID derived from the node name.
fn node_id(name: &str) -> String {
    let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
    for byte in name.bytes() {
        hash ^= byte as u128;
        hash = hash.wrapping_mul(0x0000000001000000000000000000013B);
    }
    let hex = format!("{hash:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub(crate) struct ServiceRecord {
    pub service: AgentService,
    pub check_ids: Vec<String>,
}

pub(crate) struct CheckRecord {
    pub check: HealthCheck,
    pub definition: CheckDefinition,
    /// When the check last turned critical, for `DeregisterCriticalServiceAfter`.
    pub critical_since: Option<Instant>,
    /// For TTL checks: when the check turns critical unless refreshed.
    pub ttl_expires: Option<Instant>,
    pub probe: Option<AbortHandle>,
}

/// A check the caller must start probing (after releasing the lock).
pub(crate) struct NewCheck {
    pub check_id: String,
    pub definition: CheckDefinition,
}

#[derive(Default)]
pub(crate) struct Store {
    /// Global, monotonically increasing index (Consul's Raft index).
    pub index: u64,
    /// Index of the last registration or deregistration (`/v1/catalog/services`).
    services_index: u64,
    /// Index of the last change touching a service name, kept after it is gone so
    /// watchers of that name see the removal.
    name_index: HashMap<String, u64>,
    services: BTreeMap<String, ServiceRecord>,
    pub checks: BTreeMap<String, CheckRecord>,
}

impl Store {
    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// Consul servers list themselves as the `consul` service; so does the registry.
    fn insert_consul_service(&mut self, config: &RegistryConfig) {
        let index = self.bump();
        self.services.insert(
            "consul".into(),
            ServiceRecord {
                service: AgentService {
                    id: "consul".into(),
                    service: "consul".into(),
                    port: 8300,
                    address: config.node_address.clone(),
                    datacenter: config.datacenter.clone(),
                    create_index: index,
                    modify_index: index,
                    ..Default::default()
                },
                check_ids: Vec::new(),
            },
        );
        self.services_index = index;
        self.name_index.insert("consul".into(), index);
    }

    /// Registers (or replaces) a service. Returns the new index and the checks to probe.
    pub fn register(
        &mut self,
        registration: ServiceRegistration,
        config: &RegistryConfig,
    ) -> Result<(u64, Vec<NewCheck>), String> {
        validate(&registration)?;
        let id = if registration.id.is_empty() {
            registration.name.clone()
        } else {
            registration.id.clone()
        };
        let index = self.bump();

        let mut definitions: Vec<(String, CheckDefinition)> = Vec::new();
        if let Some(check) = registration.check.clone() {
            let check_id = non_empty_or(&check.check_id, || format!("service:{id}"));
            definitions.push((check_id, check));
        }
        for (n, check) in registration.checks.iter().enumerate() {
            let check_id = non_empty_or(&check.check_id, || format!("service:{id}:{}", n + 1));
            definitions.push((check_id, check.clone()));
        }

        let previous = self.services.remove(&id);
        let create_index = previous
            .as_ref()
            .map(|p| p.service.create_index)
            .unwrap_or(index);
        let mut kept_status: HashMap<String, (CheckStatus, String, Option<Instant>)> =
            HashMap::new();
        if let Some(previous) = &previous {
            self.name_index
                .insert(previous.service.service.clone(), index);
            for check_id in &previous.check_ids {
                if let Some(mut old) = self.checks.remove(check_id) {
                    if let Some(probe) = old.probe.take() {
                        probe.abort();
                    }
                    kept_status.insert(
                        check_id.clone(),
                        (old.check.status, old.check.output, old.critical_since),
                    );
                }
            }
        }

        let service = AgentService {
            id: id.clone(),
            service: registration.name.clone(),
            tags: registration.tags.clone(),
            meta: registration.meta.clone(),
            port: registration.port,
            address: registration.address.clone(),
            datacenter: config.datacenter.clone(),
            create_index,
            modify_index: index,
        };

        let mut new_checks = Vec::new();
        let mut check_ids = Vec::new();
        let now = Instant::now();
        for (check_id, definition) in definitions {
            // Re-registering keeps a check's state, so a runner that re-registers after an
            // agent hiccup does not flap to critical.
            let (status, output, critical_since) = match kept_status.remove(&check_id) {
                Some(kept) => kept,
                None => {
                    let status = definition.status.unwrap_or(CheckStatus::Critical);
                    let since = (status == CheckStatus::Critical).then_some(now);
                    (status, String::new(), since)
                }
            };
            let check = HealthCheck {
                node: config.node_name.clone(),
                check_id: check_id.clone(),
                name: non_empty_or(&definition.name, || {
                    format!("Service '{}' check", registration.name)
                }),
                status,
                notes: definition.notes.clone(),
                output,
                service_id: id.clone(),
                service_name: registration.name.clone(),
                service_tags: registration.tags.clone(),
                check_type: check_type(&definition).to_string(),
                create_index: index,
                modify_index: index,
            };
            let ttl_expires = definition.ttl.map(|ttl| now + ttl);
            self.checks.insert(
                check_id.clone(),
                CheckRecord {
                    check,
                    definition: definition.clone(),
                    critical_since,
                    ttl_expires,
                    probe: None,
                },
            );
            check_ids.push(check_id.clone());
            new_checks.push(NewCheck {
                check_id,
                definition,
            });
        }

        self.name_index.insert(registration.name.clone(), index);
        self.services_index = index;
        self.services
            .insert(id, ServiceRecord { service, check_ids });
        Ok((index, new_checks))
    }

    /// Removes a service and its checks. Returns the new index, or `None` if unknown.
    pub fn deregister(&mut self, id: &str) -> Option<u64> {
        let record = self.services.remove(id)?;
        for check_id in &record.check_ids {
            if let Some(mut check) = self.checks.remove(check_id)
                && let Some(probe) = check.probe.take()
            {
                probe.abort();
            }
        }
        let index = self.bump();
        self.services_index = index;
        self.name_index.insert(record.service.service, index);
        Some(index)
    }

    /// Sets a check's state. Returns the new index if anything changed that readers see,
    /// `Ok(None)` if nothing did, or an error if the check is unknown.
    ///
    /// Like Consul, an output-only change is not propagated (Consul defers those by its
    /// `check_update_interval`), so repeated probes do not wake every watcher.
    pub fn set_check_status(
        &mut self,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<Option<u64>, String> {
        let now = Instant::now();
        let Some(record) = self.checks.get_mut(check_id) else {
            return Err(format!("Unknown check ID \"{check_id}\""));
        };
        if let Some(ttl) = record.definition.ttl {
            record.ttl_expires = Some(now + ttl);
        }
        if record.check.status == status {
            return Ok(None);
        }
        record.critical_since = match status {
            CheckStatus::Critical => record.critical_since.or(Some(now)),
            _ => None,
        };
        record.check.status = status;
        record.check.output = output.to_string();
        let service_name = record.check.service_name.clone();
        let index = self.bump();
        if let Some(record) = self.checks.get_mut(check_id) {
            record.check.modify_index = index;
        }
        self.name_index.insert(service_name, index);
        Ok(Some(index))
    }

    /// Service IDs whose check has been critical for longer than its
    /// `DeregisterCriticalServiceAfter`.
    pub fn services_to_reap(&self, now: Instant) -> Vec<String> {
        let mut ids = BTreeSet::new();
        for record in self.checks.values() {
            if let (Some(after), Some(since)) = (
                record.definition.deregister_critical_service_after,
                record.critical_since,
            ) && record.check.status == CheckStatus::Critical
                && now.duration_since(since) >= after
            {
                ids.insert(record.check.service_id.clone());
            }
        }
        ids.into_iter().collect()
    }

    /// TTL checks whose deadline passed while not already critical.
    pub fn expired_ttl_checks(&self, now: Instant) -> Vec<String> {
        self.checks
            .iter()
            .filter(|(_, r)| {
                r.check.status != CheckStatus::Critical && r.ttl_expires.is_some_and(|t| t <= now)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    // ---- reads: each returns its value and the index a blocking query compares ----

    fn name_index(&self, name: &str) -> u64 {
        self.name_index
            .get(name)
            .copied()
            .unwrap_or(self.services_index)
            .max(1)
    }

    pub fn catalog_services(&self) -> (BTreeMap<String, Vec<String>>, u64) {
        let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for record in self.services.values() {
            services
                .entry(record.service.service.clone())
                .or_default()
                .extend(record.service.tags.iter().cloned());
        }
        let view = services
            .into_iter()
            .map(|(name, tags)| (name, tags.into_iter().collect()))
            .collect();
        (view, self.services_index.max(1))
    }

    fn instances<'a>(
        &'a self,
        name: &'a str,
        tags: &'a [String],
    ) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.services.values().filter(move |r| {
            r.service.service == name && tags.iter().all(|t| r.service.tags.contains(t))
        })
    }

    pub fn catalog_service(
        &self,
        name: &str,
        tags: &[String],
        node: &Node,
    ) -> (Vec<CatalogService>, u64) {
        let view = self
            .instances(name, tags)
            .map(|r| CatalogService {
                id: node.id.clone(),
                node: node.node.clone(),
                address: node.address.clone(),
                datacenter: node.datacenter.clone(),
                service_id: r.service.id.clone(),
                service_name: r.service.service.clone(),
                service_tags: r.service.tags.clone(),
                service_address: r.service.address.clone(),
                service_port: r.service.port,
                service_meta: r.service.meta.clone(),
                create_index: r.service.create_index,
                modify_index: r.service.modify_index,
            })
            .collect();
        (view, self.name_index(name))
    }

    pub fn health_service(
        &self,
        name: &str,
        tags: &[String],
        passing_only: bool,
        node: &Node,
    ) -> (Vec<ServiceEntry>, u64) {
        let node_check = HealthCheck {
            node: node.node.clone(),
            check_id: "serfHealth".into(),
            name: "Serf Health Status".into(),
            status: CheckStatus::Passing,
            notes: String::new(),
            output: "Agent alive and reachable".into(),
            ..Default::default()
        };
        let view = self
            .instances(name, tags)
            .map(|r| {
                let mut checks = vec![node_check.clone()];
                checks.extend(
                    r.check_ids
                        .iter()
                        .filter_map(|id| self.checks.get(id))
                        .map(|c| c.check.clone()),
                );
                ServiceEntry {
                    node: node.clone(),
                    service: r.service.clone(),
                    checks,
                }
            })
            .filter(|entry| !passing_only || entry.aggregated_status() == CheckStatus::Passing)
            .collect();
        (view, self.name_index(name))
    }

    pub fn agent_services(&self) -> BTreeMap<String, AgentService> {
        self.services
            .iter()
            .filter(|(id, _)| id.as_str() != "consul")
            .map(|(id, r)| (id.clone(), r.service.clone()))
            .collect()
    }

    pub fn agent_service(&self, id: &str) -> Option<AgentService> {
        self.services
            .get(id)
            .filter(|_| id != "consul")
            .map(|r| r.service.clone())
    }

    pub fn agent_checks(&self) -> BTreeMap<String, HealthCheck> {
        self.checks
            .iter()
            .map(|(id, r)| (id.clone(), r.check.clone()))
            .collect()
    }
}

fn non_empty_or(value: &str, default: impl FnOnce() -> String) -> String {
    if value.is_empty() {
        default()
    } else {
        value.to_string()
    }
}

pub(crate) fn check_type(definition: &CheckDefinition) -> &'static str {
    if definition.grpc.is_some() {
        "grpc"
    } else if definition.http.is_some() {
        "http"
    } else if definition.tcp.is_some() {
        "tcp"
    } else if definition.ttl.is_some() {
        "ttl"
    } else {
        ""
    }
}

/// The validation a Consul agent applies to a registration, with its messages.
fn validate(registration: &ServiceRegistration) -> Result<(), String> {
    if registration.name.is_empty() {
        return Err("Missing service name".into());
    }
    if registration.meta.len() > 64 {
        return Err(
            "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs"
                .into(),
        );
    }
    for (key, value) in &registration.meta {
        let key_ok = !key.is_empty()
            && key.len() <= 128
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !key_ok {
            return Err(format!(
                "Invalid Service Meta: Key contains invalid characters: {key:?}"
            ));
        }
        if key.starts_with("consul-") {
            return Err(format!(
                "Invalid Service Meta: Key prefix 'consul-' is reserved for internal use: {key:?}"
            ));
        }
        if value.len() > 512 {
            return Err(format!(
                "Invalid Service Meta: Value is too long (limit: 512 characters): {key:?}"
            ));
        }
    }
    let checks = registration.check.iter().chain(registration.checks.iter());
    for check in checks {
        let kinds = [
            check.grpc.is_some(),
            check.http.is_some(),
            check.tcp.is_some(),
            check.ttl.is_some(),
        ];
        match kinds.iter().filter(|k| **k).count() {
            0 => return Err("Invalid check: TTL, HTTP, TCP or GRPC must be set (the embedded registry runs no scripts)".into()),
            1 => {}
            _ => return Err("Invalid check: only one of TTL, HTTP, TCP or GRPC may be set".into()),
        }
        if check.ttl.is_none() && check.interval.is_none_or(|i| i.is_zero()) {
            return Err("Invalid check: Interval must be > 0 for HTTP, TCP and GRPC checks".into());
        }
    }
    Ok(())
}
