//! Proxy variables and the Consul client: an agent on loopback is always reached
//! directly, whatever `HTTP_PROXY`, `HTTPS_PROXY` or `ALL_PROXY` say; an agent elsewhere
//! goes through the proxy unless `NO_PROXY` names it (Go's `http.ProxyFromEnvironment`,
//! which Consul's own client uses).
//!
//! Alone in its test binary because it sets process-wide environment variables, as a
//! shell with a proxy configured does, before any runtime thread or HTTP client exists.

use crate::common;

use axum::Router;
use common::{Agent, serve_http};
use plugworker_consul_client::{ConsulClient, ConsulConfig, Error};
use std::sync::{Arc, Mutex};

/// An HTTP proxy on loopback `port` that answers every request as an agent would answer
/// `/v1/status/leader`, recording the request targets it was asked for.
async fn recording_proxy(port: u16) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new().fallback({
        let seen = seen.clone();
        move |uri: axum::http::Uri| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(uri.to_string());
                axum::Json("answered-by-the-proxy:8300")
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    seen
}

fn client(address: &str) -> ConsulClient {
    ConsulClient::new(ConsulConfig {
        address: address.to_string(),
        ..ConsulConfig::default()
    })
    .unwrap()
}

#[test]
fn an_agent_on_loopback_is_never_reached_through_a_proxy() {
    // The proxy's port is taken before the runtime exists, so the variables can be set
    // while this is the only thread.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    drop(listener);
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        // SAFETY: no other thread exists yet (the runtime is built below).
        unsafe { std::env::set_var(name, &proxy_url) };
    }
    // SAFETY: as above.
    unsafe {
        std::env::set_var("NO_PROXY", "exempt.consul.invalid");
        std::env::remove_var("no_proxy");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // First the agent alone: the proxy port is closed, so a proxied request fails.
        let agent = Agent::default();
        let agent_address = serve_http(agent.router()).await;
        let port = agent_address.port();
        for address in [
            agent_address.to_string(),
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}"),
        ] {
            let leader = client(&address).leader().await;
            assert_eq!(
                leader.as_deref().ok(),
                Some("10.0.1.10:8300"),
                "{address}: {leader:?}"
            );
        }
        assert_eq!(agent.requests().len(), 3);

        // Now a proxy on the variables' port: loopback still goes around it, an agent
        // elsewhere goes through it, and NO_PROXY still exempts one by name.
        let seen = recording_proxy(proxy_port).await;
        let leader = client(&format!("localhost:{port}")).leader().await.unwrap();
        assert_eq!(leader, "10.0.1.10:8300");
        assert!(seen.lock().unwrap().is_empty(), "{:?}", seen.lock().unwrap());
        let remote = client("consul.example.invalid:8500").leader().await.unwrap();
        assert_eq!(remote, "answered-by-the-proxy:8300");
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["http://consul.example.invalid:8500/v1/status/leader".to_string()]
        );
        let exempt = client("exempt.consul.invalid:8500").leader().await;
        assert!(
            matches!(exempt, Err(Error::Transport { .. })),
            "NO_PROXY names it, so it is resolved directly (and .invalid never resolves): {exempt:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1, "NO_PROXY is honoured");
    });
}
