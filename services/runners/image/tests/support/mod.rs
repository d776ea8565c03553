//! Shared by the image-runner tests: a real runner process over gRPC, and the rendered
//! test images.
#![allow(dead_code)]

use base64::Engine;
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_testkit::memes::models_dir;
use plugworker_testkit::{Process, bin_path, free_port, runner_client};
use std::path::PathBuf;
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
    let address = format!("127.0.0.1:{}", free_port());
    let models = models_dir();
    let models = models.to_str().unwrap();
    let mut args = vec![
        "--listen",
        &address,
        "--no-register",
        // No Consul here to issue certificates: the tests call the runner in plaintext.
        "--insecure-plaintext",
        "--models-dir",
        models,
    ];
    args.extend_from_slice(extra_args);
    let process = Process::spawn(&bin_path("image-runner"), &args, extra_env);
    let client = runner_client(&address, Duration::from_secs(60)).await;
    Runner {
        process,
        client,
        address,
    }
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
            other => return other.map(|r| serde_json::from_slice(&r.into_inner().result).unwrap()),
        }
    }
}
