//! Connect: the built-in CA (roots, SPIFFE leaf certificates, rotation) and intentions,
//! with the wire formats of Consul's `structs.IndexedCARoots`, `structs.IssuedCert`,
//! `structs.ServiceIntentionsConfigEntry` and `structs.Intention`.
//!
//! Certificates follow Consul's built-in provider (`agent/connect/ca/provider_consul.go`):
//! EC P-256 keys, a self-signed root valid ten years carrying the trust domain's SPIFFE
//! URI (`spiffe://<cluster-id>.consul`), and leaves for services carrying
//! `spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>` as their only SAN, usable
//! for both server and client authentication. A leaf is renewed at a random point between
//! 60 % and 90 % of its lifetime (Consul's agent cache does the same), and at once when
//! the active root changes. Rotating the root keeps every earlier root in `Roots`
//! (inactive), so certificates issued under it stay verifiable until they expire, and
//! cross-signs the new root with the old one, as Consul does: new leaves carry that
//! intermediate in `CertPEM`, so a peer that has not yet seen the new root still
//! verifies them. Without it, a rotation would refuse new connections for as long as
//! peers' roots watches lag behind their leaf watches.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
    SerialNumber,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// Consul's default `LeafCertTTL`.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(72 * 3600);
/// Consul's built-in provider makes roots valid for ten years.
const ROOT_LIFETIME: time::Duration = time::Duration::days(3650);
/// Leaves are backdated a minute against clock skew between peers.
const BACKDATE: time::Duration = time::Duration::minutes(1);

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("error generating CA certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("error parsing private key: {0}")]
    PrivateKey(String),
}

/// A CA root (`structs.CARoot`), with what signing needs.
pub(crate) struct Root {
    pub id: String,
    pub name: String,
    pub serial: u64,
    pub signing_key_id: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub cert: Certificate,
    pub key: KeyPair,
    /// PEM certificates between this root's leaves and an earlier root: after a rotation,
    /// the new root's key certified by the previous root (Consul's cross-signed
    /// intermediate). Leaves carry them after the leaf in `CertPEM`, so peers that still
    /// trust only the previous root verify new leaves during the rotation.
    pub intermediates: Vec<String>,
    pub active: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// An issued leaf (`structs.IssuedCert`), with when the agent renews it.
#[derive(Clone)]
pub(crate) struct Leaf {
    pub serial: String,
    pub cert_pem: String,
    pub private_key_pem: String,
    pub service: String,
    pub service_uri: String,
    pub valid_after: OffsetDateTime,
    pub valid_before: OffsetDateTime,
    pub root_id: String,
    pub create_index: u64,
    pub modify_index: u64,
    pub renew_at: Instant,
}

/// One source of a `service-intentions` config entry.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Source {
    pub name: String,
    pub action: Action,
    pub description: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// A `service-intentions` config entry: the intentions towards one destination.
pub(crate) struct IntentionsEntry {
    pub sources: Vec<Source>,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Consul's intention precedence (`structs.Intention.UpdatePrecedence`) in the default
/// namespace: exact → exact 9, * → exact 8, exact → * 6, * → * 5.
pub(crate) fn precedence(source: &str, destination: &str) -> u32 {
    match (source == "*", destination == "*") {
        (false, false) => 9,
        (true, false) => 8,
        (false, true) => 6,
        (true, true) => 5,
    }
}

/// The Connect state: CA and intentions.
pub(crate) struct Mesh {
    pub cluster_id: String,
    pub trust_domain: String,
    pub datacenter: String,
    pub roots: Vec<Root>,
    pub leaf_ttl: Duration,
    pub config_create_index: u64,
    pub config_modify_index: u64,
    /// Leaves by service name, as the agent's leaf cache holds them.
    pub leaves: BTreeMap<String, Leaf>,
    /// Index of the last change to the roots (the roots endpoints' `X-Consul-Index`).
    pub roots_index: u64,
    next_serial: u64,
    /// `service-intentions` entries by destination name.
    pub intentions: BTreeMap<String, IntentionsEntry>,
    pub intentions_index: u64,
}

/// A random (version 4) UUID.
pub(crate) fn uuid(rng: &mut impl rand::Rng) -> String {
    let mut bytes: [u8; 16] = rng.random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid_text(bytes)
}

/// 16 bytes in UUID text form (8-4-4-4-12 lower-case hex digits).
pub(crate) fn uuid_text(bytes: [u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A serial number's big-endian bytes without leading zeros, as Go's `big.Int.Bytes()`.
fn serial_bytes(serial: u64) -> Vec<u8> {
    let bytes = serial.to_be_bytes();
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(7);
    bytes[first..].to_vec()
}

/// Go's `connect.HexString`: lowercase hex bytes joined by colons.
pub(crate) fn hex_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `time.Time` as Go's JSON encoder writes it (RFC 3339, UTC, no trailing zero fraction).
pub(crate) fn go_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn truncate_to_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

impl Mesh {
    pub fn new(datacenter: &str, leaf_ttl: Duration, index: u64) -> Result<Self, CaError> {
        let cluster_id = uuid(&mut rand::rng());
        let mut mesh = Self {
            trust_domain: format!("{cluster_id}.consul"),
            cluster_id,
            datacenter: datacenter.to_string(),
            roots: Vec::new(),
            leaf_ttl,
            config_create_index: index,
            config_modify_index: index,
            leaves: BTreeMap::new(),
            roots_index: index,
            next_serial: 1,
            intentions: BTreeMap::new(),
            intentions_index: 0,
        };
        mesh.rotate(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?, index)?;
        Ok(mesh)
    }

    /// Makes a new active root from `key`; earlier roots stay listed, inactive.
    pub fn rotate(&mut self, key: KeyPair, index: u64) -> Result<(), CaError> {
        let serial = self.take_serial();
        let mut params = CertificateParams::default();
        let short_id: String = uuid(&mut rand::rng())[..8].to_string();
        let name = format!("pri-{short_id}.consul.ca.{}.consul", &self.cluster_id[..8]);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.clone());
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial));
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{}", self.trust_domain).try_into()?,
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = truncate_to_seconds(OffsetDateTime::now_utc());
        params.not_before = now;
        params.not_after = now + ROOT_LIFETIME;
        let cross_params = params.clone();
        let cert = params.self_signed(&key)?;
        // Cross-sign: the same subject and key, issued by the root being replaced.
        let mut intermediates = Vec::new();
        if self.roots.iter().any(|r| r.active) {
            let cross_serial = self.take_serial();
            let previous = self.active_root();
            let mut cross = cross_params;
            cross.serial_number = Some(SerialNumber::from(cross_serial));
            cross.use_authority_key_identifier_extension = true;
            intermediates.push(cross.signed_by(&key, &previous.cert, &previous.key)?.pem());
        }
        let id = hex_string(ring::digest::digest(&ring::digest::SHA256, cert.der()).as_ref());
        let signing_key_id = hex_string(&cert.key_identifier());
        for root in &mut self.roots {
            if root.active {
                root.active = false;
                root.modify_index = index;
            }
        }
        self.roots.push(Root {
            id,
            name,
            serial,
            signing_key_id,
            not_before: now,
            not_after: now + ROOT_LIFETIME,
            cert,
            key,
            intermediates,
            active: true,
            create_index: index,
            modify_index: index,
        });
        self.roots_index = index;
        Ok(())
    }

    /// Parses a PEM private key (PKCS#8 or SEC1 EC) for [`Mesh::rotate`].
    pub fn parse_key(pem: &str) -> Result<KeyPair, CaError> {
        KeyPair::from_pem(pem).map_err(|e| CaError::PrivateKey(e.to_string()))
    }

    fn take_serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        serial
    }

    pub fn active_root(&self) -> &Root {
        self.roots
            .iter()
            .rev()
            .find(|r| r.active)
            .expect("the CA always has an active root")
    }

    /// `spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>`.
    pub fn service_uri(&self, service: &str) -> String {
        format!(
            "spiffe://{}/ns/default/dc/{}/svc/{service}",
            self.trust_domain, self.datacenter
        )
    }

    /// The cached leaf of `service` if it is still good, else `None`.
    pub fn current_leaf(&self, service: &str, now: Instant) -> Option<&Leaf> {
        self.leaves
            .get(service)
            .filter(|leaf| leaf.root_id == self.active_root().id && now < leaf.renew_at)
    }

    /// Signs a new leaf for `service` with the active root.
    pub fn issue_leaf(&mut self, service: &str, index: u64) -> Result<Leaf, CaError> {
        let serial = self.take_serial();
        let uri = self.service_uri(service);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        // Consul's `connect.ServiceCN`.
        dn.push(
            DnType::CommonName,
            format!("{service}.svc.default.{}.consul", &self.cluster_id[..8]),
        );
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from_slice(&serial_bytes(serial)));
        params.subject_alt_names = vec![SanType::URI(uri.clone().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
            KeyUsagePurpose::DataEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = truncate_to_seconds(OffsetDateTime::now_utc());
        let ttl = time::Duration::try_from(self.leaf_ttl).unwrap_or(time::Duration::days(3));
        params.not_before = now - BACKDATE;
        params.not_after = now + ttl;
        let root = self.active_root();
        let cert = params.signed_by(&key, &root.cert, &root.key)?;
        // Renew somewhere in 60..90 % of the remaining lifetime, like Consul's leaf cache,
        // so a fleet's renewals spread out.
        let fraction = rand::Rng::random_range(&mut rand::rng(), 0.6..0.9);
        let renew_at = Instant::now() + self.leaf_ttl.mul_f64(fraction);
        // The leaf, then the intermediates up to an earlier root (Consul's `CertPEM`).
        let mut cert_pem = cert.pem();
        for intermediate in &root.intermediates {
            cert_pem.push_str(intermediate);
        }
        let leaf = Leaf {
            serial: hex_string(&serial_bytes(serial)),
            cert_pem,
            private_key_pem: key.serialize_pem(),
            service: service.to_string(),
            service_uri: uri,
            valid_after: now - BACKDATE,
            valid_before: now + ttl,
            root_id: root.id.clone(),
            create_index: index,
            modify_index: index,
            renew_at,
        };
        self.leaves.insert(service.to_string(), leaf.clone());
        Ok(leaf)
    }

    /// `structs.IndexedCARoots`.
    pub fn roots_view(&self) -> Value {
        let roots: Vec<Value> = self
            .roots
            .iter()
            .map(|r| {
                json!({
                    "ID": r.id,
                    "Name": r.name,
                    "SerialNumber": r.serial,
                    "SigningKeyID": r.signing_key_id,
                    "ExternalTrustDomain": self.cluster_id,
                    "NotBefore": go_time(r.not_before),
                    "NotAfter": go_time(r.not_after),
                    "RootCert": r.cert.pem(),
                    "IntermediateCerts": if r.intermediates.is_empty() { Value::Null } else { json!(r.intermediates) },
                    "Active": r.active,
                    "PrivateKeyType": "ec",
                    "PrivateKeyBits": 256,
                    "CreateIndex": r.create_index,
                    "ModifyIndex": r.modify_index,
                })
            })
            .collect();
        json!({
            "ActiveRootID": self.active_root().id,
            "TrustDomain": self.trust_domain,
            "Roots": roots,
        })
    }

    /// The intentions matching a connection from `source` to `destination`, best first
    /// (the first match decides, as in Consul's authorize).
    pub fn matching(&self, source: &str, destination: &str) -> Option<(String, Source, u32)> {
        let mut candidates: Vec<(String, Source, u32)> = Vec::new();
        for (dest, entry) in &self.intentions {
            if dest != destination && dest != "*" {
                continue;
            }
            for s in &entry.sources {
                if s.name == source || s.name == "*" {
                    candidates.push((dest.clone(), s.clone(), precedence(&s.name, dest)));
                }
            }
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.2));
        candidates.into_iter().next()
    }
}

/// `structs.Intention.String()` for an L4 intention without a legacy ID.
pub(crate) fn intention_string(source: &str, destination: &str, s: &Source) -> String {
    format!(
        "{source} => {destination} (Precedence: {}, Action: {})",
        precedence(source, destination),
        s.action.as_str().to_uppercase()
    )
}

/// `structs.IssuedCert`.
pub(crate) fn leaf_view(leaf: &Leaf) -> Value {
    json!({
        "SerialNumber": leaf.serial,
        "CertPEM": leaf.cert_pem,
        "PrivateKeyPEM": leaf.private_key_pem,
        "Service": leaf.service,
        "ServiceURI": leaf.service_uri,
        "ValidAfter": go_time(leaf.valid_after),
        "ValidBefore": go_time(leaf.valid_before),
        "CreateIndex": leaf.create_index,
        "ModifyIndex": leaf.modify_index,
    })
}

/// A parsed `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>` (Consul's `SpiffeIDService`).
pub(crate) struct ServiceId {
    pub service: String,
}

/// Consul's `connect.ParseCertURIFromString` for service identities: `Ok(None)` when the
/// URI is a SPIFFE ID of another kind (agent, signing...), `Err` when it is no SPIFFE ID.
pub(crate) fn parse_service_uri(uri: &str) -> Result<Option<ServiceId>, ()> {
    let parsed = url::Url::parse(uri).map_err(|_| ())?;
    if parsed.scheme() != "spiffe" || parsed.host_str().is_none_or(str::is_empty) {
        return Err(());
    }
    let segments: Vec<&str> = parsed.path().trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["ns", _, "dc", _, "svc", service] if !service.is_empty() => Ok(Some(ServiceId {
            service: service.to_string(),
        })),
        ["ap", _, "ns", _, "dc", _, "svc", service] if !service.is_empty() => Ok(Some(ServiceId {
            service: service.to_string(),
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_is_8_4_4_4_12_hex() {
        let bytes: [u8; 16] = std::array::from_fn(|i| (i as u8) * 17);
        assert_eq!(uuid_text(bytes), "00112233-4455-6677-8899-aabbccddeeff");
        let random = uuid(&mut rand::rng());
        assert_eq!(&random[14..15], "4", "{random}");
        assert!(matches!(&random[19..20], "8" | "9" | "a" | "b"), "{random}");
    }

    #[test]
    fn precedence_follows_consuls_table() {
        assert_eq!(precedence("web", "db"), 9);
        assert_eq!(precedence("*", "db"), 8);
        assert_eq!(precedence("web", "*"), 6);
        assert_eq!(precedence("*", "*"), 5);
    }

    #[test]
    fn service_uris_parse_like_consul() {
        let id = parse_service_uri("spiffe://abc.consul/ns/default/dc/dc1/svc/web")
            .unwrap()
            .unwrap();
        assert_eq!(id.service, "web");
        assert!(
            parse_service_uri("spiffe://abc.consul/agent/client/dc/dc1/id/x")
                .unwrap()
                .is_none()
        );
        assert!(parse_service_uri("not a uri").is_err());
        assert!(parse_service_uri("https://abc/ns/default/dc/dc1/svc/web").is_err());
    }

    #[test]
    fn the_best_matching_intention_decides() {
        let mut mesh = Mesh::new("dc1", DEFAULT_LEAF_TTL, 1).unwrap();
        let source = |name: &str, action| Source {
            name: name.into(),
            action,
            description: String::new(),
        };
        mesh.intentions.insert(
            "db".into(),
            IntentionsEntry {
                sources: vec![source("*", Action::Deny), source("web", Action::Allow)],
                meta: BTreeMap::new(),
                create_index: 1,
                modify_index: 1,
            },
        );
        let (_, s, p) = mesh.matching("web", "db").unwrap();
        assert_eq!((s.action, p), (Action::Allow, 9));
        let (_, s, p) = mesh.matching("api", "db").unwrap();
        assert_eq!((s.action, p), (Action::Deny, 8));
        assert!(mesh.matching("web", "cache").is_none());
    }
}
