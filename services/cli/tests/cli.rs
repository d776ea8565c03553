//! The `plugworker` command against real processes: its own registry server, an
//! nlp-runner registered there, and `algorithms` / `call` reading it back.

use base64::Engine;
use plugworker_testkit::{Process, bin_path, eventually, registry_address};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `plugworker`; `call` and `algorithms` reach the runner over mTLS as the Connect
/// service `operator` (the registry here has no ACLs, so intentions default to allow).
fn plugworker(consul: &str, args: &[&str]) -> std::process::Output {
    let mut args = args.to_vec();
    if matches!(args.first(), Some(&"call") | Some(&"algorithms")) {
        args.extend(["--mesh-service", "operator"]);
    }
    Command::new(bin_path("plugworker"))
        .args(&args)
        .env("CONSUL_HTTP_ADDR", consul)
        .env("RUST_LOG", "warn")
        .output()
        .expect("plugworker runs")
}

#[tokio::test]
async fn registry_algorithms_and_call_work_together() {
    let registry = Process::spawn(
        &bin_path("plugworker"),
        &["registry", "--listen", "127.0.0.1:0"],
        &[],
    );
    let consul = registry_address(&registry).await;
    let (_runner, runner_addresses) = Process::spawn_reporting(
        &bin_path("nlp-runner"),
        // In the mesh: mTLS on --listen, plaintext health alone on its own port. A
        // plaintext call refused by a mesh runner: services/controller/tests/mesh.rs.
        &[
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
            "--check-interval",
            "1s",
        ],
        &[("CONSUL_HTTP_ADDR", consul.as_str())],
    )
    .await;
    let runner_address = runner_addresses.grpc();

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
    // Without flags: the `operator` identity, which this registry (no ACLs) lets anyone
    // take, so versions and schemas too.
    let output = Command::new(bin_path("plugworker"))
        .args(["algorithms", "--json"])
        .env("CONSUL_HTTP_ADDR", &consul)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let bare: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(bare[0]["instances"][0]["service"], "nlp-runner", "{bare}");
    assert_eq!(bare[0]["version"], "1.0.0", "{bare}");
    assert!(bare[0]["input_schema"].is_object(), "{bare}");
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
    for subcommand in ["registry", "algorithms", "call", "healthcheck"] {
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

#[test]
fn dev_runs_a_jsonl_file_of_jobs_and_prints_one_result_per_job() {
    let dir = std::env::temp_dir().join(format!("plugworker-dev-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jobs = dir.join("jobs.jsonl");
    let texts = [
        (
            "en",
            "The children are playing football in the park after school.",
        ),
        (
            "fr",
            "Les enfants jouent au football dans le parc après l'école.",
        ),
        ("de", "Die Kinder spielen nach der Schule im Park Fußball."),
        (
            "es",
            "Los niños juegan al fútbol en el parque después de la escuela.",
        ),
        ("ja", "子供たちは放課後に公園でサッカーをしています。"),
    ];
    let mut lines: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, (_, text))| serde_json::json!({"id": format!("job-{i}"), "algorithm": "language_detection", "payload": {"text": text}}).to_string())
        .collect();
    lines.push(
        r#"{"id": "broken", "algorithm": "language_detection", "payload": {"text": ""}}"#.into(),
    );
    // The demo meme, through the image-runner that `dev` starts beside the nlp-runner.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let meme = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(root.join("scripts/demo/meme.jpg")).unwrap());
    for algorithm in ["meme_classifier", "ocr"] {
        lines.push(serde_json::json!({"id": algorithm, "algorithm": algorithm, "payload": {"image_base64": meme}}).to_string());
    }
    std::fs::write(&jobs, lines.join("\n") + "\n").unwrap();

    let output = Command::new(bin_path("plugworker"))
        .args([
            "dev",
            "--jobs",
            jobs.to_str().unwrap(),
            "--results",
            "-",
            "--logs",
            dir.to_str().unwrap(),
        ])
        // Runners find their models in ./models, as in scripts/demo.sh.
        .current_dir(&root)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        results.len(),
        lines.len(),
        "one result per job: {results:#?}"
    );
    let by_id = |id: &str| results.iter().find(|r| r["job_id"] == id).unwrap();
    assert_eq!(
        by_id("meme_classifier")["result"]["label"],
        "chelsea-the-cat"
    );
    assert_eq!(
        by_id("meme_classifier")["runner"]["service"],
        "image-runner"
    );
    let text = by_id("ocr")["result"]["text"].as_str().unwrap().to_string();
    assert!(text.contains("FINALLY REACHES"), "{text}");
    for (i, (language, _)) in texts.iter().enumerate() {
        let result = results
            .iter()
            .find(|r| r["job_id"] == format!("job-{i}"))
            .unwrap();
        assert_eq!(result["status"], "ok", "{result}");
        assert_eq!(result["result"]["language"], *language);
        assert_eq!(result["runner"]["service"], "nlp-runner");
    }
    let broken = results.iter().find(|r| r["job_id"] == "broken").unwrap();
    assert_eq!(broken["status"], "error");
    assert_eq!(broken["error"]["code"], "invalid_payload");
    assert!(stderr.contains("8 jobs, 7 ok, 1 failed"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
