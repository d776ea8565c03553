//! Blocking-query loops do not spin on an agent (or a proxy in front of one) that answers
//! every blocking query at once with the same index: Consul's documentation asks clients
//! to rate-limit the loop. Measured over real HTTP, with a generous bound: a loop without
//! the limit sends thousands of requests in the window.

use crate::common;

use axum::Router;
use axum::routing::get;
use common::serve_http;
use plugworker_consul_client::watch::{DEFAULT_BURST, DEFAULT_INTERVAL};
use plugworker_consul_client::{ConsulClient, ConsulConfig, Watch};
use plugworker_discovery::Resolver;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const WINDOW: Duration = Duration::from_secs(3);

/// Answers everything at once with index 7, counting requests.
async fn impatient_agent() -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let counter = |body: &'static str| {
        let count = count.clone();
        move || async move {
            count.fetch_add(1, Ordering::Relaxed);
            (
                [
                    ("Content-Type", "application/json"),
                    ("X-Consul-Index", "7"),
                ],
                body,
            )
        }
    };
    let router = Router::new()
        .route("/v1/catalog/services", get(counter(r#"{"web": []}"#)))
        .route("/v1/health/service/web", get(counter("[]")));
    (serve_http(router).await.to_string(), count)
}

fn client(address: &str) -> ConsulClient {
    ConsulClient::new(ConsulConfig {
        address: address.into(),
        ..ConsulConfig::default()
    })
    .unwrap()
}

/// At most the burst, one request per interval over the window, and slack for slow
/// machines; a spinning loop sends orders of magnitude more.
fn bound(watches: u64) -> u64 {
    let per_watch = u64::from(DEFAULT_BURST) + WINDOW.as_secs() / DEFAULT_INTERVAL.as_secs() + 2;
    2 * watches * per_watch
}

#[tokio::test]
async fn a_watch_on_an_agent_repeating_its_index_polls_instead_of_spinning() {
    let (address, count) = impatient_agent().await;
    let client = client(&address);
    let mut watch = Watch::new(Duration::from_secs(300));
    let first = watch.next(|o| client.catalog_services(o)).await.unwrap();
    assert_eq!(first.len(), 1);
    let outcome = tokio::time::timeout(WINDOW, watch.next(|o| client.catalog_services(o))).await;
    assert!(outcome.is_err(), "the same index is not a change");
    let sent = count.load(Ordering::Relaxed);
    assert!(sent >= 2, "it kept asking: {sent}");
    assert!(sent <= bound(1), "{sent} requests in {WINDOW:?}");
}

#[tokio::test]
async fn a_resolver_on_an_agent_repeating_its_index_polls_instead_of_spinning() {
    let (address, count) = impatient_agent().await;
    let resolver = Resolver::start(client(&address), Duration::from_secs(300));
    tokio::time::sleep(WINDOW).await;
    let sent = count.load(Ordering::Relaxed);
    // Two watches: the catalog and the one service in it.
    assert!(sent >= 2, "it kept asking: {sent}");
    assert!(sent <= bound(2), "{sent} requests in {WINDOW:?}");
    assert_eq!(resolver.stats().consul_errors.load(Ordering::Relaxed), 0);
}
