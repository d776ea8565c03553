//! The `plugworker` command against real processes: its own registry server, an
//! nlp-runner registered there, and `algorithms` / `call` reading it back.

use plugworker_testkit::{Process, bin_path, eventually, free_port};
use std::process::Command;
use std::time::Duration;

fn plugworker(consul: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin_path("plugworker"))
        .args(args)
        .env("CONSUL_HTTP_ADDR", consul)
        .env("RUST_LOG", "warn")
        .output()
        .expect("plugworker runs")
}

#[tokio::test]
async fn registry_algorithms_and_call_work_together() {
    let consul = format!("127.0.0.1:{}", free_port());
    let _registry = Process::spawn(
        &bin_path("plugworker"),
        &["registry", "--listen", &consul],
        &[],
    );
    let runner_address = format!("127.0.0.1:{}", free_port());
    let _runner = Process::spawn(
        &bin_path("nlp-runner"),
        &["--listen", &runner_address, "--check-interval", "1s"],
        &[("CONSUL_HTTP_ADDR", consul.as_str())],
    );

    let listing: serde_json::Value = eventually(
        Duration::from_secs(30),
        "a passing nlp-runner in `plugworker algorithms`",
        || {
            let consul = consul.clone();
            async move {
                let output = plugworker(&consul, &["algorithms", "--json"]);
                let listing: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
                let passing = listing.as_array()?.iter().any(|a| {
                    a["name"] == "language_detection"
                        && a["instances"][0]["status"] == "passing"
                        && a["input_schema"].is_object()
                });
                passing.then_some(listing)
            }
        },
    )
    .await;
    let algorithm = &listing[0];
    assert_eq!(algorithm["version"], "1.0.0");
    assert_eq!(algorithm["instances"][0]["service"], "nlp-runner");
    assert_eq!(algorithm["instances"][0]["address"], runner_address);
    assert_eq!(
        algorithm["input_schema"]["required"],
        serde_json::json!(["text"])
    );

    let output = plugworker(
        &consul,
        &[
            "call",
            "--algorithm",
            "language_detection",
            "--text",
            "Dies ist ganz eindeutig ein deutscher Satz über das Wetter.",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["language"], "de");

    let output = plugworker(
        &consul,
        &[
            "call",
            "--algorithm",
            "language_detection",
            "--payload",
            r#"{"text": 7}"#,
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("/text"),
        "{stderr}"
    );

    let output = plugworker(
        &consul,
        &["call", "--algorithm", "translation", "--text", "hi"],
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("no healthy runner serves \"translation\"")
    );

    let output = plugworker(
        &consul,
        &[
            "call",
            "--algorithm",
            "language_detection",
            "--payload",
            "{oops",
        ],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--payload is not valid JSON"));
}

#[test]
fn help_explains_every_subcommand() {
    let output = Command::new(bin_path("plugworker"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for subcommand in ["registry", "algorithms", "call"] {
        assert!(help.contains(subcommand), "{help}");
    }
    let output = Command::new(bin_path("nlp-runner"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("language_detection"),
        "a runner's --help lists its algorithms: {help}"
    );
    assert!(help.contains("CONSUL_HTTP_ADDR"));
}
