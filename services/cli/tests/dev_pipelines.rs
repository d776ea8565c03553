//! `plugworker dev --pipelines DIR` with real processes: the named pipelines of a folder
//! stored in the embedded registry before jobs run (the demo's meme_report through the
//! image-runner and the nlp-runner `dev` starts), and a bad file refused by name before
//! anything starts.

use base64::Engine;
use plugworker_testkit::bin_path;
use std::path::Path;
use std::process::{Command, Output};

use crate::dev_support;

use dev_support::{root, scratch};

fn dev(args: &[&str]) -> Output {
    Command::new(bin_path("plugworker"))
        .arg("dev")
        .args(args)
        // Runners find their models in ./models, as in scripts/demo.sh.
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn a_named_pipeline_from_the_folder_runs_its_steps_and_one_not_there_is_invalid() {
    let dir = scratch("dev-pipelines");
    let meme = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(root().join("scripts/demo/meme.jpg")).unwrap());
    let jobs = [
        serde_json::json!({"id": "report", "pipeline": "meme_report", "payload": {"image_base64": meme}}),
        serde_json::json!({"id": "elsewhere", "pipeline": "not_in_the_folder", "payload": {"image_base64": meme}}),
    ];
    let lines: Vec<String> = jobs.iter().map(|j| j.to_string()).collect();
    std::fs::write(dir.join("jobs.jsonl"), lines.join("\n") + "\n").unwrap();
    let pipelines = root().join("scripts/demo/pipelines");
    let output = dev(&[
        "--jobs",
        dir.join("jobs.jsonl").to_str().unwrap(),
        "--pipelines",
        pipelines.to_str().unwrap(),
        "--format",
        "json",
        "--logs",
        dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "{results:#?}");
    let by_id = |id: &str| results.iter().find(|r| r["job_id"] == id).unwrap();

    let report = by_id("report");
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["pipeline"]["name"], "meme_report");
    assert!(
        report["pipeline"]["revision"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["result"]["label"]["label"], "chelsea-the-cat");
    assert!(
        report["result"]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("FINALLY REACHES"),
        "{report}"
    );
    assert_eq!(report["result"]["lang"]["language"], "en");
    for (step, runner) in [
        ("label", "image-runner"),
        ("text", "image-runner"),
        ("lang", "nlp-runner"),
    ] {
        assert_eq!(
            report["steps"][step]["runner"]["service"], runner,
            "{report}"
        );
    }

    // Only the folder's files are stored: another name is not a pipeline.
    let elsewhere = by_id("elsewhere");
    assert_eq!(elsewhere["status"], "error");
    assert_eq!(
        elsewhere["error"]["code"], "invalid_pipeline",
        "{elsewhere}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_pipeline_file_fails_the_command_naming_the_file_before_anything_starts() {
    let dir = scratch("dev-bad-pipelines");
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    std::fs::copy(
        root().join("scripts/demo/pipelines/meme_report.json"),
        pipelines.join("meme_report.json"),
    )
    .unwrap();
    // A cycle: each step reads the other's output.
    std::fs::write(
        pipelines.join("loop.json"),
        r#"{"a": {"algorithm": "ocr", "input": {"text": "/b/text"}},
            "b": {"algorithm": "ocr", "input": {"text": "/a/text"}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("jobs.jsonl"),
        r#"{"id": "one", "algorithm": "language_detection", "payload": {"text": "hello"}}"#,
    )
    .unwrap();
    let logs = dir.join("logs");
    let run = |folder: &Path| {
        dev(&[
            "--jobs",
            dir.join("jobs.jsonl").to_str().unwrap(),
            "--pipelines",
            folder.to_str().unwrap(),
            "--logs",
            logs.to_str().unwrap(),
        ])
    };

    let output = run(&pipelines);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a bad pipeline file must fail dev"
    );
    assert!(
        stderr.contains(&format!("{}:", pipelines.join("loop.json").display()))
            && stderr.contains("cycle"),
        "the file and its fault: {stderr}"
    );
    assert!(output.stdout.is_empty(), "no job ran");
    assert!(!logs.exists(), "no runner started");

    // A file whose name cannot name a pipeline, and a folder that is not there.
    std::fs::remove_file(pipelines.join("loop.json")).unwrap();
    std::fs::write(pipelines.join("Meme Report.json"), "{}").unwrap();
    let stderr = String::from_utf8_lossy(&run(&pipelines).stderr).into_owned();
    assert!(
        stderr.contains("Meme Report.json") && stderr.contains("cannot name a pipeline"),
        "{stderr}"
    );
    let missing = dir.join("missing");
    let stderr = String::from_utf8_lossy(&run(&missing).stderr).into_owned();
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
