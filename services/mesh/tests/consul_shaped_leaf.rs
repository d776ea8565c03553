//! Leaves shaped like the ones a real Consul agent hands out, on both sides of a mesh call.
//!
//! The embedded registry's CA issues a Subject CN and a PKCS#8 key, so the other tests
//! never see what Consul's built-in CA really issues (agent/connect/ca/provider_consul.go
//! signing a CSR from agent/connect/csr.go, key from `connect.GeneratePrivateKey`):
//! - an **empty Subject**, so the subject alternative name extension is **critical**
//!   (RFC 5280 §4.2.1.6) and holds only the SPIFFE **URI** (no DNS name for a service that
//!   asked for none, which is every Connect-native HTTP-API leaf);
//! - the private key as **SEC1** (`EC PRIVATE KEY`, Go's `x509.MarshalECPrivateKey`);
//! - **the intermediate appended to `CertPEM`**: the leaf is signed by an intermediate
//!   that `/v1/agent/connect/ca/roots` does not list, so each peer must send it and the
//!   other must build the chain through it.
//!
//! An agent serving those leaves (a plain HTTP/1.1 responder: the shapes are the point, and
//! no registry issues them) stands behind both identities; the server acceptor and the
//! client connector must take them as they are.

use crate::common;

use base64::Engine as _;
use common::{EchoServer, echo, mesh_channel};
use plugworker_consul_client::{ConsulClient, ConsulConfig};
use plugworker_mesh::Identity;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
    SerialNumber,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::prelude::{FromDer, X509Certificate};

const TRUST_DOMAIN: &str = "11111111-2222-3333-4444-555555555555.consul";

fn uri(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{service}")
}

/// A CA certificate as Consul's provider makes one: a CN, the trust domain as URI SAN.
fn ca_params(name: &str, serial: u64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from(serial));
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{TRUST_DOMAIN}").try_into().unwrap(),
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

struct Ca {
    root: Certificate,
    intermediate: Certificate,
    intermediate_key: KeyPair,
}

fn ca() -> Ca {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root = ca_params("pri-1a2b3c4d.consul.ca.11111111.consul", 1)
        .self_signed(&root_key)
        .unwrap();
    let intermediate_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let intermediate = ca_params("pri-5e6f7a8b.consul.ca.11111111.consul", 2)
        .signed_by(&intermediate_key, &root, &root_key)
        .unwrap();
    Ca {
        root,
        intermediate,
        intermediate_key,
    }
}

/// Consul's `/v1/agent/connect/ca/leaf/<service>` answer for `service`: empty Subject,
/// URI-only SAN, SEC1 key, leaf then intermediate in `CertPEM`.
fn leaf(ca: &Ca, service: &str, serial: u8) -> serde_json::Value {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serial_number = Some(SerialNumber::from_slice(&[0x5a, serial]));
    // rcgen never marks the SAN critical, so it is written by hand as Go writes it:
    // SEQUENCE { [6] uniformResourceIdentifier }, critical because the Subject is empty.
    let uri_bytes = uri(service).into_bytes();
    let mut san = vec![
        0x30,
        (uri_bytes.len() + 2) as u8,
        0x86,
        uri_bytes.len() as u8,
    ];
    san.extend_from_slice(&uri_bytes);
    let mut extension = CustomExtension::from_oid_content(&[2, 5, 29, 17], san);
    extension.set_criticality(true);
    params.custom_extensions = vec![extension];
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
    let cert = params
        .signed_by(&key, &ca.intermediate, &ca.intermediate_key)
        .unwrap();
    serde_json::json!({
        "SerialNumber": format!("5a:{serial:02x}"),
        "CertPEM": cert.pem() + &ca.intermediate.pem(),
        "PrivateKeyPEM": sec1_pem(&key),
        "Service": service,
        "ServiceURI": uri(service),
        "ValidAfter": "2026-01-01T00:00:00Z",
        "ValidBefore": "2099-01-01T00:00:00Z",
        "CreateIndex": 10,
        "ModifyIndex": 10,
    })
}

/// One DER element of `der` at `at`: (tag, content start, content end).
fn element(der: &[u8], at: usize) -> (u8, usize, usize) {
    let tag = der[at];
    let (length, start) = match der[at + 1] {
        short if short < 0x80 => (usize::from(short), at + 2),
        long => {
            let count = usize::from(long & 0x7f);
            let length = der[at + 2..at + 2 + count]
                .iter()
                .fold(0usize, |n, b| n << 8 | usize::from(*b));
            (length, at + 2 + count)
        }
    };
    (tag, start, start + length)
}

/// The P-256 `key` as Go's `x509.MarshalECPrivateKey` writes it (RFC 5915, with the
/// curve and the public key), PEM `EC PRIVATE KEY`: rcgen only writes PKCS#8, whose
/// private-key octet string holds the same structure without the curve.
fn sec1_pem(key: &KeyPair) -> String {
    let pkcs8 = key.serialize_der();
    // PrivateKeyInfo: SEQUENCE { version, algorithm, OCTET STRING { ECPrivateKey } }.
    let (_, info, _) = element(&pkcs8, 0);
    let (_, _, version_end) = element(&pkcs8, info);
    let (_, _, algorithm_end) = element(&pkcs8, version_end);
    let (tag, inner, _) = element(&pkcs8, algorithm_end);
    assert_eq!(tag, 0x04, "PKCS#8 private key octet string");
    // ECPrivateKey: SEQUENCE { version 1, OCTET STRING d, [1] public key }.
    let (_, body, body_end) = element(&pkcs8, inner);
    let (_, _, version_end) = element(&pkcs8, body);
    let (tag, d_start, d_end) = element(&pkcs8, version_end);
    assert_eq!(tag, 0x04, "the private scalar");
    let public = (d_end..body_end)
        .find(|&at| pkcs8[at] == 0xa1)
        .map(|at| &pkcs8[at..body_end])
        .expect("the public key ([1])");
    let mut content = vec![0x02, 0x01, 0x01, 0x04, (d_end - d_start) as u8];
    content.extend_from_slice(&pkcs8[d_start..d_end]);
    // [0] namedCurve prime256v1 (1.2.840.10045.3.1.7).
    content.extend_from_slice(&[
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ]);
    content.extend_from_slice(public);
    assert!(content.len() < 0x80, "short form length");
    let mut der = vec![0x30, content.len() as u8];
    der.extend_from_slice(&content);
    let text = base64::engine::general_purpose::STANDARD.encode(&der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

/// What the test agent was asked to authorize: (target, client URI).
type Authorized = Arc<Mutex<Vec<(String, String)>>>;

/// An agent answering the three Connect endpoints with `leaves` and `roots` (index 10;
/// a blocking query for a later index waits, as Consul's does), allowing every client
/// and recording what it was asked.
async fn agent(
    leaves: HashMap<String, serde_json::Value>,
    roots: serde_json::Value,
) -> (String, Authorized) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let authorized = Authorized::default();
    let asked = authorized.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (leaves, roots, asked) = (leaves.clone(), roots.clone(), asked.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                let head_end = loop {
                    let read = stream.read(&mut buffer).await.unwrap();
                    if read == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..read]);
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                while request.len() < head_end + length {
                    let read = stream.read(&mut buffer).await.unwrap();
                    request.extend_from_slice(&buffer[..read]);
                }
                let target = head.split_whitespace().nth(1).unwrap_or_default();
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                if query
                    .split('&')
                    .any(|p| p.starts_with("index=") && p != "index=0")
                {
                    // Nothing changes here: hold the blocking query open.
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let body = if path == "/v1/agent/connect/ca/roots" {
                    roots
                } else if let Some(service) = path.strip_prefix("/v1/agent/connect/ca/leaf/") {
                    leaves[service].clone()
                } else if path == "/v1/agent/connect/authorize" {
                    let body: serde_json::Value =
                        serde_json::from_slice(&request[head_end..]).unwrap();
                    asked.lock().unwrap().push((
                        body["Target"].as_str().unwrap().to_string(),
                        body["ClientCertURI"].as_str().unwrap().to_string(),
                    ));
                    serde_json::json!({"Authorized": true, "Reason": "Default behavior configured by ACLs"})
                } else {
                    panic!("unexpected request {head}");
                };
                let body = body.to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 10\r\nX-Consul-KnownLeader: true\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (address, authorized)
}

/// The facts that make a leaf Consul-shaped, read back from what the agent serves.
fn assert_consul_shaped(leaf: &serde_json::Value) {
    let key = leaf["PrivateKeyPEM"].as_str().unwrap();
    assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{key}");
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(
        leaf["CertPEM"].as_str().unwrap().as_bytes(),
    )
    .collect::<Result<_, _>>()
    .unwrap();
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    let (_, cert) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
    assert_eq!(cert.subject().iter().count(), 0, "empty Subject");
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN critical when the Subject is empty");
    assert_eq!(san.value.general_names.len(), 1);
    assert!(matches!(
        san.value.general_names[0],
        x509_parser::extensions::GeneralName::URI(u) if u == leaf["ServiceURI"].as_str().unwrap()
    ));
}

use rustls_pki_types::pem::PemObject;

#[tokio::test]
async fn consul_shaped_leaves_work_on_both_sides_of_a_mesh_call() {
    let ca = ca();
    let mut leaves = HashMap::from([
        ("runner".to_string(), leaf(&ca, "runner", 1)),
        ("controller".to_string(), leaf(&ca, "controller", 2)),
    ]);
    for leaf in leaves.values() {
        assert_consul_shaped(leaf);
    }
    // The same leaf without the intermediate after it: its chain cannot be built, which
    // shows the working calls below really go through the intermediate each peer sends.
    let mut bare = leaf(&ca, "controller", 3);
    let cert_pem = bare["CertPEM"].as_str().unwrap().to_string();
    let leaf_only = &cert_pem[..cert_pem.find("-----END CERTIFICATE-----").unwrap() + 26];
    bare["CertPEM"] = leaf_only.into();
    leaves.insert("controller-without-intermediate".to_string(), bare);
    // The roots list the root only: the intermediate travels in each peer's chain.
    let roots = serde_json::json!({
        "ActiveRootID": "1a:2b",
        "TrustDomain": TRUST_DOMAIN,
        "Roots": [{
            "ID": "1a:2b",
            "Name": "Consul CA Primary Cert",
            "RootCert": ca.root.pem(),
            "IntermediateCerts": null,
            "Active": true,
        }],
    });
    let (address, authorized) = agent(leaves, roots).await;
    let consul = ConsulClient::new(ConsulConfig {
        address: address.clone(),
        ..ConsulConfig::default()
    })
    .unwrap();
    let start = |service: &'static str| {
        let consul = consul.clone();
        async move {
            Identity::start(consul, service, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("{service}: a Consul-shaped leaf must load: {e}"))
        }
    };
    let controller = start("controller").await;
    assert_eq!(controller.leaf_serial(), "5a:02");

    // The runner loads its own leaf from the agent, as a runner process does. Authorize
    // decisions are cached past the test's end, so the one authorize asserted below is
    // not joined by a periodic re-check of the open connection.
    let server = EchoServer::start(&address, "runner", Duration::from_secs(600)).await;
    let runner = server.identity();
    assert_eq!(runner.spiffe_id(), uri("runner"));
    assert_eq!(runner.leaf_serial(), "5a:01");
    let channel = mesh_channel(&controller, "runner", server.address);
    let answer = echo(channel, "consul-shaped").await.unwrap();
    assert_eq!(answer.text, "consul-shaped");
    assert_eq!(
        answer.caller,
        uri("controller"),
        "the server read the client's identity"
    );
    assert_eq!(
        *authorized.lock().unwrap(),
        vec![("runner".to_string(), uri("controller"))]
    );
    assert_eq!(server.stats.accepted(), 1);

    let bare = start("controller-without-intermediate").await;
    let refused = echo(mesh_channel(&bare, "runner", server.address), "x").await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(server.stats.accepted(), 1);
    assert_eq!(
        authorized.lock().unwrap().len(),
        1,
        "refused before authorize"
    );
}
