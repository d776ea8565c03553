//! A fault-injecting HTTP proxy in front of the moto server: the controller talks to it as
//! its SQS or S3 endpoint, and the test decides what a request meets. It forwards every
//! request to moto unchanged, except that it can
//! - trickle one object's bytes (a slow S3 GET), or serve it without `Content-Length`,
//! - answer an SQS action (`SendMessage`, `ChangeMessageVisibility`...) on one queue with
//!   HTTP 500 until a deadline (a results outage, extensions failing),
//! - hold the answers to requests under a path (a slow Consul KV store, in front of the
//!   registry),
//!
//! and it records every request and the bytes it handed back per path, so a test can
//! assert that an object was never fetched, or not downloaded whole.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Rules {
    /// Path → delay between bytes.
    slow: HashMap<String, Duration>,
    /// Paths served without `Content-Length` (chunked): only the bytes tell the size.
    without_length: Vec<String>,
    /// (action, queue name, until): that action naming that queue fails with 500 until then.
    outages: Vec<(String, String, Instant)>,
    /// (path prefix, delay): answers to requests under that path are held that long.
    delayed: Vec<(String, Duration)>,
    /// (action, queue name, delay): answers to that action naming that queue are held
    /// that long, after moto has carried the request out.
    late: Vec<(String, String, Duration)>,
}

#[derive(Default)]
struct Seen {
    /// "METHOD path [X-Amz-Target]" of every request, in order.
    requests: Vec<String>,
    /// Response body bytes handed to the client, per path.
    served: HashMap<String, u64>,
    /// Requests refused by an outage.
    refused: u64,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    rules: Mutex<Rules>,
    seen: Mutex<Seen>,
}

pub struct FaultProxy {
    pub endpoint: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultProxy {
    /// A proxy to `upstream` (e.g. the moto endpoint) on a free loopback port.
    pub async fn start(upstream: &str) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            rules: Mutex::new(Rules::default()),
            seen: Mutex::new(Seen::default()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            endpoint,
            shared,
            task,
        }
    }

    /// Serves the object at `path` (`/bucket/key`) one byte every `per_byte`.
    pub fn slow(&self, path: &str, per_byte: Duration) {
        lock(&self.shared.rules)
            .slow
            .insert(path.to_string(), per_byte);
    }

    /// Serves `path` without `Content-Length`, so a client learns its size only by reading.
    pub fn without_length(&self, path: &str) {
        lock(&self.shared.rules)
            .without_length
            .push(path.to_string());
    }

    /// `SendMessage` to the queue whose URL ends in `queue_name` fails with HTTP 500 for
    /// `duration` from now.
    pub fn outage(&self, queue_name: &str, duration: Duration) {
        self.failing("SendMessage", queue_name, duration);
    }

    /// The SQS `action` on the queue whose URL ends in `queue_name` fails with HTTP 500 for
    /// `duration` from now.
    pub fn failing(&self, action: &str, queue_name: &str, duration: Duration) {
        lock(&self.shared.rules).outages.push((
            action.to_string(),
            queue_name.to_string(),
            Instant::now() + duration,
        ));
    }

    /// Holds every answer to a request whose path starts with `prefix` for `delay`.
    pub fn delay_answers(&self, prefix: &str, delay: Duration) {
        lock(&self.shared.rules)
            .delayed
            .push((prefix.to_string(), delay));
    }

    /// The SQS `action` on the queue whose URL ends in `queue_name` is carried out at once
    /// but answered `delay` later: a request whose client may give up before it learns
    /// that it landed.
    pub fn answer_late(&self, action: &str, queue_name: &str, delay: Duration) {
        lock(&self.shared.rules)
            .late
            .push((action.to_string(), queue_name.to_string(), delay));
    }

    /// Requests seen whose line contains `needle`.
    pub fn requests_matching(&self, needle: &str) -> Vec<String> {
        lock(&self.shared.seen)
            .requests
            .iter()
            .filter(|r| r.contains(needle))
            .cloned()
            .collect()
    }

    /// Response body bytes handed back for `path`.
    pub fn served(&self, path: &str) -> u64 {
        lock(&self.shared.seen)
            .served
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests the outages refused.
    pub fn refused(&self) -> u64 {
        lock(&self.shared.seen).refused
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    lock(&shared.seen)
        .requests
        .push(format!("{} {path} {target}", parts.method));
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    let names = |action: &str, queue: &str| {
        (target.strip_suffix(action) == Some("AmazonSQS.")
            || contains(format!("Action={action}&").as_bytes()))
            && contains(queue.as_bytes())
    };
    let refused = lock(&shared.rules)
        .outages
        .iter()
        .any(|(action, queue, until)| Instant::now() < *until && names(action, queue));
    let late = lock(&shared.rules)
        .late
        .iter()
        .find(|(action, queue, _)| names(action, queue))
        .map(|(_, _, delay)| *delay);
    if refused {
        lock(&shared.seen).refused += 1;
        return Response::builder()
            .status(500)
            .header("content-type", "application/x-amz-json-1.0")
            .body(Body::from(
                r#"{"__type":"com.amazonaws.sqs#InternalError","message":"injected outage"}"#,
            ))
            .unwrap();
    }
    let url = format!(
        "{}{}",
        shared.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut upstream = shared.client.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding"
        ) {
            upstream = upstream.header(name, value);
        }
    }
    let response = match upstream.send().await {
        Ok(response) => response,
        Err(error) => {
            return Response::builder()
                .status(502)
                .body(Body::from(error.to_string()))
                .unwrap();
        }
    };
    let delay = {
        let rules = lock(&shared.rules);
        let by_path = rules
            .delayed
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, delay)| *delay);
        by_path.or(late)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut builder = Response::builder().status(response.status().as_u16());
    let without_length = lock(&shared.rules).without_length.contains(&path);
    for (name, value) in response.headers() {
        if name.as_str() != "transfer-encoding"
            && !(without_length && name.as_str() == "content-length")
        {
            builder = builder.header(name, value);
        }
    }
    let per_byte = lock(&shared.rules).slow.get(&path).copied();
    let counted = shared.clone();
    let count = move |bytes: &Bytes| {
        *lock(&counted.seen).served.entry(path.clone()).or_default() += bytes.len() as u64;
    };
    // Chunk by chunk as the client reads (reqwest's `stream` feature is not enabled).
    let stream = futures::stream::unfold(response, |mut response| async move {
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok::<_, std::io::Error>(chunk), response)),
            _ => None,
        }
    });
    let body = match per_byte {
        None => Body::from_stream(stream.map(move |chunk| {
            if let Ok(bytes) = &chunk {
                count(bytes);
            }
            chunk
        })),
        Some(per_byte) => {
            // One byte at a time: a GET that starts at once and then crawls.
            let bytes = stream.flat_map(|chunk| {
                let chunk: Bytes = chunk.unwrap_or_default();
                futures::stream::iter((0..chunk.len()).map(move |i| chunk.slice(i..i + 1)))
            });
            Body::from_stream(bytes.then(move |byte| {
                count(&byte);
                async move {
                    tokio::time::sleep(per_byte).await;
                    Ok::<_, std::io::Error>(byte)
                }
            }))
        }
    };
    builder.body(body).unwrap()
}
