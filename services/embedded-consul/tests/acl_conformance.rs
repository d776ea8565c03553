//! Conformance of the embedded registry's ACLs with Consul's: bootstrap, policies in the
//! rule language (HCL and JSON forms), tokens (by policy ID or name, service identities),
//! the three ways a token travels, and enforcement on registration, deregistration,
//! checks, reads (filtered, with `X-Consul-Results-Filtered-By-ACLs`), KV, leaf
//! certificates and authorize, with Consul's `403` texts.
//!
//! By default every test runs against an embedded registry with ACLs on and default
//! policy `deny`, bootstrapped by the test. To run them against a real agent, start it
//! with ACLs on and `default_policy = "deny"`, bootstrap it, and set `CONSUL_HTTP_ADDR` and
//! `PLUGWORKER_CONSUL_ACL_TOKEN` (its management token); with `CONSUL_HTTP_ADDR` but no
//! token the tests are skipped (a real agent without ACLs cannot answer them).

use plugworker_embedded_consul::{IntentionAction, Registry, RegistryConfig, RunningRegistry};
use serde_json::{Value, json};

const ANONYMOUS: &str = "00000000-0000-0000-0000-000000000002";

struct Target {
    base: String,
    management: String,
    _embedded: Option<RunningRegistry>,
}

/// `None` when a real agent is configured without a management token: skip.
async fn target() -> Option<Target> {
    if let Ok(address) = std::env::var("CONSUL_HTTP_ADDR") {
        let Ok(management) = std::env::var("PLUGWORKER_CONSUL_ACL_TOKEN") else {
            eprintln!("skipped: PLUGWORKER_CONSUL_ACL_TOKEN is not set for {address}");
            return None;
        };
        let base = if address.contains("://") {
            address
        } else {
            format!("http://{address}")
        };
        return Some(Target {
            base,
            management,
            _embedded: None,
        });
    }
    let registry = Registry::spawn(
        "127.0.0.1:0",
        RegistryConfig {
            acl_enabled: true,
            acl_default_policy: IntentionAction::Deny,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let base = registry.url();
    let answer = send(&base, reqwest::Method::PUT, "/v1/acl/bootstrap", None, None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let management = answer.json()["SecretID"].as_str().unwrap().to_string();
    Some(Target {
        base,
        management,
        _embedded: Some(registry),
    })
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

    fn filtered(&self) -> bool {
        self.headers
            .get("X-Consul-Results-Filtered-By-ACLs")
            .is_some_and(|v| v == "true")
    }
}

async fn send(
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.header("X-Consul-Token", token);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

impl Target {
    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        send(&self.base, reqwest::Method::GET, path, token, None).await
    }

    async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        send(&self.base, reqwest::Method::PUT, path, token, Some(body)).await
    }

    async fn admin_put(&self, path: &str, body: Value) -> Value {
        let answer = self.put(path, Some(&self.management), body.clone()).await;
        assert_eq!(answer.status, 200, "{path} {body}: {}", answer.body);
        if answer.body.trim().is_empty() {
            Value::Null
        } else {
            answer.json()
        }
    }

    /// A policy from `rules` and a token holding it: (accessor, secret).
    async fn token_with(&self, rules: &str) -> (String, String) {
        let name = unique("policy");
        self.admin_put(
            "/v1/acl/policy",
            json!({"Name": name, "Description": "test", "Rules": rules}),
        )
        .await;
        let token = self
            .admin_put(
                "/v1/acl/token",
                json!({"Description": "test", "Policies": [{"Name": name}]}),
            )
            .await;
        (
            token["AccessorID"].as_str().unwrap().to_string(),
            token["SecretID"].as_str().unwrap().to_string(),
        )
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

fn denied(accessor: &str, permission: &str, name: &str) -> String {
    format!(
        "Permission denied: token with AccessorID '{accessor}' lacks permission '{permission}' on \"{name}\""
    )
}

fn runner_rules(service: &str) -> String {
    format!(
        r#"
        # A runner writes only its own service and reads the rest.
        service "{service}" {{ policy = "write" }}
        service_prefix "" {{ policy = "read" }}
        node_prefix "" {{ policy = "read" }}
        "#
    )
}

#[tokio::test]
async fn bootstrap_policies_and_tokens_answer_like_consul() {
    let Some(t) = target().await else { return };
    if t._embedded.is_some() {
        let again = t.put("/v1/acl/bootstrap", None, json!({})).await;
        assert_eq!(again.status, 403);
        assert!(
            again
                .body
                .starts_with("Permission denied: ACL bootstrap no longer allowed (reset index: "),
            "{}",
            again.body
        );
    }
    let name = unique("policy");
    let rules = r#"service_prefix "" { policy = "read" }"#;
    let policy = t
        .admin_put(
            "/v1/acl/policy",
            json!({"Name": name, "Description": "reads", "Rules": rules}),
        )
        .await;
    let id = policy["ID"].as_str().unwrap();
    assert_eq!(policy["Name"], name.as_str());
    assert_eq!(policy["Rules"], rules);
    assert!(policy["CreateIndex"].as_u64().unwrap() > 0);
    let read = t
        .get(&format!("/v1/acl/policy/{id}"), Some(&t.management))
        .await
        .json();
    assert_eq!(read["Rules"], rules);
    let by_name = t
        .get(&format!("/v1/acl/policy/name/{name}"), Some(&t.management))
        .await
        .json();
    assert_eq!(by_name["ID"], id);
    let list = t.get("/v1/acl/policies", Some(&t.management)).await.json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|p| p["Name"] == "global-management")
    );

    // Tokens link policies by ID or by name and read back both.
    let token = t
        .admin_put(
            "/v1/acl/token",
            json!({"Description": "reader", "Policies": [{"ID": id}]}),
        )
        .await;
    assert_eq!(token["Policies"], json!([{"ID": id, "Name": name}]));
    let secret = token["SecretID"].as_str().unwrap();
    let me = t.get("/v1/acl/token/self", Some(secret)).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["AccessorID"], token["AccessorID"]);
    // A reader may not manage ACLs.
    let refused = t.get("/v1/acl/tokens", Some(secret)).await;
    assert_eq!(refused.status, 403);
    assert!(
        refused.body.contains("lacks permission 'acl:read'"),
        "{}",
        refused.body
    );
    // An unknown policy is refused; a deleted token stops resolving.
    let bad = t
        .put(
            "/v1/acl/token",
            Some(&t.management),
            json!({"Policies": [{"Name": unique("missing")}]}),
        )
        .await;
    assert_ne!(bad.status, 200);
    let deleted = send(
        &t.base,
        reqwest::Method::DELETE,
        &format!("/v1/acl/token/{}", token["AccessorID"].as_str().unwrap()),
        Some(&t.management),
        None,
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let gone = t.get("/v1/acl/token/self", Some(secret)).await;
    assert_eq!((gone.status, gone.body.trim()), (403, "ACL not found"));
    let unknown = t.get("/v1/catalog/services", Some("not-a-token")).await;
    assert_eq!(
        (unknown.status, unknown.body.trim()),
        (403, "ACL not found")
    );
}

#[tokio::test]
async fn a_token_registers_only_its_own_service_and_cannot_take_over_another() {
    let Some(t) = target().await else { return };
    let mine = unique("runner");
    let theirs = unique("victim");
    let (accessor, secret) = t.token_with(&runner_rules(&mine)).await;

    let ok = t
        .put(
            "/v1/agent/service/register",
            Some(&secret),
            json!({"ID": mine, "Name": mine, "Port": 9000, "Check": {"TTL": "30s"}}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);

    // Another service's name: 403 with Consul's text.
    let refused = t
        .put(
            "/v1/agent/service/register",
            Some(&secret),
            json!({"Name": theirs, "Port": 9000}),
        )
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.body.trim(),
        denied(&accessor, "service:write", &theirs)
    );
    // No token: the anonymous token, default deny.
    let anonymous = t
        .put(
            "/v1/agent/service/register",
            None,
            json!({"Name": mine, "Port": 9000}),
        )
        .await;
    assert_eq!(anonymous.status, 403);
    assert_eq!(
        anonymous.body.trim(),
        denied(ANONYMOUS, "service:write", &mine)
    );

    // The victim registers with the management token; the runner cannot re-register
    // its instance ID under its own name, deregister it, or fail its check.
    t.admin_put(
        "/v1/agent/service/register",
        json!({"ID": theirs, "Name": theirs, "Port": 9001, "Check": {"TTL": "30s"}}),
    )
    .await;
    let hijack = t
        .put(
            "/v1/agent/service/register",
            Some(&secret),
            json!({"ID": theirs, "Name": mine, "Port": 6666}),
        )
        .await;
    assert_eq!(hijack.status, 403, "{}", hijack.body);
    assert_eq!(
        hijack.body.trim(),
        denied(&accessor, "service:write", &theirs)
    );
    let deregister = t
        .put(
            &format!("/v1/agent/service/deregister/{theirs}"),
            Some(&secret),
            json!(null),
        )
        .await;
    assert_eq!(deregister.status, 403, "{}", deregister.body);
    let fail = t
        .put(
            &format!("/v1/agent/check/fail/service:{theirs}"),
            Some(&secret),
            json!(null),
        )
        .await;
    assert_eq!(fail.status, 403, "{}", fail.body);
    // Its own check it may pass.
    let pass = t
        .put(
            &format!("/v1/agent/check/pass/service:{mine}"),
            Some(&secret),
            json!(null),
        )
        .await;
    assert_eq!(pass.status, 200, "{}", pass.body);
    let victim = t
        .get(&format!("/v1/health/service/{theirs}"), Some(&t.management))
        .await
        .json();
    assert_eq!(victim[0]["Service"]["Port"], 9001, "{victim}");

    for id in [&mine, &theirs] {
        t.admin_put(&format!("/v1/agent/service/deregister/{id}"), json!(null))
            .await;
    }
}

#[tokio::test]
async fn tokens_travel_as_header_bearer_or_query() {
    let Some(t) = target().await else { return };
    let service = unique("carrier");
    let (_, secret) = t.token_with(&runner_rules(&service)).await;
    let body = json!({"Name": service, "Port": 9000}).to_string();
    let client = reqwest::Client::new();
    let bearer = client
        .put(format!("{}/v1/agent/service/register", t.base))
        .header("Authorization", format!("Bearer {secret}"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let query = client
        .put(format!(
            "{}/v1/agent/service/register?token={secret}",
            t.base
        ))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 200);
    t.admin_put(
        &format!("/v1/agent/service/deregister/{service}"),
        json!(null),
    )
    .await;
}

#[tokio::test]
async fn reads_are_filtered_to_what_the_token_may_read() {
    let Some(t) = target().await else { return };
    let visible = unique("visible");
    let hidden = unique("hidden");
    let prefix = unique("app");
    for name in [&visible, &hidden] {
        t.admin_put(
            "/v1/agent/service/register",
            json!({"Name": name, "Port": 9000}),
        )
        .await;
    }
    t.admin_put(&format!("/v1/kv/{prefix}/open/a"), json!("x"))
        .await;
    t.admin_put(&format!("/v1/kv/{prefix}/closed/b"), json!("y"))
        .await;
    let (accessor, secret) = t
        .token_with(&format!(
            r#"{{"service": {{"{visible}": {{"policy": "read"}}}},
                "node_prefix": {{"": {{"policy": "read"}}}},
                "key_prefix": {{"{prefix}/open/": {{"policy": "write"}}}}}}"#
        ))
        .await;

    let services = t.get("/v1/catalog/services", Some(&secret)).await;
    let names: Vec<String> = services
        .json()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(names.contains(&visible), "{names:?}");
    assert!(!names.contains(&hidden), "{names:?}");
    assert!(services.filtered());

    let health = t
        .get(&format!("/v1/health/service/{hidden}"), Some(&secret))
        .await;
    assert_eq!(health.json(), json!([]));
    assert!(health.filtered());
    let health = t
        .get(&format!("/v1/health/service/{visible}"), Some(&secret))
        .await;
    assert_eq!(health.json().as_array().unwrap().len(), 1);
    assert!(!health.filtered());

    // KV: writes and reads follow key rules; a recursive read drops what is not readable.
    let write = t
        .put(&format!("/v1/kv/{prefix}/open/c"), Some(&secret), json!(1))
        .await;
    assert_eq!(write.status, 200, "{}", write.body);
    let refused = t
        .put(
            &format!("/v1/kv/{prefix}/closed/c"),
            Some(&secret),
            json!(1),
        )
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.body.trim(),
        denied(&accessor, "key:write", &format!("{prefix}/closed/c"))
    );
    let listed = t
        .get(&format!("/v1/kv/{prefix}/?recurse"), Some(&secret))
        .await;
    let keys: Vec<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        vec![format!("{prefix}/open/a"), format!("{prefix}/open/c")]
    );
    assert!(listed.filtered());

    for name in [&visible, &hidden] {
        t.admin_put(&format!("/v1/agent/service/deregister/{name}"), json!(null))
            .await;
    }
    send(
        &t.base,
        reqwest::Method::DELETE,
        &format!("/v1/kv/{prefix}/?recurse"),
        Some(&t.management),
        None,
    )
    .await;
}

#[tokio::test]
async fn service_and_connect_views_need_service_and_node_read() {
    // Consul answers /v1/health/connect and /v1/catalog/connect with the same queries and
    // ACL filters as /v1/health/service and /v1/catalog/service: an instance needs
    // `service:read` and `node:read` on its node.
    let Some(t) = target().await else { return };
    let name = unique("native");
    t.admin_put(
        "/v1/agent/service/register",
        json!({"Name": name, "Port": 9000, "Connect": {"Native": true}}),
    )
    .await;
    let (_, service_only) = t
        .token_with(&format!(r#"service "{name}" {{ policy = "read" }}"#))
        .await;
    let (_, with_node) = t
        .token_with(&format!(
            r#"
            service "{name}" {{ policy = "read" }}
            node_prefix "" {{ policy = "read" }}
            "#
        ))
        .await;

    for path in [
        format!("/v1/health/service/{name}"),
        format!("/v1/health/connect/{name}"),
        format!("/v1/catalog/service/{name}"),
        format!("/v1/catalog/connect/{name}"),
    ] {
        let hidden = t.get(&path, Some(&service_only)).await;
        assert_eq!(hidden.status, 200, "{path}: {}", hidden.body);
        assert_eq!(hidden.json(), json!([]), "{path}");
        assert!(hidden.filtered(), "{path}");
        let shown = t.get(&path, Some(&with_node)).await;
        assert_eq!(shown.status, 200, "{path}: {}", shown.body);
        let entries = shown.json();
        let entries = entries.as_array().unwrap();
        assert_eq!(entries.len(), 1, "{path}: {entries:?}");
        let service = if path.contains("/health/") {
            &entries[0]["Service"]["Service"]
        } else {
            &entries[0]["ServiceName"]
        };
        assert_eq!(service, &json!(name), "{path}");
        assert!(!shown.filtered(), "{path}");
    }

    t.admin_put(&format!("/v1/agent/service/deregister/{name}"), json!(null))
        .await;
}

#[tokio::test]
async fn leaf_and_authorize_need_service_write_and_follow_the_default_deny() {
    let Some(t) = target().await else { return };
    let db = unique("db");
    let web = unique("web");
    let (accessor, secret) = t.token_with(&runner_rules(&db)).await;

    let leaf = t
        .get(&format!("/v1/agent/connect/ca/leaf/{db}"), Some(&secret))
        .await;
    assert_eq!(leaf.status, 200, "{}", leaf.body);
    let other = t
        .get(&format!("/v1/agent/connect/ca/leaf/{web}"), Some(&secret))
        .await;
    assert_eq!(other.status, 403);
    assert_eq!(other.body.trim(), denied(&accessor, "service:write", &web));
    // Roots need no token.
    assert_eq!(t.get("/v1/agent/connect/ca/roots", None).await.status, 200);

    let roots = t
        .get("/v1/agent/connect/ca/roots", Some(&secret))
        .await
        .json();
    let trust_domain = roots["TrustDomain"].as_str().unwrap();
    let dc = t.get("/v1/agent/self", Some(&t.management)).await.json()["Config"]["Datacenter"]
        .as_str()
        .unwrap()
        .to_string();
    let web_uri = format!("spiffe://{trust_domain}/ns/default/dc/{dc}/svc/{web}");
    let authorize = |target: String| {
        let body = json!({"Target": target, "ClientCertURI": web_uri, "ClientCertSerial": "01"});
        let secret = secret.clone();
        let base = t.base.clone();
        async move {
            send(
                &base,
                reqwest::Method::POST,
                "/v1/agent/connect/authorize",
                Some(&secret),
                Some(body),
            )
            .await
        }
    };
    // No intention: default deny, because the ACL default policy is deny.
    let answer = authorize(db.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.json(),
        json!({"Authorized": false, "Reason": "Default behavior configured by ACLs"})
    );
    // Asking about another target needs write on it.
    let answer = authorize(web.clone()).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.body.trim(), denied(&accessor, "service:write", &web));
    // An intention (written with the management token) allows web -> db.
    t.admin_put(
        "/v1/config",
        json!({"Kind": "service-intentions", "Name": db, "Sources": [{"Name": web, "Action": "allow"}]}),
    )
    .await;
    let answer = authorize(db.clone()).await;
    assert_eq!(answer.json()["Authorized"], true, "{}", answer.body);
    // The runner's token may read its intentions but not write them.
    let write = t
        .put(
            "/v1/config",
            Some(&secret),
            json!({"Kind": "service-intentions", "Name": db, "Sources": [{"Name": "*", "Action": "allow"}]}),
        )
        .await;
    assert_eq!(write.status, 403, "{}", write.body);
    send(
        &t.base,
        reqwest::Method::DELETE,
        &format!("/v1/config/service-intentions/{db}"),
        Some(&t.management),
        None,
    )
    .await;
}

#[tokio::test]
async fn acl_endpoints_answer_401_when_acls_are_off() {
    if std::env::var("CONSUL_HTTP_ADDR").is_ok() {
        return;
    }
    let registry = Registry::spawn("127.0.0.1:0", RegistryConfig::default())
        .await
        .unwrap();
    let answer = send(
        &registry.url(),
        reqwest::Method::PUT,
        "/v1/acl/bootstrap",
        None,
        None,
    )
    .await;
    assert_eq!(
        (answer.status, answer.body.trim()),
        (401, "ACL support disabled")
    );
    // ... and any token is accepted, like `consul agent -dev`.
    let answer = send(
        &registry.url(),
        reqwest::Method::GET,
        "/v1/catalog/services",
        Some("whatever"),
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn a_configured_bootstrap_token_manages_and_closes_bootstrap() {
    if std::env::var("CONSUL_HTTP_ADDR").is_ok() {
        return;
    }
    let registry = Registry::spawn(
        "127.0.0.1:0",
        RegistryConfig {
            acl_enabled: true,
            acl_default_policy: IntentionAction::Deny,
            acl_bootstrap_token: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let me = send(
        &registry.url(),
        reqwest::Method::GET,
        "/v1/acl/token/self",
        Some("s3cret"),
        None,
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["Policies"][0]["Name"], "global-management");
    let bootstrap = send(
        &registry.url(),
        reqwest::Method::PUT,
        "/v1/acl/bootstrap",
        None,
        None,
    )
    .await;
    assert_eq!(bootstrap.status, 403, "{}", bootstrap.body);
}
