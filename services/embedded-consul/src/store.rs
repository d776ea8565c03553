//! The registry's state: the node, services, checks, the KV store, and the indexes
//! blocking queries wait on.
//!
//! One mutex guards everything; every critical section is a few map operations, and
//! check probes run outside it. A `watch` channel carries the global index so blocked
//! readers wake on any change and re-check the index of the view they asked for.
//!
//! Indexes follow Consul's state store (`agent/consul/state/catalog.go`, `kvs.go`):
//! one global, Raft-like counter; per-table maxima (nodes, services, checks, KV); a
//! per-service-name index moved by that service's instances and checks; and the
//! "last extinction" index that a service with no instances reports.

use crate::decode::{CheckType, Locality, ServiceAddress, ServiceDefinition, Weights};
use plugworker_consul_client::duration::Nanos;
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
    /// Lifetime of Connect leaf certificates (Consul's `LeafCertTTL`, default 72 h).
    pub connect_leaf_ttl: Duration,
    /// Consul's `default_intention_policy`: what authorize answers when no intention
    /// matches. `None` follows the ACL default policy, which allows while ACLs are off.
    pub default_intention_policy: Option<crate::connect::Action>,
    /// ACLs on (`acl.enabled`); off by default, like `consul agent -dev`.
    pub acl_enabled: bool,
    /// `acl.default_policy`: what tokens may do where no rule applies.
    pub acl_default_policy: crate::connect::Action,
    /// `acl.tokens.initial_management`: a management token's secret that exists from the
    /// start. When set, `/v1/acl/bootstrap` is closed: this token is the bootstrap.
    pub acl_bootstrap_token: Option<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            node_name: "plugworker-dev".into(),
            datacenter: "dc1".into(),
            node_address: "127.0.0.1".into(),
            reap_interval: Duration::from_secs(1),
            connect_leaf_ttl: crate::connect::DEFAULT_LEAF_TTL,
            default_intention_policy: None,
            acl_enabled: false,
            acl_default_policy: crate::connect::Action::Allow,
            acl_bootstrap_token: None,
        }
    }
}

/// Everything the HTTP handlers and check tasks share.
pub(crate) struct Shared {
    pub config: RegistryConfig,
    pub node_id: String,
    store: Mutex<Store>,
    /// The Connect CA and intentions; lock after `store` when both are needed.
    mesh: Mutex<crate::connect::Mesh>,
    /// Policies and tokens.
    acl: Mutex<crate::acl::Acl>,
    /// The global index after every change.
    pub changes: watch::Sender<u64>,
    /// Flips to `true` once when the registry stops; background tasks watch it.
    pub stopped: watch::Sender<bool>,
}

impl Shared {
    pub fn new(config: RegistryConfig) -> Arc<Self> {
        let mut store = Store::default();
        store.register_node_and_consul_service();
        store.index += 1;
        let mesh =
            crate::connect::Mesh::new(&config.datacenter, config.connect_leaf_ttl, store.index)
                .expect("generating an EC P-256 root certificate cannot fail");
        let created = crate::connect::go_time(time::OffsetDateTime::now_utc());
        let mut acl = crate::acl::Acl::new(
            config.acl_enabled,
            config.acl_default_policy == crate::connect::Action::Allow,
            store.index,
            &created,
        );
        if let Some(secret) = config
            .acl_bootstrap_token
            .as_ref()
            .filter(|s| !s.is_empty())
        {
            acl.add_initial_management(secret, store.index, &created);
        }
        Arc::new(Self {
            node_id: node_id(&config.node_name),
            mesh: Mutex::new(mesh),
            acl: Mutex::new(acl),
            config,
            changes: watch::Sender::new(store.index),
            store: Mutex::new(store),
            stopped: watch::Sender::new(false),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves maps that are still individually valid.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn acl(&self) -> MutexGuard<'_, crate::acl::Acl> {
        self.acl.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mesh(&self) -> MutexGuard<'_, crate::connect::Mesh> {
        self.mesh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next global index for a change outside the catalog (CA, intentions).
    pub fn next_index(&self) -> u64 {
        let mut store = self.lock();
        store.index += 1;
        store.index
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
}

/// A stable, UUID-shaped node ID derived from the node name.
fn node_id(name: &str) -> String {
    let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
    for byte in name.bytes() {
        hash ^= byte as u128;
        hash = hash.wrapping_mul(0x0000000001000000000000000000013B);
    }
    crate::connect::uuid_text(hash.to_be_bytes())
}

/// A check's state (`maintenance` exists in Consul only for maintenance mode, which the
/// registry does not implement, and is refused everywhere a client can set a status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    /// Consul's `structs.ValidStatus`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

/// A registered service instance (Consul's `structs.NodeService`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Service {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub meta: Option<BTreeMap<String, String>>,
    pub port: i64,
    pub socket_path: String,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub locality: Option<Locality>,
    /// `Connect: {"Native": true}`: the instance speaks Connect mTLS itself.
    pub connect_native: bool,
}

pub(crate) struct ServiceRecord {
    pub service: Service,
    /// False for the catalog-only `consul` service, which agent endpoints do not list.
    pub local: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

pub(crate) struct CheckRecord {
    pub check_id: String,
    pub name: String,
    pub notes: String,
    pub status: Status,
    pub output: String,
    pub service_id: String,
    pub definition: CheckType,
    pub create_index: u64,
    pub modify_index: u64,
    /// When the check last turned critical, for `DeregisterCriticalServiceAfter`.
    pub critical_since: Option<Instant>,
    /// For TTL checks: when the check turns critical unless refreshed.
    pub ttl_expires: Option<Instant>,
    /// For TTL checks: the last output, quoted when the TTL expires.
    pub last_ttl_output: String,
    pub probe: Option<AbortHandle>,
}

/// A check the caller must start probing (after releasing the lock).
pub(crate) struct NewCheck {
    pub check_id: String,
    pub definition: CheckType,
}

#[derive(Clone, Debug)]
pub(crate) struct KvEntry {
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Default)]
pub(crate) struct Store {
    /// Global, monotonically increasing index (Consul's Raft index).
    pub index: u64,
    pub node_index: u64,
    services_index: u64,
    checks_index: u64,
    /// Index of the last change touching each service name that has instances.
    name_index: HashMap<String, u64>,
    /// Index at which some service name last lost its last instance: what Consul
    /// reports for a service that has none.
    extinction_index: u64,
    services: BTreeMap<String, ServiceRecord>,
    pub checks: BTreeMap<String, CheckRecord>,
    pub(crate) kv: BTreeMap<String, KvEntry>,
    /// Deleted keys and when, so prefix reads see removals (Consul's graveyard).
    pub(crate) kv_tombstones: BTreeMap<String, u64>,
    pub(crate) kv_index: u64,
}

/// What [`Store::register`] refuses after decoding and validation.
pub(crate) enum RegisterError {
    /// Not representable by the embedded registry (Consul would accept it).
    Unsupported(String),
    /// Consul answers these with a 500 (e.g. script checks with scripts disabled).
    Internal(String),
}

/// Checks the registry can run: Consul's default agent refuses scripts from the API,
/// and the rest need facilities the embedded registry does not have.
fn supported(check: &CheckType) -> Result<(), RegisterError> {
    if !check.script_args.is_empty() {
        return Err(RegisterError::Internal(
            "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true".into(),
        ));
    }
    let unsupported = match check.kind() {
        "udp" => Some("UDP"),
        "alias" => Some("alias"),
        "h2ping" => Some("H2PING"),
        "os_service" => Some("OSService"),
        _ => None,
    };
    if let Some(kind) = unsupported {
        return Err(RegisterError::Unsupported(format!(
            "{kind} checks are not supported by the embedded registry"
        )));
    }
    if !check.tls_server_name.is_empty() {
        return Err(RegisterError::Unsupported(
            "TLSServerName is not supported by the embedded registry".into(),
        ));
    }
    Ok(())
}

impl Store {
    fn next(&self) -> u64 {
        self.index + 1
    }

    /// The node, and the `consul` service every Consul server registers for itself.
    fn register_node_and_consul_service(&mut self) {
        self.index += 1;
        self.node_index = self.index;
        self.index += 1;
        let index = self.index;
        self.services.insert(
            "consul".into(),
            ServiceRecord {
                service: Service {
                    id: "consul".into(),
                    name: "consul".into(),
                    tags: Vec::new(),
                    address: String::new(),
                    tagged_addresses: BTreeMap::new(),
                    meta: Some(BTreeMap::from([
                        ("raft_version".into(), "3".into()),
                        ("serf_protocol_current".into(), "2".into()),
                        ("serf_protocol_max".into(), "5".into()),
                        ("serf_protocol_min".into(), "1".into()),
                        ("version".into(), crate::CONSUL_API_VERSION.into()),
                    ])),
                    port: 8300,
                    socket_path: String::new(),
                    weights: Weights {
                        passing: 1,
                        warning: 1,
                    },
                    enable_tag_override: false,
                    locality: None,
                    connect_native: false,
                },
                local: false,
                create_index: index,
                modify_index: index,
            },
        );
        self.services_index = index;
        self.name_index.insert("consul".into(), index);
    }

    /// Registers (or updates) a service from a validated definition, as the agent's
    /// `AddService` does. Returns the index if anything changed and the checks to probe.
    pub fn register(
        &mut self,
        def: ServiceDefinition,
        replace_existing_checks: bool,
    ) -> Result<(Option<u64>, Vec<NewCheck>), RegisterError> {
        let mut check_types: Vec<CheckType> = Vec::new();
        if !def.check.is_empty() {
            check_types.push(def.check.clone());
        }
        check_types.extend(def.checks.iter().cloned());
        for check in &check_types {
            supported(check)?;
        }
        if def.kind.is_empty() && def.connect_requested {
            return Err(RegisterError::Unsupported(
                "Connect proxies and sidecars (Proxy, Connect.SidecarService) are not supported by the embedded registry; Connect-native services are".into(),
            ));
        }
        if !def.kind.is_empty() {
            return Err(RegisterError::Unsupported(format!(
                "service kind {:?} is not supported by the embedded registry",
                def.kind
            )));
        }

        let id = if def.id.is_empty() {
            def.name.clone()
        } else {
            def.id.clone()
        };
        // Consul fills in lan/wan tagged addresses from an IP service address.
        let mut tagged_addresses = def.tagged_addresses.clone();
        if let Ok(ip) = def.address.parse::<std::net::IpAddr>() {
            let (lan, wan) = if ip.is_ipv4() {
                ("lan_ipv4", "wan_ipv4")
            } else {
                ("lan_ipv6", "wan_ipv6")
            };
            for key in [lan, wan] {
                tagged_addresses
                    .entry(key.to_string())
                    .or_insert_with(|| ServiceAddress {
                        address: def.address.clone(),
                        port: def.port,
                    });
            }
        }
        let service = Service {
            id: id.clone(),
            name: def.name.clone(),
            tags: def.tags.clone(),
            address: def.address.clone(),
            tagged_addresses,
            meta: def.meta.clone(),
            port: def.port,
            socket_path: def.socket_path.clone(),
            weights: def.weights.unwrap_or(Weights {
                passing: 1,
                warning: 1,
            }),
            enable_tag_override: def.enable_tag_override,
            locality: def.locality.clone(),
            connect_native: def.connect_native,
        };

        let index = self.next();
        let mut changed = false;
        let mut touched_names: BTreeSet<String> = BTreeSet::new();

        match self.services.get_mut(&id) {
            Some(existing) if existing.service == service => {}
            Some(existing) => {
                if existing.service.name != service.name {
                    touched_names.insert(existing.service.name.clone());
                }
                existing.service = service.clone();
                existing.modify_index = index;
                existing.local = true;
                self.services_index = index;
                touched_names.insert(service.name.clone());
                changed = true;
            }
            None => {
                self.services.insert(
                    id.clone(),
                    ServiceRecord {
                        service: service.clone(),
                        local: true,
                        create_index: index,
                        modify_index: index,
                    },
                );
                self.services_index = index;
                touched_names.insert(service.name.clone());
                changed = true;
            }
        }

        // Consul's default check IDs: `service:<id>` for a service's only check, and
        // `service:<id>:<n>` (1-based, `Check` before `Checks`) when it has several.
        let several = check_types.len() > 1;
        let now = Instant::now();
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        let mut new_checks = Vec::new();
        for (n, definition) in check_types.into_iter().enumerate() {
            let check_id = if definition.check_id.is_empty() {
                if several {
                    format!("service:{id}:{}", n + 1)
                } else {
                    format!("service:{id}")
                }
            } else {
                definition.check_id.clone()
            };
            wanted.insert(check_id.clone());
            let name = if definition.name.is_empty() {
                format!("Service '{}' check", service.name)
            } else {
                definition.name.clone()
            };
            let ttl_expires = (definition.ttl > 0).then(|| now + nanos(definition.ttl));
            match self.checks.get_mut(&check_id) {
                // Re-registering keeps a check's status and output (Consul restores them
                // from its snapshot), so a runner that re-registers does not flap.
                Some(existing) => {
                    if let Some(probe) = existing.probe.take() {
                        probe.abort();
                    }
                    let same = existing.name == name
                        && existing.notes == definition.notes
                        && existing.service_id == id
                        && existing.definition == definition;
                    if !same {
                        existing.name = name;
                        existing.notes = definition.notes.clone();
                        existing.service_id = id.clone();
                        existing.definition = definition.clone();
                        existing.modify_index = index;
                        self.checks_index = index;
                        touched_names.insert(service.name.clone());
                        changed = true;
                    }
                    existing.ttl_expires = ttl_expires;
                }
                None => {
                    let status = Status::parse(&definition.status).unwrap_or(Status::Critical);
                    self.checks.insert(
                        check_id.clone(),
                        CheckRecord {
                            check_id: check_id.clone(),
                            name,
                            notes: definition.notes.clone(),
                            status,
                            output: String::new(),
                            service_id: id.clone(),
                            definition: definition.clone(),
                            create_index: index,
                            modify_index: index,
                            critical_since: (status == Status::Critical).then_some(now),
                            ttl_expires,
                            last_ttl_output: String::new(),
                            probe: None,
                        },
                    );
                    self.checks_index = index;
                    touched_names.insert(service.name.clone());
                    changed = true;
                }
            }
            new_checks.push(NewCheck {
                check_id,
                definition,
            });
        }
        if replace_existing_checks {
            let stale: Vec<String> = self
                .checks
                .values()
                .filter(|c| c.service_id == id && !wanted.contains(&c.check_id))
                .map(|c| c.check_id.clone())
                .collect();
            for check_id in stale {
                if let Some(mut check) = self.checks.remove(&check_id)
                    && let Some(probe) = check.probe.take()
                {
                    probe.abort();
                }
                self.checks_index = index;
                touched_names.insert(service.name.clone());
                changed = true;
            }
        }

        if !changed {
            return Ok((None, new_checks));
        }
        self.index = index;
        for name in touched_names {
            self.touch_name(&name, index);
        }
        Ok((Some(index), new_checks))
    }

    /// Records a change to `name`'s instances or checks at `index`.
    fn touch_name(&mut self, name: &str, index: u64) {
        if self.services.values().any(|r| r.service.name == name) {
            self.name_index.insert(name.to_string(), index);
        } else if self.name_index.remove(name).is_some() {
            self.extinction_index = index;
        }
    }

    /// Removes a local service and its checks. Returns the new index, or `None` if unknown.
    pub fn deregister(&mut self, id: &str) -> Option<u64> {
        if !self.services.get(id).is_some_and(|r| r.local) {
            return None;
        }
        let record = self.services.remove(id)?;
        let index = self.next();
        self.index = index;
        let doomed: Vec<String> = self
            .checks
            .values()
            .filter(|c| c.service_id == id)
            .map(|c| c.check_id.clone())
            .collect();
        for check_id in doomed {
            if let Some(mut check) = self.checks.remove(&check_id)
                && let Some(probe) = check.probe.take()
            {
                probe.abort();
            }
            self.checks_index = index;
        }
        self.services_index = index;
        self.touch_name(&record.service.name, index);
        Some(index)
    }

    /// A TTL check's heartbeat or update (`/v1/agent/check/{pass,warn,fail,update}`).
    pub fn update_ttl_check(
        &mut self,
        check_id: &str,
        status: Status,
        output: &str,
    ) -> Result<Option<u64>, TtlUpdateError> {
        let record = self
            .checks
            .get_mut(check_id)
            .ok_or(TtlUpdateError::Unknown)?;
        if record.definition.ttl <= 0 {
            return Err(TtlUpdateError::NotTtl);
        }
        let output = truncate_output(output, record.definition.output_max_size);
        record.ttl_expires = Some(Instant::now() + nanos(record.definition.ttl));
        record.last_ttl_output = output.clone();
        Ok(self.set_check_status(check_id, status, &output))
    }

    /// Sets a check's state, as the agent's local state does. Returns the new index if
    /// readers of the catalog must be woken.
    ///
    /// The output always updates. Like Consul, which syncs output-only changes to the
    /// catalog only every `check_update_interval`, an output-only change does not move
    /// any index, so a probe repeating the same verdict does not wake every watcher.
    pub fn set_check_status(
        &mut self,
        check_id: &str,
        status: Status,
        output: &str,
    ) -> Option<u64> {
        let index = self.next();
        let record = self.checks.get_mut(check_id)?;
        if status == Status::Critical {
            record.critical_since.get_or_insert_with(Instant::now);
        } else {
            record.critical_since = None;
        }
        if record.status == status {
            record.output = output.to_string();
            return None;
        }
        record.status = status;
        record.output = output.to_string();
        record.modify_index = index;
        let service_id = record.service_id.clone();
        self.index = index;
        self.checks_index = index;
        if let Some(name) = self
            .services
            .get(&service_id)
            .map(|s| s.service.name.clone())
        {
            self.touch_name(&name, index);
        }
        Some(index)
    }

    /// Service IDs whose check has been critical for longer than its
    /// `DeregisterCriticalServiceAfter`.
    pub fn services_to_reap(&self, now: Instant) -> Vec<String> {
        let mut ids = BTreeSet::new();
        for record in self.checks.values() {
            let after = record.definition.deregister_critical_service_after;
            if let Some(since) = record.critical_since
                && after > 0
                && record.status == Status::Critical
                && now.duration_since(since) >= nanos(after)
            {
                ids.insert(record.service_id.clone());
            }
        }
        ids.into_iter().collect()
    }

    /// TTL checks whose deadline passed; each fires once until the next update.
    pub fn expire_ttl_checks(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut expired = Vec::new();
        for record in self.checks.values_mut() {
            if record.ttl_expires.is_some_and(|t| t <= now) {
                record.ttl_expires = None;
                expired.push((
                    record.check_id.clone(),
                    format!(
                        "TTL expired (last output before timeout follows): {}",
                        record.last_ttl_output
                    ),
                ));
            }
        }
        expired
    }

    // ---- reads ----

    pub fn services(&self) -> impl Iterator<Item = &ServiceRecord> {
        self.services.values()
    }

    pub fn service(&self, id: &str) -> Option<&ServiceRecord> {
        self.services.get(id)
    }

    pub fn checks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a CheckRecord> {
        self.checks
            .values()
            .filter(move |c| c.service_id == service_id)
    }

    /// The catalog's `max(nodes, services)` index (`/v1/catalog/services`, node views).
    pub fn catalog_index(&self) -> u64 {
        self.node_index.max(self.services_index).max(1)
    }

    pub fn checks_index(&self) -> u64 {
        self.checks_index.max(self.node_index).max(1)
    }

    /// The index of one service name's catalog and health views.
    pub fn name_index(&self, name: &str) -> u64 {
        match self.name_index.get(name) {
            Some(index) => *index,
            None if self.extinction_index > 0 => self.extinction_index,
            None => self.catalog_index(),
        }
        .max(1)
    }

    /// Instances of `name` carrying every tag in `tags`, compared case-insensitively as
    /// Consul's `serviceTagFilter` does.
    pub fn instances<'a>(
        &'a self,
        name: &'a str,
        tags: &'a [String],
    ) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.services.values().filter(move |r| {
            r.service.name == name
                && tags.iter().all(|wanted| {
                    r.service
                        .tags
                        .iter()
                        .any(|tag| tag.to_lowercase() == wanted.to_lowercase())
                })
        })
    }

    pub fn local_check_count(&self) -> usize {
        self.checks.len()
    }
}

/// Why a TTL update was refused.
pub(crate) enum TtlUpdateError {
    Unknown,
    NotTtl,
}

/// Consul's default check output limit (`checks.DefaultBufSize`).
pub(crate) const DEFAULT_OUTPUT_MAX_SIZE: usize = 4096;

/// Truncates like Consul's TTL and update endpoints: `<first n bytes> ... (captured n of m bytes)`.
pub(crate) fn truncate_output(output: &str, max_size: i64) -> String {
    let max = if max_size > 0 {
        max_size as usize
    } else {
        DEFAULT_OUTPUT_MAX_SIZE
    };
    if output.len() <= max {
        return output.to_string();
    }
    let mut cut = max;
    while !output.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{} ... (captured {max} of {} bytes)",
        &output[..cut],
        output.len()
    )
}

pub(crate) fn nanos(value: Nanos) -> Duration {
    Duration::from_nanos(value.max(0) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_id_is_stable() {
        // The value the registry has always derived for the default node name: clients
        // may have stored it, so it must not change.
        assert_eq!(
            super::node_id("plugworker-dev"),
            "cde88318-4004-b529-687d-03520b178c71"
        );
    }
}
