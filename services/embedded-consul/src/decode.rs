//! Request bodies decoded the way a Consul agent decodes them.
//!
//! Consul decodes with Go's `encoding/json` and `DisallowUnknownFields` (`lib.DecodeJSON`):
//! a key matches a struct field by its Go name or `json` tag, exactly or ASCII
//! case-insensitively (so `name`, `Name` and `NAME` are all `Name`, but `check_id` is not
//! `CheckID`), and any other key fails the whole request with
//! `json: unknown field "<key>"`. The snake_case spellings Consul accepts are the aliases
//! its `UnmarshalJSON` methods declare (`structs.ServiceDefinition`, `structs.CheckType`);
//! they are listed here, and nothing else is.

use plugworker_consul_client::duration::{self, Nanos};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Why a body was refused; Consul answers `400 Request decode failed: <this>`.
#[derive(Debug, PartialEq)]
pub(crate) struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A struct's accepted keys: (JSON name, canonical field). Aliases map to their field.
type Fields = &'static [(&'static str, &'static str)];

const SERVICE_DEFINITION: Fields = &[
    ("Kind", "Kind"),
    ("ID", "ID"),
    ("Name", "Name"),
    ("Tags", "Tags"),
    ("Address", "Address"),
    ("TaggedAddresses", "TaggedAddresses"),
    ("tagged_addresses", "TaggedAddresses"),
    ("Meta", "Meta"),
    ("Port", "Port"),
    ("SocketPath", "SocketPath"),
    ("Check", "Check"),
    ("Checks", "Checks"),
    ("Weights", "Weights"),
    ("Token", "Token"),
    ("EnableTagOverride", "EnableTagOverride"),
    ("enable_tag_override", "EnableTagOverride"),
    ("Proxy", "Proxy"),
    ("Connect", "Connect"),
    ("Locality", "Locality"),
];

const CHECK_TYPE: Fields = &[
    ("CheckID", "CheckID"),
    ("Name", "Name"),
    ("Status", "Status"),
    ("Notes", "Notes"),
    ("ScriptArgs", "ScriptArgs"),
    ("args", "ScriptArgs"),
    ("script_args", "ScriptArgs"),
    ("HTTP", "HTTP"),
    ("H2PING", "H2PING"),
    ("H2PingUseTLS", "H2PingUseTLS"),
    ("h2ping_use_tls", "H2PingUseTLS"),
    ("Header", "Header"),
    ("Method", "Method"),
    ("Body", "Body"),
    ("DisableRedirects", "DisableRedirects"),
    ("TCP", "TCP"),
    ("UDP", "UDP"),
    ("Interval", "Interval"),
    ("AliasNode", "AliasNode"),
    ("AliasService", "AliasService"),
    ("DockerContainerID", "DockerContainerID"),
    ("docker_container_id", "DockerContainerID"),
    ("Shell", "Shell"),
    ("GRPC", "GRPC"),
    ("GRPCUseTLS", "GRPCUseTLS"),
    ("grpc_use_tls", "GRPCUseTLS"),
    ("OSService", "OSService"),
    ("TLSServerName", "TLSServerName"),
    ("tls_server_name", "TLSServerName"),
    ("TLSSkipVerify", "TLSSkipVerify"),
    ("tls_skip_verify", "TLSSkipVerify"),
    ("Timeout", "Timeout"),
    ("TTL", "TTL"),
    ("SuccessBeforePassing", "SuccessBeforePassing"),
    ("FailuresBeforeWarning", "FailuresBeforeWarning"),
    ("FailuresBeforeCritical", "FailuresBeforeCritical"),
    ("ProxyHTTP", "ProxyHTTP"),
    ("ProxyGRPC", "ProxyGRPC"),
    (
        "DeregisterCriticalServiceAfter",
        "DeregisterCriticalServiceAfter",
    ),
    (
        "deregister_critical_service_after",
        "DeregisterCriticalServiceAfter",
    ),
    ("OutputMaxSize", "OutputMaxSize"),
    // Accepted and ignored by Consul (the service's ID wins).
    ("ServiceID", "ServiceID"),
    ("service_id", "ServiceID"),
];

/// `structs.ServiceConnect`.
const SERVICE_CONNECT: Fields = &[
    ("Native", "Native"),
    ("SidecarService", "SidecarService"),
    ("sidecar_service", "SidecarService"),
    ("PeerMeta", "PeerMeta"),
];

const SERVICE_ADDRESS: Fields = &[("Address", "Address"), ("Port", "Port")];
const WEIGHTS: Fields = &[("Passing", "Passing"), ("Warning", "Warning")];
const LOCALITY: Fields = &[("Region", "Region"), ("Zone", "Zone")];
const CHECK_UPDATE: Fields = &[("Status", "Status"), ("Output", "Output")];

/// `PUT /v1/agent/service/register`'s body (`structs.ServiceDefinition`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ServiceDefinition {
    pub kind: String,
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    /// `None` when the registration carried no meta: Consul then answers `"Meta": null`
    /// in catalog and health views.
    pub meta: Option<BTreeMap<String, String>>,
    pub port: i64,
    pub socket_path: String,
    pub check: CheckType,
    pub checks: Vec<CheckType>,
    pub weights: Option<Weights>,
    pub enable_tag_override: bool,
    /// A non-empty `Proxy` block or a sidecar (unsupported, refused after decoding).
    pub connect_requested: bool,
    /// `Connect.Native`.
    pub connect_native: bool,
    pub locality: Option<Locality>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ServiceAddress {
    pub address: String,
    pub port: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Weights {
    pub passing: i64,
    pub warning: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Locality {
    pub region: String,
    pub zone: String,
}

/// A check inside a registration (`structs.CheckType`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CheckType {
    pub check_id: String,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub script_args: Vec<String>,
    pub http: String,
    pub h2ping: String,
    pub h2ping_use_tls: bool,
    pub header: BTreeMap<String, Vec<String>>,
    pub method: String,
    pub body: String,
    pub disable_redirects: bool,
    pub tcp: String,
    pub udp: String,
    pub interval: Nanos,
    pub alias_node: String,
    pub alias_service: String,
    pub docker_container_id: String,
    pub shell: String,
    pub grpc: String,
    pub grpc_use_tls: bool,
    pub os_service: String,
    pub tls_server_name: String,
    pub tls_skip_verify: bool,
    pub timeout: Nanos,
    pub ttl: Nanos,
    pub success_before_passing: i64,
    pub failures_before_warning: i64,
    pub failures_before_critical: i64,
    pub proxy_http: String,
    pub proxy_grpc: String,
    pub deregister_critical_service_after: Nanos,
    pub output_max_size: i64,
}

impl CheckType {
    /// Consul ignores a `Check` with every field at its zero value.
    pub fn is_empty(&self) -> bool {
        *self == CheckType::default()
    }

    fn is_alias(&self) -> bool {
        !self.alias_node.is_empty() || !self.alias_service.is_empty()
    }

    /// `CheckType.Validate`, with Consul's messages.
    pub fn validate(&self) -> Result<(), String> {
        let interval_check = !self.script_args.is_empty()
            || !self.http.is_empty()
            || !self.tcp.is_empty()
            || !self.udp.is_empty()
            || !self.grpc.is_empty()
            || !self.h2ping.is_empty()
            || !self.os_service.is_empty();
        if self.interval > 0 && self.ttl > 0 {
            return Err("Interval and TTL cannot both be specified".into());
        }
        if interval_check && self.interval <= 0 {
            return Err(
                "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
                    .into(),
            );
        }
        if interval_check && self.is_alias() {
            return Err("Interval cannot be set for Alias checks".into());
        }
        if self.is_alias() && self.ttl > 0 {
            return Err("TTL must be not be set for Alias checks".into());
        }
        if !interval_check && !self.is_alias() && self.ttl <= 0 {
            return Err("TTL must be > 0 for TTL checks".into());
        }
        if self.output_max_size < 0 {
            return Err("MaxOutputMaxSize must be positive".into());
        }
        if self.failures_before_warning > self.failures_before_critical {
            return Err("FailuresBeforeWarning can't be higher than FailuresBeforeCritical".into());
        }
        Ok(())
    }

    /// `CheckType.Type()`: `grpc`, `http`, `ttl`, `tcp`, ... in Consul's precedence.
    pub fn kind(&self) -> &'static str {
        let interval = self.interval > 0;
        if !self.grpc.is_empty() && interval {
            "grpc"
        } else if !self.http.is_empty() && interval {
            "http"
        } else if self.ttl > 0 {
            "ttl"
        } else if !self.tcp.is_empty() && interval {
            "tcp"
        } else if !self.udp.is_empty() && interval {
            "udp"
        } else if self.is_alias() {
            "alias"
        } else if !self.script_args.is_empty() && !self.docker_container_id.is_empty() {
            "docker"
        } else if !self.script_args.is_empty() {
            "script"
        } else if !self.h2ping.is_empty() && interval {
            "h2ping"
        } else if !self.os_service.is_empty() && interval {
            "os_service"
        } else {
            ""
        }
    }
}

/// `PUT /v1/agent/check/update/:id`'s body.
#[derive(Debug, Default)]
pub(crate) struct CheckUpdate {
    pub status: String,
    pub output: String,
}

/// Parses a body as JSON first, as Go's decoder would fail on malformed input.
fn parse(body: &[u8]) -> Result<Value, DecodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError("EOF".into()));
    }
    serde_json::from_slice(body).map_err(|e| DecodeError(e.to_string()))
}

pub(crate) fn service_definition(body: &[u8]) -> Result<ServiceDefinition, DecodeError> {
    let value = parse(body)?;
    let object = Object::new(&value, "ServiceDefinition", SERVICE_DEFINITION)?;
    let mut def = ServiceDefinition::default();
    let Some(object) = object else {
        return Ok(def);
    };
    for (field, value) in object.fields {
        let ctx = Ctx {
            structure: "ServiceDefinition",
            field,
        };
        match field {
            "Kind" => def.kind = ctx.string(value)?,
            "ID" => def.id = ctx.string(value)?,
            "Name" => def.name = ctx.string(value)?,
            "Tags" => def.tags = ctx.strings(value)?,
            "Address" => def.address = ctx.string(value)?,
            "TaggedAddresses" => {
                if let Some(map) = ctx.object(value)? {
                    for (key, value) in map {
                        let address = Object::new(value, "ServiceAddress", SERVICE_ADDRESS)?;
                        let mut parsed = ServiceAddress::default();
                        for (field, value) in address.map(|a| a.fields).unwrap_or_default() {
                            let ctx = Ctx {
                                structure: "ServiceAddress",
                                field,
                            };
                            match field {
                                "Address" => parsed.address = ctx.string(value)?,
                                _ => parsed.port = ctx.int(value)?,
                            }
                        }
                        def.tagged_addresses.insert(key.clone(), parsed);
                    }
                }
            }
            "Meta" => def.meta = ctx.string_map(value)?,
            "Port" => def.port = ctx.int(value)?,
            "SocketPath" => def.socket_path = ctx.string(value)?,
            "Check" => def.check = check_type(value)?,
            "Checks" => {
                def.checks = match value {
                    Value::Null => Vec::new(),
                    Value::Array(items) => {
                        items.iter().map(check_type).collect::<Result<_, _>>()?
                    }
                    other => return Err(ctx.type_error(other, "structs.CheckTypes")),
                }
            }
            "Weights" => {
                def.weights = match Object::new(value, "Weights", WEIGHTS)? {
                    None => None,
                    Some(object) => {
                        let mut weights = Weights {
                            passing: 0,
                            warning: 0,
                        };
                        for (field, value) in object.fields {
                            let ctx = Ctx {
                                structure: "Weights",
                                field,
                            };
                            match field {
                                "Passing" => weights.passing = ctx.int(value)?,
                                _ => weights.warning = ctx.int(value)?,
                            }
                        }
                        Some(weights)
                    }
                }
            }
            "Token" => {
                ctx.string(value)?;
            }
            "EnableTagOverride" => def.enable_tag_override |= ctx.boolean(value)?,
            "Connect" => {
                if let Some(object) = Object::new(value, "ServiceConnect", SERVICE_CONNECT)? {
                    for (field, value) in object.fields {
                        let ctx = Ctx {
                            structure: "ServiceConnect",
                            field,
                        };
                        match field {
                            "Native" => def.connect_native = ctx.boolean(value)?,
                            _ => {
                                let empty = match value {
                                    Value::Null => true,
                                    Value::Object(map) => map.is_empty(),
                                    other => return Err(ctx.type_error(other, "struct")),
                                };
                                def.connect_requested |= !empty;
                            }
                        }
                    }
                }
            }
            "Proxy" => {
                let empty = match value {
                    Value::Null => true,
                    Value::Object(map) => map.is_empty(),
                    other => return Err(ctx.type_error(other, "struct")),
                };
                def.connect_requested |= !empty;
            }
            "Locality" => {
                def.locality = match Object::new(value, "Locality", LOCALITY)? {
                    None => None,
                    Some(object) => {
                        let mut locality = Locality::default();
                        for (field, value) in object.fields {
                            let ctx = Ctx {
                                structure: "Locality",
                                field,
                            };
                            match field {
                                "Region" => locality.region = ctx.string(value)?,
                                _ => locality.zone = ctx.string(value)?,
                            }
                        }
                        Some(locality)
                    }
                }
            }
            _ => unreachable!("every field of SERVICE_DEFINITION is handled"),
        }
    }
    Ok(def)
}

fn check_type(value: &Value) -> Result<CheckType, DecodeError> {
    let mut check = CheckType::default();
    let Some(object) = Object::new(value, "CheckType", CHECK_TYPE)? else {
        return Ok(check);
    };
    for (field, value) in object.fields {
        let ctx = Ctx {
            structure: "CheckType",
            field,
        };
        match field {
            "CheckID" => check.check_id = ctx.string(value)?,
            "Name" => check.name = ctx.string(value)?,
            "Status" => check.status = ctx.string(value)?,
            "Notes" => check.notes = ctx.string(value)?,
            "ScriptArgs" => {
                let args = ctx.strings(value)?;
                if check.script_args.is_empty() {
                    check.script_args = args;
                }
            }
            "HTTP" => check.http = ctx.string(value)?,
            "H2PING" => check.h2ping = ctx.string(value)?,
            "H2PingUseTLS" => check.h2ping_use_tls |= ctx.boolean(value)?,
            "Header" => {
                if let Some(map) = ctx.object(value)? {
                    for (key, values) in map {
                        check.header.insert(key.clone(), ctx.strings(values)?);
                    }
                }
            }
            "Method" => check.method = ctx.string(value)?,
            "Body" => check.body = ctx.string(value)?,
            "DisableRedirects" => check.disable_redirects = ctx.boolean(value)?,
            "TCP" => check.tcp = ctx.string(value)?,
            "UDP" => check.udp = ctx.string(value)?,
            "Interval" => check.interval = duration(value)?,
            "AliasNode" => check.alias_node = ctx.string(value)?,
            "AliasService" => check.alias_service = ctx.string(value)?,
            "DockerContainerID" => check.docker_container_id = ctx.string(value)?,
            "Shell" => check.shell = ctx.string(value)?,
            "GRPC" => check.grpc = ctx.string(value)?,
            "GRPCUseTLS" => check.grpc_use_tls |= ctx.boolean(value)?,
            "OSService" => check.os_service = ctx.string(value)?,
            "TLSServerName" => check.tls_server_name = ctx.string(value)?,
            "TLSSkipVerify" => check.tls_skip_verify |= ctx.boolean(value)?,
            "Timeout" => check.timeout = duration(value)?,
            "TTL" => check.ttl = duration(value)?,
            "SuccessBeforePassing" => check.success_before_passing = ctx.int(value)?,
            "FailuresBeforeWarning" => check.failures_before_warning = ctx.int(value)?,
            "FailuresBeforeCritical" => check.failures_before_critical = ctx.int(value)?,
            "ProxyHTTP" => check.proxy_http = ctx.string(value)?,
            "ProxyGRPC" => check.proxy_grpc = ctx.string(value)?,
            "DeregisterCriticalServiceAfter" => {
                check.deregister_critical_service_after = duration(value)?
            }
            "OutputMaxSize" => check.output_max_size = ctx.int(value)?,
            "ServiceID" => {
                ctx.string(value)?;
            }
            _ => unreachable!("every field of CHECK_TYPE is handled"),
        }
    }
    Ok(check)
}

pub(crate) fn check_update(body: &[u8]) -> Result<CheckUpdate, DecodeError> {
    let value = parse(body)?;
    let mut update = CheckUpdate::default();
    if let Some(object) = Object::new(&value, "checkUpdate", CHECK_UPDATE)? {
        for (field, value) in object.fields {
            let ctx = Ctx {
                structure: "checkUpdate",
                field,
            };
            match field {
                "Status" => update.status = ctx.string(value)?,
                _ => update.output = ctx.string(value)?,
            }
        }
    }
    Ok(update)
}

const CONNECT_AUTHORIZE: Fields = &[
    ("Target", "Target"),
    ("ClientCertURI", "ClientCertURI"),
    ("ClientCertSerial", "ClientCertSerial"),
    ("Namespace", "Namespace"),
    ("Partition", "Partition"),
];

/// `POST /v1/agent/connect/authorize`'s body (`structs.ConnectAuthorizeRequest`).
#[derive(Debug, Default)]
pub(crate) struct ConnectAuthorize {
    pub target: String,
    pub client_cert_uri: String,
}

pub(crate) fn connect_authorize(body: &[u8]) -> Result<ConnectAuthorize, DecodeError> {
    let value = parse(body)?;
    let mut request = ConnectAuthorize::default();
    if let Some(object) = Object::new(&value, "ConnectAuthorizeRequest", CONNECT_AUTHORIZE)? {
        for (field, value) in object.fields {
            let ctx = Ctx {
                structure: "ConnectAuthorizeRequest",
                field,
            };
            let text = ctx.string(value)?;
            match field {
                "Target" => request.target = text,
                "ClientCertURI" => request.client_cert_uri = text,
                _ => {}
            }
        }
    }
    Ok(request)
}

/// Every config entry kind Consul knows (`structs.ConfigEntryKinds`).
pub(crate) const CONFIG_ENTRY_KINDS: &[&str] = &[
    "service-defaults",
    "proxy-defaults",
    "service-router",
    "service-splitter",
    "service-resolver",
    "ingress-gateway",
    "terminating-gateway",
    "service-intentions",
    "mesh",
    "exported-services",
    "sameness-group",
    "api-gateway",
    "bound-api-gateway",
    "inline-certificate",
    "file-system-certificate",
    "http-route",
    "tcp-route",
    "jwt-provider",
    "control-plane-request-limit",
];

/// One source of a `service-intentions` entry as sent.
#[derive(Debug, Default)]
pub(crate) struct IntentionSource {
    pub name: String,
    pub action: String,
    pub description: String,
    pub has_permissions: bool,
}

/// A config entry body (`PUT /v1/config`); only `service-intentions` fields are read.
#[derive(Debug, Default)]
pub(crate) struct ConfigEntry {
    pub kind: String,
    pub name: String,
    pub sources: Vec<IntentionSource>,
    pub meta: BTreeMap<String, String>,
}

/// Config entries are decoded by mapstructure with both CamelCase and snake_case keys
/// (`structs.DecodeConfigEntry`); an unknown key is refused with Consul's wording.
fn config_key(key: &str) -> String {
    key.replace('_', "").to_ascii_lowercase()
}

fn config_string(key: &str, value: &Value) -> Result<String, DecodeError> {
    match value {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        other => Err(DecodeError(format!(
            "'{key}' expected type 'string', got unconvertible type '{}'",
            json_type(other)
        ))),
    }
}

pub(crate) fn config_entry(body: &[u8]) -> Result<ConfigEntry, DecodeError> {
    let value = parse(body)?;
    let Value::Object(map) = value else {
        return Err(DecodeError("payload is not an object".into()));
    };
    let mut entry = ConfigEntry::default();
    for (key, value) in &map {
        match config_key(key).as_str() {
            "kind" => entry.kind = config_string(key, value)?,
            "name" => entry.name = config_string(key, value)?,
            "meta" => {
                if let Value::Object(meta) = value {
                    for (k, v) in meta {
                        entry.meta.insert(k.clone(), config_string(k, v)?);
                    }
                }
            }
            "sources" => {
                let items = match value {
                    Value::Null => Vec::new(),
                    Value::Array(items) => items.clone(),
                    other => {
                        return Err(DecodeError(format!(
                            "'Sources': source data must be an array or slice, got {}",
                            json_type(other)
                        )));
                    }
                };
                for item in items {
                    let Value::Object(fields) = item else {
                        return Err(DecodeError("'Sources[]' expected a map".into()));
                    };
                    let mut source = IntentionSource::default();
                    for (key, value) in &fields {
                        match config_key(key).as_str() {
                            "name" => source.name = config_string(key, value)?,
                            "action" => source.action = config_string(key, value)?,
                            "description" => source.description = config_string(key, value)?,
                            "permissions" => {
                                source.has_permissions |=
                                    value.as_array().is_some_and(|p| !p.is_empty())
                            }
                            // Read-only or default-namespace fields Consul accepts.
                            "precedence" | "type" | "namespace" | "partition" | "legacyid"
                            | "legacymeta" | "legacycreatetime" | "legacyupdatetime" => {}
                            _ => return Err(DecodeError(format!("invalid config key {key:?}"))),
                        }
                    }
                    entry.sources.push(source);
                }
            }
            "namespace" | "partition" | "createindex" | "modifyindex" | "jwt" => {}
            _ => return Err(DecodeError(format!("invalid config key {key:?}"))),
        }
    }
    Ok(entry)
}

const INTENTION: Fields = &[
    ("ID", "ID"),
    ("Description", "Description"),
    ("SourceNS", "SourceNS"),
    ("SourceName", "SourceName"),
    ("DestinationNS", "DestinationNS"),
    ("DestinationName", "DestinationName"),
    ("SourcePartition", "SourcePartition"),
    ("DestinationPartition", "DestinationPartition"),
    ("SourceType", "SourceType"),
    ("Action", "Action"),
    ("Meta", "Meta"),
    ("Precedence", "Precedence"),
    ("CreateIndex", "CreateIndex"),
    ("ModifyIndex", "ModifyIndex"),
];

/// The body of a legacy intention write (`structs.Intention`).
#[derive(Debug, Default)]
pub(crate) struct Intention {
    pub action: String,
    pub description: String,
}

pub(crate) fn intention(body: &[u8]) -> Result<Intention, DecodeError> {
    let value = parse(body)?;
    let mut out = Intention::default();
    if let Some(object) = Object::new(&value, "Intention", INTENTION)? {
        for (field, value) in object.fields {
            let ctx = Ctx {
                structure: "Intention",
                field,
            };
            match field {
                "Action" => out.action = ctx.string(value)?,
                "Description" => out.description = ctx.string(value)?,
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Consul's check durations are `interface{}`: a Go duration string or a number of
/// nanoseconds; any other JSON type is silently ignored.
fn duration(value: &Value) -> Result<Nanos, DecodeError> {
    match value {
        Value::String(text) => duration::parse_nanos(text).map_err(DecodeError),
        Value::Number(n) => Ok(n.as_f64().unwrap_or(0.0) as Nanos),
        _ => Ok(0),
    }
}

/// A JSON object matched against a struct's fields.
struct Object<'a> {
    /// (canonical field, value) in the order the keys came.
    fields: Vec<(&'static str, &'a Value)>,
}

impl<'a> Object<'a> {
    /// `None` for `null` (Go leaves the field at its zero value).
    fn new(
        value: &'a Value,
        structure: &'static str,
        known: Fields,
    ) -> Result<Option<Self>, DecodeError> {
        let map = match value {
            Value::Null => return Ok(None),
            Value::Object(map) => map,
            other => {
                return Err(DecodeError(format!(
                    "json: cannot unmarshal {} into Go value of type structs.{structure}",
                    json_type(other)
                )));
            }
        };
        let mut fields = Vec::with_capacity(map.len());
        for (key, value) in map {
            let field = known
                .iter()
                .find(|(name, _)| *name == key)
                .or_else(|| {
                    known
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case(key))
                })
                .map(|(_, field)| *field)
                .ok_or_else(|| DecodeError(format!("json: unknown field {key:?}")))?;
            fields.push((field, value));
        }
        Ok(Some(Self { fields }))
    }
}

/// Where a value sits, for Go-shaped type errors.
struct Ctx {
    structure: &'static str,
    field: &'static str,
}

impl Ctx {
    fn type_error(&self, value: &Value, go_type: &str) -> DecodeError {
        DecodeError(format!(
            "json: cannot unmarshal {} into Go struct field {}.{} of type {go_type}",
            json_type(value),
            self.structure,
            self.field
        ))
    }

    fn string(&self, value: &Value) -> Result<String, DecodeError> {
        match value {
            Value::Null => Ok(String::new()),
            Value::String(s) => Ok(s.clone()),
            other => Err(self.type_error(other, "string")),
        }
    }

    fn boolean(&self, value: &Value) -> Result<bool, DecodeError> {
        match value {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            other => Err(self.type_error(other, "bool")),
        }
    }

    fn int(&self, value: &Value) -> Result<i64, DecodeError> {
        match value {
            Value::Null => Ok(0),
            Value::Number(n) => n.as_i64().ok_or_else(|| {
                DecodeError(format!(
                    "json: cannot unmarshal number {n} into Go struct field {}.{} of type int",
                    self.structure, self.field
                ))
            }),
            other => Err(self.type_error(other, "int")),
        }
    }

    fn strings(&self, value: &Value) -> Result<Vec<String>, DecodeError> {
        match value {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    Value::Null => Ok(String::new()),
                    other => Err(self.type_error(other, "string")),
                })
                .collect(),
            other => Err(self.type_error(other, "[]string")),
        }
    }

    fn object<'v>(&self, value: &'v Value) -> Result<Option<&'v Map<String, Value>>, DecodeError> {
        match value {
            Value::Null => Ok(None),
            Value::Object(map) => Ok(Some(map)),
            other => Err(self.type_error(other, "map")),
        }
    }

    fn string_map(&self, value: &Value) -> Result<Option<BTreeMap<String, String>>, DecodeError> {
        let Some(map) = self.object(value)? else {
            return Ok(None);
        };
        map.iter()
            .map(|(key, value)| match value {
                Value::String(s) => Ok((key.clone(), s.clone())),
                Value::Null => Ok((key.clone(), String::new())),
                other => Err(self.type_error(other, "string")),
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_go_field_names_case_insensitively() {
        let def = service_definition(
            br#"{"name":"svc","ID":"a","TAGS":["x"],"port":80,"enabletagoverride":true,
                 "meta":{"Some_Key":"v"},"checks":[{"ttl":"10s","Status":"passing"}],
                 "tagged_addresses":{"lan":{"address":"10.0.0.1","port":1}}}"#,
        )
        .unwrap();
        assert_eq!(def.name, "svc");
        assert_eq!(def.id, "a");
        assert_eq!(def.tags, vec!["x"]);
        assert_eq!(def.port, 80);
        assert!(def.enable_tag_override);
        assert_eq!(
            def.meta.unwrap()["Some_Key"],
            "v",
            "meta keys are user data"
        );
        assert_eq!(def.checks[0].ttl, 10 * duration::SECOND);
        assert_eq!(def.tagged_addresses["lan"].address, "10.0.0.1");
    }

    #[test]
    fn snake_case_is_accepted_only_where_consul_declares_an_alias() {
        let check = check_type(&serde_json::json!({
            "grpc": "127.0.0.1:1", "grpc_use_tls": true, "interval": "1s",
            "deregister_critical_service_after": "1m", "tls_skip_verify": true
        }))
        .unwrap();
        assert!(check.grpc_use_tls && check.tls_skip_verify);
        assert_eq!(
            check.deregister_critical_service_after,
            60 * duration::SECOND
        );
        assert_eq!(
            check_type(&serde_json::json!({"check_id": "c", "ttl": "1s"})).unwrap_err(),
            DecodeError(r#"json: unknown field "check_id""#.into())
        );
        assert_eq!(
            service_definition(br#"{"Name":"a","service_name":"b"}"#).unwrap_err(),
            DecodeError(r#"json: unknown field "service_name""#.into())
        );
    }

    #[test]
    fn meta_absent_and_meta_empty_differ() {
        assert_eq!(service_definition(br#"{"Name":"a"}"#).unwrap().meta, None);
        assert_eq!(
            service_definition(br#"{"Name":"a","Meta":{}}"#)
                .unwrap()
                .meta,
            Some(BTreeMap::new())
        );
    }

    #[test]
    fn wrong_types_are_refused() {
        let error = service_definition(br#"{"Name":"a","Port":"80"}"#).unwrap_err();
        assert!(error.0.contains("cannot unmarshal string"), "{error}");
        assert!(service_definition(b"{").is_err());
        assert_eq!(service_definition(b"").unwrap_err().0, "EOF");
    }

    #[test]
    fn check_validation_matches_consul() {
        let both = CheckType {
            ttl: duration::SECOND,
            interval: duration::SECOND,
            ..Default::default()
        };
        assert_eq!(
            both.validate().unwrap_err(),
            "Interval and TTL cannot both be specified"
        );
        let no_interval = CheckType {
            http: "http://x".into(),
            ..Default::default()
        };
        assert!(
            no_interval
                .validate()
                .unwrap_err()
                .starts_with("Interval must be > 0")
        );
        let nothing = CheckType {
            name: "n".into(),
            ..Default::default()
        };
        assert_eq!(
            nothing.validate().unwrap_err(),
            "TTL must be > 0 for TTL checks"
        );
    }
}
