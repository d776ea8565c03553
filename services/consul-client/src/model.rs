//! The JSON shapes of the Consul HTTP API endpoints this client calls.
//!
//! Field names follow Consul's (PascalCase, with its own capitalisation of `ID`, `GRPC`,
//! `TTL`...). Parsing is as lenient as Consul's own Go decoder, so that any agent's answer
//! parses, whatever else shares the datacenter:
//! - every field has a default, so fields a Consul version drops never break parsing, and
//!   fields it adds (`Weights`, `Proxy`, `Connect`, `TaggedAddresses`...) are ignored;
//! - every field accepts `null` as its empty value ([`nullable`]). Go encodes a nil map or
//!   slice as `null`, so a real agent answers `"Meta": null` for a service registered
//!   without meta, `"ServiceMeta": null` and `"NodeMeta": null` in the catalog, and older
//!   agents `"Tags": null`; Go's decoder reads `null` into any field as "leave it empty".

use crate::duration;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Deserializes `null` (or an absent field, with `#[serde(default)]`) as the type's empty
/// value, as Go's `encoding/json` does for maps, slices, strings and numbers.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// State of a health check, as Consul reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passing,
    Warning,
    #[default]
    Critical,
    Maintenance,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
            CheckStatus::Maintenance => "maintenance",
        }
    }
}

impl std::fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of `PUT /v1/agent/service/register`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRegistration {
    #[serde(rename = "ID")]
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    #[serde(deserialize_with = "nullable")]
    pub port: u16,
    #[serde(deserialize_with = "nullable")]
    pub meta: BTreeMap<String, String>,
    /// A single check; Consul names it `service:<ID>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckDefinition>,
    /// Several checks; Consul names them `service:<ID>:<n>` (1-based).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[serde(deserialize_with = "nullable")]
    pub checks: Vec<CheckDefinition>,
    /// `Connect: {"Native": true}` marks a Connect-native service: it terminates mTLS
    /// itself with leaf certificates from the agent, and `/v1/health/connect/:service`
    /// lists it. Sent only when set, so plaintext registrations stay as they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ServiceConnect>,
}

/// The `Connect` block of a service registration (`structs.ServiceConnect`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceConnect {
    /// The service speaks Connect's mTLS itself (no sidecar proxy).
    #[serde(deserialize_with = "nullable")]
    pub native: bool,
}

/// A check definition inside a service registration. Exactly one of `grpc`, `http`,
/// `tcp` or `ttl` says what kind of check it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckDefinition {
    #[serde(rename = "CheckID", skip_serializing_if = "String::is_empty")]
    #[serde(deserialize_with = "nullable")]
    pub check_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    #[serde(deserialize_with = "nullable")]
    pub notes: String,
    /// `host:port` or `host:port/service` of a `grpc.health.v1` server.
    #[serde(rename = "GRPC", skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    #[serde(rename = "GRPCUseTLS")]
    #[serde(deserialize_with = "nullable")]
    pub grpc_use_tls: bool,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(
        rename = "TTL",
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<Duration>,
    /// Initial status; Consul starts checks `critical` unless told otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
}

/// A service as the local agent knows it (`GET /v1/agent/service/:id`, `/v1/agent/services`),
/// and the `Service` part of a health entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    #[serde(rename = "ID")]
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub service: String,
    #[serde(deserialize_with = "nullable")]
    pub tags: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub meta: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub port: u16,
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    #[serde(deserialize_with = "nullable")]
    pub datacenter: String,
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// A node, as embedded in health entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID")]
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub node: String,
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    #[serde(deserialize_with = "nullable")]
    pub datacenter: String,
}

/// One element of `GET /v1/catalog/service/:name`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogService {
    #[serde(rename = "ID")]
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub node: String,
    #[serde(deserialize_with = "nullable")]
    pub address: String,
    #[serde(deserialize_with = "nullable")]
    pub datacenter: String,
    #[serde(rename = "ServiceID")]
    #[serde(deserialize_with = "nullable")]
    pub service_id: String,
    #[serde(deserialize_with = "nullable")]
    pub service_name: String,
    #[serde(deserialize_with = "nullable")]
    pub service_tags: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub service_address: String,
    #[serde(deserialize_with = "nullable")]
    pub service_port: u16,
    #[serde(deserialize_with = "nullable")]
    pub service_meta: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// A health check's current state (`/v1/agent/checks`, and inside health entries).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    #[serde(deserialize_with = "nullable")]
    pub node: String,
    #[serde(rename = "CheckID")]
    #[serde(deserialize_with = "nullable")]
    pub check_id: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub status: CheckStatus,
    #[serde(deserialize_with = "nullable")]
    pub notes: String,
    #[serde(deserialize_with = "nullable")]
    pub output: String,
    #[serde(rename = "ServiceID")]
    #[serde(deserialize_with = "nullable")]
    pub service_id: String,
    #[serde(deserialize_with = "nullable")]
    pub service_name: String,
    #[serde(deserialize_with = "nullable")]
    pub service_tags: Vec<String>,
    /// `grpc`, `http`, `tcp`, `ttl`, or empty for node checks such as `serfHealth`.
    #[serde(rename = "Type")]
    #[serde(deserialize_with = "nullable")]
    pub check_type: String,
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// One element of `GET /v1/health/service/:name`: an instance with its node and checks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEntry {
    #[serde(deserialize_with = "nullable")]
    pub node: Node,
    #[serde(deserialize_with = "nullable")]
    pub service: AgentService,
    #[serde(deserialize_with = "nullable")]
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The aggregate status Consul's `?passing` filter uses: the worst of all checks,
    /// node checks included.
    pub fn aggregated_status(&self) -> CheckStatus {
        let rank = |s: CheckStatus| match s {
            CheckStatus::Passing => 0,
            CheckStatus::Warning => 1,
            CheckStatus::Critical => 2,
            CheckStatus::Maintenance => 3,
        };
        self.checks
            .iter()
            .map(|c| c.status)
            .max_by_key(|s| rank(*s))
            .unwrap_or(CheckStatus::Passing)
    }

    /// Address to dial: the service address, falling back to the node's (Consul semantics).
    pub fn address(&self) -> &str {
        if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        }
    }
}

/// `GET /v1/agent/connect/ca/roots` (`structs.IndexedCARoots`): every CA root a Connect
/// certificate may chain to. During a rotation the old root stays listed (inactive) until
/// the certificates it signed have expired, so verifiers trust all of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaRoots {
    #[serde(rename = "ActiveRootID")]
    #[serde(deserialize_with = "nullable")]
    pub active_root_id: String,
    /// `<cluster-id>.consul`: the host part of every SPIFFE ID this CA signs.
    #[serde(deserialize_with = "nullable")]
    pub trust_domain: String,
    #[serde(deserialize_with = "nullable")]
    pub roots: Vec<CaRoot>,
}

/// One root of [`CaRoots`] (`structs.CARoot`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CaRoot {
    #[serde(rename = "ID")]
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// The root certificate, PEM.
    #[serde(deserialize_with = "nullable")]
    pub root_cert: String,
    /// PEM intermediates between this root and the leaves (external CA providers).
    #[serde(deserialize_with = "nullable")]
    pub intermediate_certs: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub active: bool,
    #[serde(deserialize_with = "nullable")]
    pub not_before: String,
    #[serde(deserialize_with = "nullable")]
    pub not_after: String,
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// `GET /v1/agent/connect/ca/leaf/:service` (`structs.IssuedCert`): a service's leaf
/// certificate and its private key.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LeafCert {
    /// Colon-separated lower-case hex, as Consul writes serials.
    #[serde(deserialize_with = "nullable")]
    pub serial_number: String,
    /// The leaf, followed by any intermediates, PEM.
    #[serde(rename = "CertPEM")]
    #[serde(deserialize_with = "nullable")]
    pub cert_pem: String,
    #[serde(rename = "PrivateKeyPEM")]
    #[serde(deserialize_with = "nullable")]
    pub private_key_pem: String,
    #[serde(deserialize_with = "nullable")]
    pub service: String,
    /// The leaf's SPIFFE ID, `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`.
    #[serde(rename = "ServiceURI")]
    #[serde(deserialize_with = "nullable")]
    pub service_uri: String,
    /// RFC 3339.
    #[serde(deserialize_with = "nullable")]
    pub valid_after: String,
    /// RFC 3339.
    #[serde(deserialize_with = "nullable")]
    pub valid_before: String,
    #[serde(deserialize_with = "nullable")]
    pub create_index: u64,
    #[serde(deserialize_with = "nullable")]
    pub modify_index: u64,
}

/// The private key stays out of logs.
impl std::fmt::Debug for LeafCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCert")
            .field("serial_number", &self.serial_number)
            .field("service", &self.service)
            .field("service_uri", &self.service_uri)
            .field("valid_after", &self.valid_after)
            .field("valid_before", &self.valid_before)
            .field("modify_index", &self.modify_index)
            .finish_non_exhaustive()
    }
}

/// Body of `POST /v1/agent/connect/authorize` (`structs.ConnectAuthorizeRequest`): may
/// the holder of this client certificate connect to `target`?
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AuthorizeRequest {
    /// The service being connected to (the caller's own service).
    pub target: String,
    /// The client certificate's SPIFFE URI.
    #[serde(rename = "ClientCertURI")]
    pub client_cert_uri: String,
    /// The client certificate's serial, colon-separated hex.
    pub client_cert_serial: String,
}

/// Answer of `POST /v1/agent/connect/authorize`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Authorization {
    #[serde(deserialize_with = "nullable")]
    pub authorized: bool,
    /// Which intention (or default) decided.
    #[serde(deserialize_with = "nullable")]
    pub reason: String,
}
