//! What the client sends, per setting, as the fake agent receives it: the token (from the
//! token file), basic auth, the namespace and partition parameters, a path prefix, a Unix
//! socket; and addresses that cannot work are refused naming `CONSUL_HTTP_ADDR`.

use crate::common;

use axum::Router;
use common::{Agent, plugworker, serve_http};
use plugworker_consul_client::{ConsulClient, ConsulConfig, HttpAuth, QueryOptions};

fn header<'a>(seen: &'a common::Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn token_file_auth_namespace_and_partition_go_with_every_request() {
    let agent = Agent::default();
    let address = serve_http(agent.router()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("consul-token");
    std::fs::write(&token_file, "  9c1b1c0e-from-the-file \n").unwrap();

    let client = ConsulClient::new(ConsulConfig {
        address: format!("http://{address}"),
        token: Some("from-the-variable".into()),
        token_file: Some(token_file),
        http_auth: Some(HttpAuth::parse("admin:secret")),
        namespace: Some("team-a".into()),
        partition: Some("part-1".into()),
        ..ConsulConfig::default()
    })
    .unwrap();
    client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    client
        .health_service("redis", &["primary"], true, QueryOptions::default())
        .await
        .unwrap();

    let requests = agent.requests();
    assert_eq!(requests.len(), 2);
    for seen in &requests {
        // The file wins over the variable, trimmed, as in Consul's Go client.
        assert_eq!(
            header(seen, "X-Consul-Token"),
            Some("9c1b1c0e-from-the-file")
        );
        assert_eq!(
            header(seen, "Authorization"),
            Some("Basic YWRtaW46c2VjcmV0"),
            "admin:secret"
        );
        assert_eq!(seen.query.get("ns").map(String::as_str), Some("team-a"));
        assert_eq!(
            seen.query.get("partition").map(String::as_str),
            Some("part-1")
        );
    }
    assert_eq!(
        requests[1].query.get("tag").map(String::as_str),
        Some("primary")
    );
    assert_eq!(
        requests[1].query.get("passing").map(String::as_str),
        Some("true")
    );
}

#[tokio::test]
async fn nothing_extra_is_sent_by_default() {
    let agent = Agent::default();
    let address = serve_http(agent.router()).await;
    let client = ConsulClient::new(ConsulConfig {
        address: address.to_string(),
        ..ConsulConfig::default()
    })
    .unwrap();
    client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    let seen = &agent.requests()[0];
    assert!(seen.query.is_empty(), "{:?}", seen.query);
    assert_eq!(header(seen, "X-Consul-Token"), None);
    assert_eq!(header(seen, "Authorization"), None);
}

#[tokio::test]
async fn a_path_prefix_in_the_address_prefixes_every_request() {
    let agent = Agent::default();
    let address = serve_http(Router::new().nest("/consul", agent.router())).await;
    let client = ConsulClient::new(ConsulConfig {
        address: format!("http://{address}/consul"),
        ..ConsulConfig::default()
    })
    .unwrap();
    let (services, _) = client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(services.len(), 5);
}

#[cfg(unix)]
#[tokio::test]
async fn a_unix_socket_address_is_dialled() {
    let agent = Agent::default();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("consul.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let router = agent.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let address = format!("unix://{}", socket.display());
    let client = ConsulClient::new(ConsulConfig {
        address: address.clone(),
        ..ConsulConfig::default()
    })
    .unwrap();
    assert_eq!(client.address(), address);
    let (services, _) = client
        .catalog_services(QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(services.len(), 5);
}

#[test]
fn addresses_that_cannot_work_are_refused_naming_the_variable() {
    for (address, reason) in [
        ("ftp://consul:8500", "unknown scheme"),
        ("http://", "no host"),
        ("unix://", "socket path"),
        ("http://consul:notaport", "invalid port"),
    ] {
        let error = ConsulClient::new(ConsulConfig {
            address: address.into(),
            ..ConsulConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("CONSUL_HTTP_ADDR"), "{address}: {error}");
        assert!(error.contains(reason), "{address}: {error}");
    }
    let error = ConsulClient::new(ConsulConfig {
        token_file: Some("/nonexistent/token".into()),
        ..ConsulConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("CONSUL_HTTP_TOKEN_FILE") && error.contains("/nonexistent/token"),
        "{error}"
    );
}

#[test]
fn ssl_upgrades_http_but_never_downgrades_https() {
    let scheme = |address: &str, ssl: bool| {
        ConsulClient::new(ConsulConfig {
            address: address.into(),
            ssl,
            ..ConsulConfig::default()
        })
        .unwrap()
        .base_url()
        .scheme()
        .to_string()
    };
    assert_eq!(scheme("consul:8500", false), "http");
    assert_eq!(scheme("consul:8501", true), "https");
    assert_eq!(scheme("http://consul:8501", true), "https");
    assert_eq!(scheme("https://consul:8501", false), "https");
}

#[tokio::test]
async fn the_plugworker_command_sends_the_token_file_and_namespace_from_the_environment() {
    let agent = Agent::default();
    let address = serve_http(agent.router()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token\n").unwrap();
    let output = plugworker()
        .args(["algorithms", "--json"])
        .env("CONSUL_HTTP_ADDR", address.to_string())
        .env("CONSUL_HTTP_TOKEN_FILE", &token_file)
        .env("CONSUL_NAMESPACE", "team-a")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let requests = agent.requests();
    assert!(!requests.is_empty());
    for seen in &requests {
        assert_eq!(
            header(seen, "X-Consul-Token"),
            Some("file-token"),
            "{}",
            seen.path
        );
        assert_eq!(seen.query.get("ns").map(String::as_str), Some("team-a"));
    }

    let output = plugworker()
        .args(["algorithms"])
        .env("CONSUL_HTTP_ADDR", address.to_string())
        .env("CONSUL_HTTP_SSL", "maybe")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CONSUL_HTTP_SSL (--consul-ssl)") && stderr.contains("\"maybe\""),
        "{stderr}"
    );
}
