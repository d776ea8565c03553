//! Prometheus text exposition.
//!
//! Metrics are Prometheus series scraped over HTTP rather than pushed over OTLP: the
//! controller already serves HTTP (`/healthz`), Prometheus is what the dashboards query,
//! pull needs no collector on the metrics path, and a scrape that fails is itself a
//! signal. Each component owns a [`MetricsRegistry`] of typed families; [`serve`] exposes
//! it. (Named for what it holds: "registry" alone, in this project, is the Consul-compatible
//! service registry.)

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::exponential_buckets;
/// A Prometheus registry: the metric families one component exposes.
pub use prometheus_client::registry::Registry as MetricsRegistry;
use std::sync::{Arc, Mutex};

/// Latency buckets from 0.5 ms to ~65 s, doubling: covers an echo and a slow OCR run.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 18)
}

/// The registry in the text format Prometheus scrapes.
pub fn render(registry: &MetricsRegistry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A router serving `GET /metrics` from `registry`.
pub fn router(registry: Arc<Mutex<MetricsRegistry>>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = render(&registry.lock().unwrap_or_else(|e| e.into_inner()));
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response() }
        }),
    )
}

/// Serves `router` on `address` until `shutdown` resolves; returns the bound address and
/// the serving task, which ends once the port is closed (await it to know).
pub async fn serve(
    address: &str,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(%error, "metrics server stopped");
        }
    });
    Ok((bound, task))
}
