//! The JSON a Consul agent answers, field for field: `structs.Node`, `structs.NodeService`
//! (health entries, catalog node views), `structs.ServiceNode` (catalog service views),
//! `api.AgentService` (agent views), `structs.HealthCheck`, `serf.Member`, KV entries.
//!
//! Where Consul distinguishes "absent" from "empty" the registry does too: a service
//! registered without meta is `"Meta": null` in catalog and health views (and `{}` in agent
//! views, which Consul fills in), and tags are always a list.

use crate::go;
use crate::store::{CheckRecord, KvEntry, ServiceRecord, Shared, Store};
use serde_json::{Map, Value, json};

pub(crate) fn node(shared: &Shared, store: &Store) -> Value {
    let address = &shared.config.node_address;
    json!({
        "ID": shared.node_id,
        "Node": shared.config.node_name,
        "Address": address,
        "Datacenter": shared.config.datacenter,
        "TaggedAddresses": {
            "lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address,
        },
        "Meta": {
            "consul-network-segment": "",
            "consul-version": crate::CONSUL_API_VERSION,
        },
        "CreateIndex": store.node_index,
        "ModifyIndex": store.node_index,
    })
}

fn tagged_addresses(record: &ServiceRecord) -> Value {
    record
        .service
        .tagged_addresses
        .iter()
        .map(|(key, a)| (key.clone(), json!({"Address": a.address, "Port": a.port})))
        .collect::<Map<_, _>>()
        .into()
}

fn weights(record: &ServiceRecord) -> Value {
    json!({"Passing": record.service.weights.passing, "Warning": record.service.weights.warning})
}

fn locality(record: &ServiceRecord) -> Value {
    match &record.service.locality {
        Some(l) => json!({"Region": l.region, "Zone": l.zone}),
        None => Value::Null,
    }
}

fn meta_or_null(record: &ServiceRecord) -> Value {
    match &record.service.meta {
        Some(meta) => json!(meta),
        None => Value::Null,
    }
}

/// An empty `structs.ConnectProxyConfig`, as Consul renders it for typical services.
fn empty_proxy() -> Value {
    json!({"Mode": "", "MeshGateway": {}, "Expose": {}})
}

/// `structs.ServiceConnect`: `{"Native": true}` for Connect-native instances, else `{}`.
fn connect(record: &ServiceRecord) -> Value {
    if record.service.connect_native {
        json!({"Native": true})
    } else {
        json!({})
    }
}

/// `structs.NodeService`: the `Service` of a health entry, and catalog node views.
pub(crate) fn node_service(record: &ServiceRecord) -> Value {
    let s = &record.service;
    let mut out = Map::new();
    out.insert("ID".into(), json!(s.id));
    out.insert("Service".into(), json!(s.name));
    out.insert("Tags".into(), json!(s.tags));
    out.insert("Address".into(), json!(s.address));
    if !s.tagged_addresses.is_empty() {
        out.insert("TaggedAddresses".into(), tagged_addresses(record));
    }
    out.insert("Meta".into(), meta_or_null(record));
    if s.port != 0 {
        out.insert("Port".into(), json!(s.port));
    }
    if !s.socket_path.is_empty() {
        out.insert("SocketPath".into(), json!(s.socket_path));
    }
    out.insert("Weights".into(), weights(record));
    out.insert("EnableTagOverride".into(), json!(s.enable_tag_override));
    if s.locality.is_some() {
        out.insert("Locality".into(), locality(record));
    }
    out.insert("Proxy".into(), empty_proxy());
    out.insert("Connect".into(), connect(record));
    out.insert("CreateIndex".into(), json!(record.create_index));
    out.insert("ModifyIndex".into(), json!(record.modify_index));
    Value::Object(out)
}

/// `api.AgentService` (`/v1/agent/services`, `/v1/agent/service/:id`). The agent's local
/// state carries no Raft indexes, so Consul omits `CreateIndex`/`ModifyIndex` here.
pub(crate) fn agent_service(shared: &Shared, record: &ServiceRecord) -> Map<String, Value> {
    let s = &record.service;
    let mut out = Map::new();
    out.insert("ID".into(), json!(s.id));
    out.insert("Service".into(), json!(s.name));
    out.insert("Tags".into(), json!(s.tags));
    out.insert("Meta".into(), json!(s.meta.clone().unwrap_or_default()));
    out.insert("Port".into(), json!(s.port));
    out.insert("Address".into(), json!(s.address));
    if !s.socket_path.is_empty() {
        out.insert("SocketPath".into(), json!(s.socket_path));
    }
    if !s.tagged_addresses.is_empty() {
        out.insert("TaggedAddresses".into(), tagged_addresses(record));
    }
    out.insert("Weights".into(), weights(record));
    out.insert("EnableTagOverride".into(), json!(s.enable_tag_override));
    out.insert("Datacenter".into(), json!(shared.config.datacenter));
    // `api.AgentService.Connect` is an omitempty pointer, set for native services.
    if s.connect_native {
        out.insert("Connect".into(), json!({"Native": true}));
    }
    if s.locality.is_some() {
        out.insert("Locality".into(), locality(record));
    }
    out
}

/// `structs.ServiceNode` (`/v1/catalog/service/:name`).
pub(crate) fn catalog_service(shared: &Shared, store: &Store, record: &ServiceRecord) -> Value {
    let node = node(shared, store);
    let s = &record.service;
    let mut out = Map::new();
    out.insert("ID".into(), node["ID"].clone());
    out.insert("Node".into(), node["Node"].clone());
    out.insert("Address".into(), node["Address"].clone());
    out.insert("Datacenter".into(), node["Datacenter"].clone());
    out.insert("TaggedAddresses".into(), node["TaggedAddresses"].clone());
    out.insert("NodeMeta".into(), node["Meta"].clone());
    out.insert("ServiceKind".into(), json!(""));
    out.insert("ServiceID".into(), json!(s.id));
    out.insert("ServiceName".into(), json!(s.name));
    out.insert("ServiceTags".into(), json!(s.tags));
    out.insert("ServiceAddress".into(), json!(s.address));
    if !s.tagged_addresses.is_empty() {
        out.insert("ServiceTaggedAddresses".into(), tagged_addresses(record));
    }
    out.insert("ServiceWeights".into(), weights(record));
    out.insert("ServiceMeta".into(), meta_or_null(record));
    out.insert("ServicePort".into(), json!(s.port));
    out.insert("ServiceSocketPath".into(), json!(s.socket_path));
    out.insert(
        "ServiceEnableTagOverride".into(),
        json!(s.enable_tag_override),
    );
    out.insert("ServiceProxy".into(), empty_proxy());
    out.insert("ServiceConnect".into(), connect(record));
    out.insert("ServiceLocality".into(), locality(record));
    out.insert("CreateIndex".into(), json!(record.create_index));
    out.insert("ModifyIndex".into(), json!(record.modify_index));
    Value::Object(out)
}

/// The node's own `serfHealth` check: the registry's node is always alive.
pub(crate) fn serf_health(shared: &Shared, store: &Store) -> Value {
    json!({
        "Node": shared.config.node_name,
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "Agent alive and reachable",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "Interval": "",
        "Timeout": "",
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": store.node_index,
        "ModifyIndex": store.node_index,
    })
}

/// `structs.HealthCheck`. `with_indexes` is false for the agent's local view, where
/// Consul reports zero indexes.
pub(crate) fn health_check(
    shared: &Shared,
    store: &Store,
    check: &CheckRecord,
    with_indexes: bool,
) -> Value {
    let service = store.service(&check.service_id).map(|r| &r.service);
    let duration = |nanos: i64| {
        if nanos == 0 {
            String::new()
        } else {
            plugworker_consul_client::duration::format_nanos(nanos)
        }
    };
    let (create, modify) = if with_indexes {
        (check.create_index, check.modify_index)
    } else {
        (0, 0)
    };
    json!({
        "Node": shared.config.node_name,
        "CheckID": check.check_id,
        "Name": check.name,
        "Status": check.status.as_str(),
        "Notes": check.notes,
        "Output": check.output,
        "ServiceID": check.service_id,
        "ServiceName": service.map(|s| s.name.as_str()).unwrap_or_default(),
        "ServiceTags": service.map(|s| s.tags.clone()).unwrap_or_default(),
        "Type": check.definition.kind(),
        "Interval": duration(check.definition.interval),
        "Timeout": duration(check.definition.timeout),
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": create,
        "ModifyIndex": modify,
    })
}

/// One element of `/v1/health/service/:name`: node, service, and every check that
/// applies to the instance (the node's first), with the worst status for `?passing`.
pub(crate) fn health_entry(
    shared: &Shared,
    store: &Store,
    record: &ServiceRecord,
) -> (Value, bool) {
    let mut checks = vec![serf_health(shared, store)];
    let mut passing = true;
    for check in store.checks_of(&record.service.id) {
        passing &= check.status == crate::store::Status::Passing;
        checks.push(health_check(shared, store, check, true));
    }
    (
        json!({
            "Node": node(shared, store),
            "Service": node_service(record),
            "Checks": checks,
        }),
        passing,
    )
}

/// `serf.Member`, as `/v1/agent/members` and `/v1/agent/self` render the node.
pub(crate) fn member(shared: &Shared, wan: bool) -> Value {
    let config = &shared.config;
    let (name, port) = if wan {
        (format!("{}.{}", config.node_name, config.datacenter), 8302)
    } else {
        (config.node_name.clone(), 8301)
    };
    json!({
        "Name": name,
        "Addr": config.node_address,
        "Port": port,
        "Tags": {
            "acls": if shared.acl().enabled { "1" } else { "0" },
            "build": format!("{}:plugworker", crate::CONSUL_API_VERSION),
            "dc": config.datacenter,
            "ft_fs": "1",
            "ft_si": "1",
            "id": shared.node_id,
            "port": "8300",
            "raft_vsn": "3",
            "role": "consul",
            "segment": "",
            "vsn": "2",
            "vsn_max": "3",
            "vsn_min": "2",
            "wan_join_port": "8302",
        },
        "Status": 1,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

/// A KV entry (`structs.DirEntry`): the value base64-encoded, `null` when empty.
pub(crate) fn kv_entry(key: &str, entry: &KvEntry) -> Value {
    json!({
        "LockIndex": 0,
        "Key": key,
        "Flags": entry.flags,
        "Value": if entry.value.is_empty() { Value::Null } else { json!(go::base64(&entry.value)) },
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    })
}
