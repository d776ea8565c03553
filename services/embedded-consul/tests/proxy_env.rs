//! Proxy variables and HTTP checks: a check of a loopback URL is probed directly, as
//! Consul's checks do (Go's `http.ProxyFromEnvironment` never proxies loopback), so a
//! controller's `/healthz` check still passes on a machine with a proxy configured.
//!
//! Alone in its test binary because it sets process-wide environment variables, as a
//! shell with a proxy configured does, before any runtime thread or HTTP client exists.

use plugworker_embedded_consul::{Registry, RegistryConfig};
use serde_json::json;
use std::time::Duration;

#[test]
fn an_http_check_of_a_loopback_url_never_goes_through_a_proxy() {
    // A proxy that accepts and never answers: a probe sent to it would time out.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://{}", black_hole.local_addr().unwrap());
    for name in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        // SAFETY: no other thread exists yet: the runtime is built below.
        unsafe { std::env::set_var(name, &proxy) };
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let healthz = format!("http://{}/healthz", target.local_addr().unwrap());
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "fine" }));
        tokio::spawn(async move { axum::serve(target, app).await });

        let registry = Registry::spawn("127.0.0.1:0", RegistryConfig::default())
            .await
            .unwrap();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let agent = format!("{}/v1/agent", registry.url().trim_end_matches('/'));
        let registered = http
            .put(format!("{agent}/service/register"))
            .json(&json!({"Name": "behind-a-proxy", "Check": {
                "CheckID": "behind-a-proxy-http", "HTTP": healthz,
                "Interval": "200ms", "Timeout": "1s"}}))
            .send()
            .await
            .unwrap();
        assert!(registered.status().is_success(), "{registered:?}");

        // Wait on the check's own state: passing, or a probe that failed (whose output
        // says why); a proxied probe would fail after its 1 s timeout.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let check = loop {
            let checks: serde_json::Value = http
                .get(format!("{agent}/checks"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let check = checks["behind-a-proxy-http"].clone();
            let output = check["Output"].as_str().unwrap_or_default();
            if check["Status"] == "passing" || !output.is_empty() {
                break check;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never probed: {check}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(check["Status"], "passing", "{check}");
        assert!(
            check["Output"].as_str().unwrap().contains("fine"),
            "{check}"
        );
    });
}
