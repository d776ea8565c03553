//! Conformance of the embedded registry's Connect API with Consul's: the built-in CA
//! (roots, SPIFFE leaf certificates, blocking renewal, root rotation), Connect-native
//! registrations in the catalog and health views, `service-intentions` config entries,
//! the legacy intentions API, and authorize.
//!
//! Certificates are checked independently of the code that made them: `rustls-webpki`
//! verifies that a leaf chains to a root for both server and client authentication, and
//! `x509-parser` reads its SAN and key.
//!
//! By default every test runs against an embedded registry. Set `CONSUL_HTTP_ADDR` to run
//! the same assertions against a real agent with Connect enabled (`consul agent -dev`
//! has it); if that agent has ACLs on, set `CONSUL_HTTP_TOKEN` to a management token.
//! Tests that need a registry setting a real agent cannot change per test (a leaf
//! lifetime of seconds, `default_intention_policy`) run only against the embedded one.

use plugworker_embedded_consul::{IntentionAction, Registry, RegistryConfig, RunningRegistry};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

struct Target {
    api: Api,
    embedded: Option<RunningRegistry>,
}

impl Target {
    fn is_real_consul(&self) -> bool {
        self.embedded.is_none()
    }

    /// Waits until a blocking query is parked at the embedded registry, so that the change
    /// made next wakes it rather than meeting a query that would answer at once. A real
    /// agent does not say: there, a bounded 200 ms.
    async fn parked(&self) {
        let Some(registry) = &self.embedded else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while registry.registry().parked_queries() == 0 {
            assert!(Instant::now() < deadline, "no blocking query was parked");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn target() -> Target {
    target_with(RegistryConfig::default()).await
}

async fn target_with(config: RegistryConfig) -> Target {
    let (base, embedded) = match std::env::var("CONSUL_HTTP_ADDR") {
        Ok(address) if !address.contains("://") => (format!("http://{address}"), None),
        Ok(address) => (address, None),
        Err(_) => {
            let registry = Registry::spawn("127.0.0.1:0", config).await.unwrap();
            (registry.url(), Some(registry))
        }
    };
    Target {
        api: Api {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        },
        embedded,
    }
}

/// An embedded registry, whatever `CONSUL_HTTP_ADDR` says.
async fn embedded(config: RegistryConfig) -> Target {
    let registry = Registry::spawn("127.0.0.1:0", config).await.unwrap();
    Target {
        api: Api {
            base: registry.url(),
            http: reqwest::Client::new(),
        },
        embedded: Some(registry),
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn index(&self) -> u64 {
        self.headers
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-Consul-Index in {:?}", self.headers))
    }
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Ok(token) = std::env::var("CONSUL_HTTP_TOKEN") {
            request = request.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn ok(&self, path: &str) -> Answer {
        let answer = self.get(path).await;
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
        answer
    }

    async fn put(&self, path: &str, body: Value) -> Answer {
        self.send(reqwest::Method::PUT, path, Some(body.to_string()))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(body.to_string()))
            .await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    async fn register(&self, body: Value) {
        let answer = self.put("/v1/agent/service/register", body.clone()).await;
        assert_eq!(answer.status, 200, "{body}: {}", answer.body);
    }

    async fn deregister(&self, id: &str) {
        self.put(&format!("/v1/agent/service/deregister/{id}"), json!(null))
            .await;
    }

    /// `GET /v1/connect/intentions/check`: `{"Allowed": bool}`.
    async fn check(&self, source: &str, destination: &str) -> Value {
        self.ok(&format!(
            "/v1/connect/intentions/check?source={source}&destination={destination}"
        ))
        .await
        .json()
    }

    async fn authorize(&self, target: &str, client_uri: &str) -> Value {
        let answer = self
            .post(
                "/v1/agent/connect/authorize",
                json!({"Target": target, "ClientCertURI": client_uri, "ClientCertSerial": "01"}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()
    }
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let suffix = (nanos ^ NEXT.fetch_add(7919, Ordering::Relaxed)) & 0xff_ffff;
    format!("{prefix}-{}-{suffix:06x}", std::process::id())
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap_or_else(|e| panic!("not a PEM certificate ({e:?}): {pem}"))
}

/// Verifies with webpki that `leaf_pem` chains to one of `roots` (PEM) for both server
/// and client authentication.
fn chains_to(leaf_pem: &str, roots: &[String]) -> Result<(), webpki::Error> {
    let root_ders: Vec<CertificateDer<'static>> = roots.iter().map(|r| der(r)).collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .map(|d| webpki::anchor_from_trusted_cert(d).unwrap().to_owned())
        .collect();
    let leaf_der = der(leaf_pem);
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

/// The URI SANs of a certificate, and whether its key is EC P-256.
fn uris_and_key(pem: &str) -> (Vec<String>, bool) {
    let der = der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                uris.push(uri.to_string());
            }
        }
    }
    let spki = cert.public_key();
    let p256 = spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            == Some(x509_parser::oid_registry::OID_EC_P256);
    (uris, p256)
}

fn rfc3339(text: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("not an RFC 3339 time ({e}): {text}"))
}

fn root_pems(roots: &Value) -> Vec<String> {
    roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["RootCert"].as_str().unwrap().to_string())
        .collect()
}

async fn datacenter(api: &Api) -> String {
    api.ok("/v1/agent/self").await.json()["Config"]["Datacenter"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn roots_and_leaf_certificates_carry_consuls_fields_and_chain_to_the_active_root() {
    let t = target().await;
    let roots = t.api.ok("/v1/agent/connect/ca/roots").await;
    let view = roots.json();
    assert!(roots.index() > 0);
    let trust_domain = view["TrustDomain"].as_str().unwrap().to_string();
    let cluster_id = trust_domain.strip_suffix(".consul").unwrap();
    assert_eq!(cluster_id.len(), 36, "a UUID: {trust_domain}");
    let active: Vec<&Value> = view["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["Active"] == true)
        .collect();
    assert_eq!(active.len(), 1, "{view:#}");
    let root = active[0];
    assert_eq!(root["ID"], view["ActiveRootID"]);
    for field in [
        "ID",
        "Name",
        "SigningKeyID",
        "NotBefore",
        "NotAfter",
        "RootCert",
    ] {
        assert!(
            root[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {root:#}"
        );
    }
    assert!(root["CreateIndex"].as_u64().unwrap() > 0);
    let (root_uris, root_p256) = uris_and_key(root["RootCert"].as_str().unwrap());
    assert_eq!(root_uris, vec![format!("spiffe://{trust_domain}")]);
    assert!(root_p256, "Consul's built-in CA uses EC P-256 keys");
    // The non-agent endpoint answers the same roots.
    let same = t.api.ok("/v1/connect/ca/roots").await.json();
    assert_eq!(same["ActiveRootID"], view["ActiveRootID"]);

    let service = unique("leaf");
    let answer = t
        .api
        .ok(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await;
    let leaf = answer.json();
    let dc = datacenter(&t.api).await;
    let uri = format!("spiffe://{trust_domain}/ns/default/dc/{dc}/svc/{service}");
    assert_eq!(leaf["Service"], service.as_str());
    assert_eq!(leaf["ServiceURI"], uri.as_str());
    assert_eq!(answer.index(), leaf["ModifyIndex"].as_u64().unwrap());
    assert!(leaf["CreateIndex"].as_u64().unwrap() > 0);
    assert!(
        leaf["SerialNumber"]
            .as_str()
            .unwrap()
            .split(':')
            .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok()),
        "colon-separated hex: {}",
        leaf["SerialNumber"]
    );
    let now = time::OffsetDateTime::now_utc();
    assert!(rfc3339(leaf["ValidAfter"].as_str().unwrap()) <= now);
    let valid_before = rfc3339(leaf["ValidBefore"].as_str().unwrap());
    assert!(valid_before > now + time::Duration::hours(1), "{leaf:#}");
    let cert = leaf["CertPEM"].as_str().unwrap();
    assert!(
        leaf["PrivateKeyPEM"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY-----")
    );
    let (uris, p256) = uris_and_key(cert);
    assert_eq!(uris, vec![uri]);
    assert!(p256);
    chains_to(cert, &[root["RootCert"].as_str().unwrap().to_string()])
        .expect("the leaf chains to the active root");

    // The agent caches the leaf: asking again answers the same certificate.
    let again = t
        .api
        .ok(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await
        .json();
    assert_eq!(again["SerialNumber"], leaf["SerialNumber"]);
    // Another service's leaf is a different identity under the same root.
    let other = t
        .api
        .ok(&format!("/v1/agent/connect/ca/leaf/{}", unique("other")))
        .await
        .json();
    assert_ne!(other["SerialNumber"], leaf["SerialNumber"]);
    chains_to(
        other["CertPEM"].as_str().unwrap(),
        &[root["RootCert"].as_str().unwrap().to_string()],
    )
    .unwrap();
}

#[tokio::test]
async fn a_blocked_leaf_query_wakes_with_the_renewed_certificate() {
    let t = embedded(RegistryConfig {
        connect_leaf_ttl: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let service = unique("renew");
    let first = t
        .api
        .ok(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await;
    let first_leaf = first.json();
    let valid_before = rfc3339(first_leaf["ValidBefore"].as_str().unwrap());
    let valid_after = rfc3339(first_leaf["ValidAfter"].as_str().unwrap());
    assert!(valid_before - valid_after <= time::Duration::seconds(3 + 61));

    let started = Instant::now();
    let renewed = t
        .api
        .ok(&format!(
            "/v1/agent/connect/ca/leaf/{service}?index={}&wait=60s",
            first.index()
        ))
        .await;
    // Renewal happens at 60-90 % of the 3 s lifetime: well before the 60 s wait.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let renewed_leaf = renewed.json();
    assert!(renewed.index() > first.index());
    assert_ne!(renewed_leaf["SerialNumber"], first_leaf["SerialNumber"]);
    assert_eq!(renewed_leaf["ServiceURI"], first_leaf["ServiceURI"]);
    let roots = t.api.ok("/v1/agent/connect/ca/roots").await.json();
    chains_to(
        renewed_leaf["CertPEM"].as_str().unwrap(),
        &root_pems(&roots),
    )
    .unwrap();

    // Without a change the query holds for its wait and answers the same leaf.
    let held = t
        .api
        .ok(&format!(
            "/v1/agent/connect/ca/leaf/{service}?index={}&wait=100ms",
            renewed.index()
        ))
        .await;
    assert_eq!(held.index(), renewed.index());
}

#[tokio::test]
async fn rotating_the_root_keeps_the_old_one_and_reissues_leaves_under_the_new_one() {
    let t = target().await;
    let service = unique("rotate");
    let before = t.api.ok("/v1/agent/connect/ca/roots").await;
    let old_roots = before.json();
    let old_leaf = t
        .api
        .ok(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await;
    let old_leaf_view = old_leaf.json();

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let config = t.api.ok("/v1/connect/ca/configuration").await.json();
    assert_eq!(config["Provider"], "consul");
    let answer = t
        .api
        .put(
            "/v1/connect/ca/configuration",
            json!({"Provider": "consul", "Config": {"PrivateKey": key.serialize_pem()}}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // A blocked roots query sees the new root.
    let after = t
        .api
        .ok(&format!(
            "/v1/agent/connect/ca/roots?index={}&wait=30s",
            before.index()
        ))
        .await;
    let new_roots = after.json();
    assert_ne!(new_roots["ActiveRootID"], old_roots["ActiveRootID"]);
    let old_root = new_roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ID"] == old_roots["ActiveRootID"])
        .expect("the old root stays listed");
    assert_eq!(old_root["Active"], false);
    let bundle = root_pems(&new_roots);
    chains_to(old_leaf_view["CertPEM"].as_str().unwrap(), &bundle)
        .expect("a leaf of the old root still verifies against the roots");

    // The leaf is re-issued under the new root; a blocked leaf query wakes with it.
    // (Consul spreads re-issuing over up to 30 s after a rotation.)
    let new_leaf = t
        .api
        .ok(&format!(
            "/v1/agent/connect/ca/leaf/{service}?index={}&wait=60s",
            old_leaf.index()
        ))
        .await
        .json();
    assert_ne!(new_leaf["SerialNumber"], old_leaf_view["SerialNumber"]);
    let active = new_roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Active"] == true)
        .unwrap();
    chains_to(
        new_leaf["CertPEM"].as_str().unwrap(),
        &[active["RootCert"].as_str().unwrap().to_string()],
    )
    .expect("the renewed leaf chains to the new root");
    // The old root alone does not verify the new leaf, but with the cross-signed
    // intermediate the leaf carries in CertPEM it does (peers whose roots watch lags
    // behind keep accepting renewed leaves).
    assert!(
        chains_to(
            new_leaf["CertPEM"].as_str().unwrap(),
            &[old_root["RootCert"].as_str().unwrap().to_string()],
        )
        .is_err()
    );
    let intermediates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(new_leaf["CertPEM"].as_str().unwrap().as_bytes())
            .skip(1)
            .collect::<Result<_, _>>()
            .unwrap();
    assert!(
        !intermediates.is_empty(),
        "a new leaf carries the cross-signed root"
    );
    let old_anchor = der(old_root["RootCert"].as_str().unwrap());
    let anchors = [webpki::anchor_from_trusted_cert(&old_anchor)
        .unwrap()
        .to_owned()];
    let new_leaf_der = der(new_leaf["CertPEM"].as_str().unwrap());
    webpki::EndEntityCert::try_from(&new_leaf_der)
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .expect("the new leaf verifies against the old root through the cross-signed root");
    assert_eq!(
        active["IntermediateCerts"].as_array().map(Vec::len),
        Some(intermediates.len())
    );
}

#[tokio::test]
async fn rotating_through_the_registry_wakes_blocked_queries() {
    let t = embedded(RegistryConfig::default()).await;
    let registry = t.embedded.as_ref().unwrap().registry().clone();
    let service = unique("rotate-api");
    let leaf = t
        .api
        .ok(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await;
    let url = format!(
        "{}/v1/agent/connect/ca/leaf/{service}?index={}&wait=30s",
        t.api.base,
        leaf.index()
    );
    let blocked =
        tokio::spawn(async move { reqwest::get(url).await.unwrap().json::<Value>().await });
    t.parked().await;
    registry.rotate_ca_root().unwrap();
    let renewed = blocked.await.unwrap().unwrap();
    assert_ne!(renewed["SerialNumber"], leaf.json()["SerialNumber"]);
    let roots = t.api.ok("/v1/agent/connect/ca/roots").await.json();
    assert_eq!(roots["Roots"].as_array().unwrap().len(), 2);
    assert!(registry.trust_domain().ends_with(".consul"));
}

#[tokio::test]
async fn connect_native_instances_show_in_views_and_alone_in_the_connect_endpoints() {
    let t = target().await;
    let name = unique("native");
    let native = format!("{name}-1");
    let plain = format!("{name}-2");
    t.api
        .register(json!({
            "ID": native, "Name": name, "Port": 9001, "Address": "127.0.0.1",
            "Connect": {"Native": true},
            "Check": {"TTL": "30s", "Status": "passing"},
        }))
        .await;
    t.api
        .register(json!({"ID": plain, "Name": name, "Port": 9002, "Address": "127.0.0.1"}))
        .await;

    let health = t.api.ok(&format!("/v1/health/service/{name}")).await.json();
    assert_eq!(health.as_array().unwrap().len(), 2);
    for entry in health.as_array().unwrap() {
        let expected = if entry["Service"]["ID"] == native.as_str() {
            json!({"Native": true})
        } else {
            json!({})
        };
        assert_eq!(entry["Service"]["Connect"], expected, "{entry:#}");
    }
    let catalog = t
        .api
        .ok(&format!("/v1/catalog/service/{name}"))
        .await
        .json();
    let native_entry = catalog
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ServiceID"] == native.as_str())
        .unwrap();
    assert_eq!(native_entry["ServiceConnect"], json!({"Native": true}));
    let agent = t
        .api
        .ok(&format!("/v1/agent/service/{native}"))
        .await
        .json();
    assert_eq!(agent["Connect"]["Native"], true, "{agent:#}");

    let connect = t.api.ok(&format!("/v1/health/connect/{name}")).await;
    let view = connect.json();
    let ids: Vec<&str> = view
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![native.as_str()]);
    let catalog_connect = t
        .api
        .ok(&format!("/v1/catalog/connect/{name}"))
        .await
        .json();
    let ids: Vec<&str> = catalog_connect
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ServiceID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![native.as_str()]);

    // ?passing drops the native instance once its check fails; a blocked query wakes.
    let url = format!(
        "{}/v1/health/connect/{name}?passing&index={}&wait=30s",
        t.api.base,
        connect.index()
    );
    let token = std::env::var("CONSUL_HTTP_TOKEN").unwrap_or_default();
    let blocked = tokio::spawn(async move {
        let mut request = reqwest::Client::new().get(url);
        if !token.is_empty() {
            request = request.header("X-Consul-Token", token);
        }
        request.send().await.unwrap().json::<Value>().await.unwrap()
    });
    t.parked().await;
    let fail = t
        .api
        .put(
            &format!("/v1/agent/check/fail/service:{native}"),
            json!(null),
        )
        .await;
    assert_eq!(fail.status, 200, "{}", fail.body);
    let woken = blocked.await.unwrap();
    assert_eq!(woken, json!([]));

    // A sidecar registration is refused: the registry has no proxies.
    if !t.is_real_consul() {
        let answer = t
            .api
            .put(
                "/v1/agent/service/register",
                json!({"Name": name, "Connect": {"SidecarService": {}}}),
            )
            .await;
        assert_eq!(answer.status, 200, "an empty sidecar block is no sidecar");
        let answer = t
            .api
            .put(
                "/v1/agent/service/register",
                json!({"Name": name, "Connect": {"SidecarService": {"Port": 1}}}),
            )
            .await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        t.api.deregister(&name).await;
    }
    let answer = t
        .api
        .put(
            "/v1/agent/service/register",
            json!({"Name": name, "Connect": {"Native": true, "Bogus": 1}}),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.body.contains("unknown field \"Bogus\""),
        "{}",
        answer.body
    );
    t.api.deregister(&native).await;
    t.api.deregister(&plain).await;
}

#[tokio::test]
async fn service_intentions_decide_authorize_and_read_back_like_consul() {
    let t = target().await;
    let trust_domain = t.api.ok("/v1/agent/connect/ca/roots").await.json()["TrustDomain"]
        .as_str()
        .unwrap()
        .to_string();
    let dc = datacenter(&t.api).await;
    let uri = |service: &str| format!("spiffe://{trust_domain}/ns/default/dc/{dc}/svc/{service}");
    let db = unique("db");
    let web = unique("web");
    let api = unique("api");

    // No intention: with ACLs off Consul allows by default.
    if std::env::var("CONSUL_HTTP_TOKEN").is_err() {
        let answer = t.api.authorize(&db, &uri(&web)).await;
        assert_eq!(
            answer,
            json!({"Authorized": true, "Reason": "Default behavior configured by ACLs"})
        );
    }

    let answer = t
        .api
        .put(
            "/v1/config",
            json!({
                "Kind": "service-intentions",
                "Name": db,
                "Sources": [
                    {"Name": web, "Action": "allow"},
                    {"Name": "*", "Action": "deny"},
                ],
            }),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body.trim(), "true");

    let allowed = t.api.authorize(&db, &uri(&web)).await;
    assert_eq!(allowed["Authorized"], true, "{allowed}");
    assert_eq!(
        allowed["Reason"],
        format!("Matched L4 intention: {web} => {db} (Precedence: 9, Action: ALLOW)")
    );
    let denied = t.api.authorize(&db, &uri(&api)).await;
    assert_eq!(denied["Authorized"], false, "{denied}");
    // The intention check decides as authorize does, naming services instead of
    // certificates.
    assert_eq!(t.api.check(&web, &db).await, json!({"Allowed": true}));
    assert_eq!(t.api.check(&api, &db).await, json!({"Allowed": false}));
    assert_eq!(
        denied["Reason"],
        format!("Matched L4 intention: * => {db} (Precedence: 8, Action: DENY)")
    );

    let entry = t
        .api
        .ok(&format!("/v1/config/service-intentions/{db}"))
        .await;
    let view = entry.json();
    assert_eq!(view["Kind"], "service-intentions");
    assert_eq!(view["Name"], db.as_str());
    let sources = view["Sources"].as_array().unwrap();
    assert_eq!(sources[0]["Name"], web.as_str());
    assert_eq!(sources[0]["Action"], "allow");
    assert_eq!(sources[0]["Precedence"], 9);
    assert_eq!(sources[0]["Type"], "consul");
    assert_eq!(sources[1]["Precedence"], 8);
    assert!(view["ModifyIndex"].as_u64().unwrap() > 0);
    assert_eq!(entry.index(), view["ModifyIndex"].as_u64().unwrap());

    // The legacy API sees the same intentions.
    let matched = t
        .api
        .ok(&format!(
            "/v1/connect/intentions/match?by=destination&name={db}"
        ))
        .await
        .json();
    let list = matched[&db].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["SourceName"], web.as_str());
    assert_eq!(list[0]["DestinationName"], db.as_str());
    assert_eq!(list[1]["SourceName"], "*");
    let exact = t
        .api
        .ok(&format!(
            "/v1/connect/intentions/exact?source={web}&destination={db}"
        ))
        .await
        .json();
    assert_eq!(exact["Action"], "allow");
    // ... and can change them: web is now denied too.
    let answer = t
        .api
        .put(
            &format!("/v1/connect/intentions/exact?source={web}&destination={db}"),
            json!({"Action": "deny"}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(t.api.authorize(&db, &uri(&web)).await["Authorized"], false);
    assert_eq!(t.api.check(&web, &db).await, json!({"Allowed": false}));

    // Deleting the entry restores the default.
    let answer = t
        .api
        .delete(&format!("/v1/config/service-intentions/{db}"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let missing = t
        .api
        .get(&format!("/v1/config/service-intentions/{db}"))
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.body.trim(),
        format!("Config entry not found for \"service-intentions\" / \"{db}\"")
    );
}

#[tokio::test]
async fn authorize_and_intentions_refuse_bad_input_with_consuls_messages() {
    let t = target().await;
    let cases = [
        (
            json!({"ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/web"}),
            "Target service must be specified",
        ),
        (json!({"Target": "db"}), "Client URI must be specified"),
        (
            json!({"Target": "db", "ClientCertURI": "spiffe://x.consul/agent/client/dc/dc1/id/abc"}),
            "ClientCertURI not a valid Service identifier",
        ),
    ];
    for (body, message) in cases {
        let answer = t
            .api
            .post("/v1/agent/connect/authorize", body.clone())
            .await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert!(answer.body.contains(message), "{body}: {}", answer.body);
    }
    let answer = t
        .api
        .put(
            "/v1/config",
            json!({"Kind": "service-intentions", "Name": unique("db"), "Sources": [{"Name": "web", "Action": "maybe"}]}),
        )
        .await;
    assert_ne!(answer.status, 200);
    assert!(
        answer
            .body
            .contains("Action must be set to 'allow' or 'deny'"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn default_intention_policy_deny_refuses_unmatched_connections() {
    let t = embedded(RegistryConfig {
        default_intention_policy: Some(IntentionAction::Deny),
        ..Default::default()
    })
    .await;
    let trust_domain = t.api.ok("/v1/agent/connect/ca/roots").await.json()["TrustDomain"]
        .as_str()
        .unwrap()
        .to_string();
    let web = format!("spiffe://{trust_domain}/ns/default/dc/dc1/svc/web");
    assert_eq!(
        t.api.authorize("db", &web).await,
        json!({"Authorized": false, "Reason": "Default intention policy"})
    );
    assert_eq!(t.api.check("web", "db").await, json!({"Allowed": false}));
    let missing = t.api.get("/v1/connect/intentions/check?source=web").await;
    assert_eq!(missing.status, 400);
    assert!(
        missing
            .body
            .contains("required query parameter 'destination' not set"),
        "{}",
        missing.body
    );
    let answer = t
        .api
        .put(
            "/v1/config",
            json!({"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Action": "allow"}]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(t.api.authorize("db", &web).await["Authorized"], true);
    assert_eq!(t.api.check("web", "db").await, json!({"Allowed": true}));
}

#[tokio::test]
async fn tag_filters_the_service_view_and_is_ignored_by_the_connect_views() {
    // Consul's Health.ServiceNodes picks serviceNodesConnect for /v1/health/connect, which
    // takes no tags, before it looks at TagFilter; Catalog.ServiceNodes likewise.
    let t = target().await;
    let name = unique("tagged");
    for (id, tag) in [("a", "add"), ("b", "echo")] {
        t.api
            .register(json!({
                "ID": format!("{name}-{id}"), "Name": name, "Port": 9001, "Address": "127.0.0.1",
                "Tags": [tag], "Connect": {"Native": true},
            }))
            .await;
    }
    let count = |view: Value| view.as_array().unwrap().len();
    for path in ["health/service", "catalog/service"] {
        let view = t.api.ok(&format!("/v1/{path}/{name}?tag=add")).await.json();
        assert_eq!(count(view), 1, "{path} honours ?tag=");
    }
    for path in ["health/connect", "catalog/connect"] {
        let view = t.api.ok(&format!("/v1/{path}/{name}?tag=add")).await.json();
        assert_eq!(count(view), 2, "{path} ignores ?tag=");
    }
    for id in ["a", "b"] {
        t.api.deregister(&format!("{name}-{id}")).await;
    }
}
