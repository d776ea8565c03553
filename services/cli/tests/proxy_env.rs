//! `plugworker dev` and `plugworker healthcheck` in a shell with a proxy configured: the
//! registry, the runners and the controller all talk on loopback, which never goes through
//! a proxy (Go's `http.ProxyFromEnvironment` rule, which Consul's own client follows), so
//! a proxy that swallows every request changes nothing.

use plugworker_testkit::bin_path;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

const PROXY_VARIABLES: [&str; 6] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// `plugworker` with every proxy variable pointing at `proxy` and none exempting anything.
fn plugworker_behind(proxy: &str) -> Command {
    let mut command = Command::new(bin_path("plugworker"));
    command
        .env("RUST_LOG", "warn")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    for name in PROXY_VARIABLES {
        command.env(name, proxy);
    }
    command
}

#[test]
fn the_container_healthcheck_reaches_its_controller_past_a_proxy() {
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://{}", black_hole.local_addr().unwrap());
    // The controller's /healthz, answered once.
    let controller = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = controller.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = controller.accept().unwrap();
        let mut request = [0u8; 1024];
        let read = stream.read(&mut request).unwrap();
        let body = "ok";
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8_lossy(&request[..read]).to_string()
    });
    let output = plugworker_behind(&proxy)
        .args(["healthcheck", "--health-address", &address.to_string()])
        .args(["--timeout", "3s"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(server.join().unwrap().starts_with("GET /healthz "));
    drop(black_hole);
}

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

    let mut command = plugworker_behind(&proxy);
    command
        .args(["dev", "--jobs", jobs.to_str().unwrap(), "--results", "-"])
        .args(["--format", "json", "--runner", "nlp-runner"])
        .args(["--logs", dir.to_str().unwrap()]);
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
