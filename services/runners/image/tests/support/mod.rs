//! Shared by the image-runner tests: a real runner process over gRPC, and the rendered
//! test images.
#![allow(dead_code)]

use base64::Engine;
use plugworker_consul_client::{ConsulClient, ConsulConfig};
use plugworker_embedded_consul::{Registry, RegistryConfig, RunningRegistry};
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_rpc::runner::v1::{RunRequest, RunResponse};
use plugworker_testkit::memes::models_dir;
use plugworker_testkit::{Process, bin_path, eventually, runner_client};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

/// Captions with known text: (top, bottom).
pub const CAPTIONS: &[(&str, &str)] = &[
    ("one does not simply", "walk into production"),
    ("when the build passes", "on the first try"),
    ("tests are green", "ship it"),
    ("me explaining the bug", "to the rubber duck"),
    ("nobody", "reads the manual"),
    ("it works", "on my machine"),
    ("monday morning", "coffee first"),
    ("just one more", "deploy on friday"),
    ("the queue is empty", "time for lunch"),
    ("keep calm", "and retry later"),
    ("such latency", "very wow"),
    ("brace yourselves", "the release is coming"),
    ("this is fine", "everything is fine"),
    ("i have no idea", "what i am doing"),
    ("all the tests", "pass locally"),
    ("what if i told you", "the cache was stale"),
    ("not sure if bug", "or feature"),
    ("y u no", "write docs"),
    ("hold my coffee", "watch this merge"),
    ("first day on the job", "deleted the database"),
    ("send the job", "get the result"),
    ("forty two", "is the answer"),
    ("deadline tomorrow", "start tonight"),
    ("big plans", "small commits"),
];

/// The gallery's templates: (label, image).
pub fn templates() -> Vec<(String, image::RgbImage)> {
    let gallery = models_dir().join("gallery");
    let mut templates = Vec::new();
    let mut labels: Vec<_> = std::fs::read_dir(&gallery)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    labels.sort();
    for label in labels {
        let mut files: Vec<_> = std::fs::read_dir(&label)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let name = label.file_name().unwrap().to_string_lossy().into_owned();
        templates.push((name, plugworker_testkit::memes::load(&files[0])));
    }
    templates
}

/// Photos unrelated to any template (CC0 / public domain, from scikit-image's wheel).
pub fn unrelated_photos() -> Vec<(String, image::RgbImage)> {
    let dir = models_dir().join("cache/samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-models.sh)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                plugworker_testkit::memes::load(&p),
            )
        })
        .collect()
}

/// A template the gallery does not have: the brick-wall photo, and a captioned copy of
/// it to query with.
pub fn brick_wall() -> (image::RgbImage, Vec<u8>) {
    let (_, brick) = unrelated_photos()
        .into_iter()
        .find(|(n, _)| n.starts_with("brick"))
        .unwrap();
    let query = plugworker_testkit::memes::jpeg_bytes(
        &plugworker_testkit::memes::caption(
            &brick,
            "new template",
            "who dis",
            &plugworker_testkit::memes::fonts()[0],
        ),
        70,
    );
    (brick, query)
}

pub struct Runner {
    pub process: Process,
    pub client: RunnerClient<Channel>,
    pub address: String,
}

/// An image-runner on the repository's models, its gallery cache in `cache_dir`.
pub async fn start(extra_env: &[(&str, &str)]) -> Runner {
    start_with(&[], extra_env).await
}

/// [`start`], with more flags.
pub async fn start_with(extra_args: &[&str], extra_env: &[(&str, &str)]) -> Runner {
    let models = models_dir();
    let mut args = vec![
        "--no-register",
        // No Consul here to issue certificates: the tests call the runner in plaintext.
        "--insecure-plaintext",
        "--models-dir",
        models.to_str().unwrap(),
    ];
    args.extend_from_slice(extra_args);
    let spawned = spawn(&args, extra_env).await;
    let client = runner_client(&spawned.listen, Duration::from_secs(60)).await;
    Runner {
        process: spawned.process,
        client,
        address: spawned.listen,
    }
}

/// An image-runner process and the addresses it bound.
pub struct Spawned {
    pub process: Process,
    /// Its gRPC address.
    pub listen: String,
    /// Its metrics and health address (`host:port`), when `--metrics-address` was given.
    pub metrics: Option<String>,
}

/// Spawns an image-runner listening on port 0 (and its metrics, if `args` has
/// `--metrics-address 127.0.0.1:0`) and reads the addresses it bound from its log: no
/// port is picked before the runner binds it, so parallel tests never race for one.
/// No client connects yet: the runner closes a connection whose first call does not
/// come within its --header-read-timeout, so the caller connects when it is ready to call.
pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Spawned {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let process = Process::spawn(&bin_path("image-runner"), &all, env);
    let with_metrics = args.contains(&"--metrics-address");
    let (listen, metrics) = eventually(
        Duration::from_secs(30),
        "the runner's bound addresses in its log",
        || {
            let log = plain(&process.log());
            async move {
                // The line with the bound address (a warning before it names --listen's 0).
                let started = log.lines().find(|l| l.contains("runner started"))?;
                let listen = field(started, "listen=")?;
                let metrics = match with_metrics {
                    true => Some(
                        field(&log, "metrics=http://")?
                            .trim_end_matches("/metrics")
                            .to_string(),
                    ),
                    false => None,
                };
                Some((listen, metrics))
            }
        },
    )
    .await;
    Spawned {
        process,
        listen,
        metrics,
    }
}

/// The value after `key` in a log line, up to the next space.
fn field(log: &str, key: &str) -> Option<String> {
    let start = log.find(key)? + key.len();
    Some(
        log[start..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

pub fn base64_payload(bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({ "image_base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
}

/// Runs `algorithm`, waiting out the runner's loading (UNAVAILABLE) first.
pub async fn call(
    client: &mut RunnerClient<Channel>,
    algorithm: &str,
    payload: &serde_json::Value,
) -> Result<serde_json::Value, tonic::Status> {
    run(client, algorithm, payload)
        .await
        .map(|response| serde_json::from_slice(&response.result).unwrap())
}

/// [`call`], answering the whole response (the version that answered, the timings).
pub async fn run(
    client: &mut RunnerClient<Channel>,
    algorithm: &str,
    payload: &serde_json::Value,
) -> Result<RunResponse, tonic::Status> {
    let payload = serde_json::to_vec(payload).unwrap();
    let started = std::time::Instant::now();
    loop {
        match client
            .run(RunRequest {
                algorithm: algorithm.into(),
                payload: payload.clone(),
            })
            .await
        {
            // Only the runner's own loading: an image fetch can be UNAVAILABLE too.
            Err(status)
                if status.code() == Code::Unavailable
                    && status.message().contains("still loading")
                    && started.elapsed() < Duration::from_secs(60) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other.map(tonic::Response::into_inner),
        }
    }
}

/// An embedded Consul-compatible registry and a client of it.
pub async fn registry() -> (RunningRegistry, ConsulClient) {
    let registry = Registry::spawn("127.0.0.1:0", RegistryConfig::default())
        .await
        .unwrap();
    let consul = ConsulClient::new(ConsulConfig {
        address: registry.url(),
        ..Default::default()
    })
    .unwrap();
    (registry, consul)
}

/// A runner's log without terminal colour codes.
pub fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A fresh folder of this test process.
pub fn temp_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("plugworker-image-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
