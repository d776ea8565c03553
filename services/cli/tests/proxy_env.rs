//! `plugworker dev` in a shell with a proxy configured: the registry, the runners and the
//! controller all talk on loopback, which never goes through a proxy (Go's
//! `http.ProxyFromEnvironment` rule, which Consul's own client follows), so a proxy that
//! swallows every request changes nothing.

use plugworker_testkit::bin_path;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn dev_works_with_every_proxy_variable_pointing_at_a_black_hole() {
    // Accepts connections (the kernel's backlog) and never answers: a request sent there
    // hangs until its timeout, the worst a proxy can do.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://{}", black_hole.local_addr().unwrap());
    let dir = std::env::temp_dir().join(format!("plugworker-dev-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jobs = dir.join("jobs.jsonl");
    let lines = [
        r#"{"id": "en", "algorithm": "language_detection", "payload": {"text": "The children are playing football in the park after school."}}"#,
        r#"{"id": "fr", "algorithm": "language_detection", "payload": {"text": "Les enfants jouent au football dans le parc après l'école."}}"#,
    ];
    std::fs::write(&jobs, lines.join("\n") + "\n").unwrap();

    let mut command = Command::new(bin_path("plugworker"));
    command
        .args(["dev", "--jobs", jobs.to_str().unwrap(), "--results", "-"])
        .args(["--format", "json", "--runner", "nlp-runner"])
        .args(["--logs", dir.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env(name, &proxy);
    }
    let started = Instant::now();
    let output = command.output().unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "{results:#?}");
    for result in &results {
        assert_eq!(result["status"], "ok", "{result}");
        assert_eq!(result["result"]["language"], result["job_id"], "{result}");
    }
    // Runner start-up included; a request stuck in the proxy would take a timeout or more.
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}\n{stderr}");
    drop(black_hole);
    std::fs::remove_dir_all(&dir).unwrap();
}
