//! `plugworker pipeline put | get | list | delete` against real processes: the embedded
//! registry with ACLs enforced (default deny), and a test-runner whose `echo` and `add`
//! announce the schemas `put` checks pipelines against.

use plugworker_testkit::{Process, bin_path, eventually, registry_address};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const ROOT_TOKEN: &str = "pipeline-cli-root";

/// Runs `plugworker` against the registry at `consul` with `token`.
fn plugworker(consul: &str, token: &str, args: &[&str]) -> Output {
    Command::new(bin_path("plugworker"))
        .args(args)
        .env("CONSUL_HTTP_ADDR", consul)
        .env("CONSUL_HTTP_TOKEN", token)
        .env("RUST_LOG", "warn")
        .output()
        .expect("plugworker runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `plugworker` and expects it to succeed; its stdout.
fn ok(consul: &str, args: &[&str]) -> String {
    let output = plugworker(consul, ROOT_TOKEN, args);
    assert!(
        output.status.success(),
        "plugworker {args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output)
}

/// Runs `plugworker` and expects it to fail; its stderr.
fn refused(consul: &str, token: &str, args: &[&str]) -> String {
    let output = plugworker(consul, token, args);
    assert!(
        !output.status.success(),
        "plugworker {args:?} succeeded: {}",
        stdout(&output)
    );
    stderr(&output)
}

/// The `plugworker: …` error lines of a refused command.
fn errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|line| line.starts_with("plugworker: ") || line.starts_with("schema mismatch: "))
        .collect()
}

/// `pipeline put NAME FILE`, reading schemas from the plaintext runner.
fn put(name: &str, file: &Path) -> Vec<String> {
    [
        "pipeline",
        "put",
        name,
        file.to_str().unwrap(),
        "--insecure-plaintext",
    ]
    .map(String::from)
    .to_vec()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Writes `json` to `dir/NAME.json` and expects `put NAME` to refuse it; the lines that
/// say why, with the file's path written `FILE`.
fn refused_put(consul: &str, dir: &Path, name: &str, json: &str) -> Vec<String> {
    let file = write(dir, &format!("{name}.json"), json);
    let message = refused(consul, ROOT_TOKEN, &args(&put(name, &file)));
    errors(&message)
        .into_iter()
        .map(|line| line.replace(file.to_str().unwrap(), "FILE"))
        .collect()
}

fn write(dir: &Path, name: &str, json: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, json).unwrap();
    path
}

#[tokio::test]
async fn put_checks_graphs_and_schemas_and_get_list_delete_read_back() {
    let registry = Process::spawn(
        &bin_path("plugworker"),
        &[
            "registry",
            "--listen",
            "127.0.0.1:0",
            "--acl-enabled",
            "--acl-default-policy",
            "deny",
            "--acl-bootstrap-token",
            ROOT_TOKEN,
        ],
        &[],
    );
    let consul = registry_address(&registry).await;
    let _runner = Process::spawn(
        &bin_path("test-runner"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--insecure-plaintext",
            "--check-interval",
            "1s",
        ],
        &[
            ("CONSUL_HTTP_ADDR", consul.as_str()),
            ("CONSUL_HTTP_TOKEN", ROOT_TOKEN),
        ],
    );
    eventually(
        Duration::from_secs(30),
        "test-runner's echo and add with their schemas",
        || {
            let consul = consul.clone();
            async move {
                let output = plugworker(
                    &consul,
                    ROOT_TOKEN,
                    &["algorithms", "--json", "--insecure-plaintext"],
                );
                let listing: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
                let described = |name: &str| {
                    listing.as_array().is_some_and(|all| {
                        all.iter().any(|a| {
                            a["name"] == name
                                && a["instances"][0]["status"] == "passing"
                                && a["output_schema"].is_object()
                        })
                    })
                };
                (described("echo") && described("add")).then_some(())
            }
        },
    )
    .await;
    let dir = std::env::temp_dir().join(format!("plugworker-pipeline-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A pipeline that fits: stored, read back, listed (here and in `algorithms`).
    let good_json = r#"{"first": {"algorithm": "echo"},
        "second": {"algorithm": "echo", "input": {"message": "/first/message"}},
        "sum": {"algorithm": "add", "input": {"numbers": {"$literal": [1, 2]}}}}"#;
    let good = write(&dir, "good.json", good_json);
    let stored = ok(&consul, &args(&put("echo_twice", &good)));
    assert!(
        stored.starts_with("stored pipeline echo_twice (revision ")
            && stored.contains("): first=echo second=echo sum=add"),
        "{stored}"
    );
    let output = plugworker(&consul, ROOT_TOKEN, &["pipeline", "get", "echo_twice"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let back: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        back,
        serde_json::from_str::<serde_json::Value>(good_json).unwrap()
    );
    assert!(stderr(&output).contains("pipeline echo_twice revision "));
    let listed = ok(&consul, &["pipeline", "list"]);
    assert!(
        listed.starts_with("echo_twice  revision ")
            && listed.contains("  first=echo second=echo sum=add"),
        "{listed}"
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&consul, &["pipeline", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["name"], "echo_twice");
    assert_eq!(listed[0]["steps"][2]["algorithm"], "add");
    let algorithms = ok(&consul, &["algorithms"]);
    assert!(
        algorithms.contains("pipelines:\n  echo_twice  revision "),
        "{algorithms}"
    );

    // Graph faults: refused, with one message naming the fault, and not stored.
    assert_eq!(
        refused_put(
            &consul,
            &dir,
            "loop",
            r#"{"a": {"algorithm": "echo", "input": {"message": "/b/message"}},
                "b": {"algorithm": "echo", "input": {"message": "/a/message"}}}"#
        ),
        [
            "plugworker: FILE: not stored: the steps [\"a\", \"b\"] form a cycle (each reads from the next)"
        ]
    );
    assert_eq!(
        refused_put(
            &consul,
            &dir,
            "dangling",
            r#"{"a": {"algorithm": "echo"},
                "b": {"algorithm": "echo", "input": {"message": "/c/message"}}}"#
        ),
        [
            "plugworker: FILE: not stored: step \"b\": input \"message\" points at \"/c/message\", but the pipeline has no step \"c\""
        ]
    );

    // A schema mismatch: named, refused; stored with --force, still named.
    assert_eq!(
        refused_put(
            &consul,
            &dir,
            "mismatch",
            r#"{"e": {"algorithm": "echo"},
                "s": {"algorithm": "add", "input": {"numbers": "/e/message"}}}"#
        ),
        [
            "schema mismatch: step \"s\": input \"numbers\": \"/e/message\" is a string, but \"add\"'s input \"numbers\" is an array",
            "plugworker: FILE: 1 schema mismatch; not stored (--force stores it anyway)"
        ]
    );
    let mismatch = dir.join("mismatch.json");
    let mut forced = put("mismatch", &mismatch);
    forced.push("--force".into());
    let output = plugworker(&consul, ROOT_TOKEN, &args(&forced));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("schema mismatch: step \"s\""));
    for name in ["loop", "dangling"] {
        let message = refused(&consul, ROOT_TOKEN, &["pipeline", "get", name]);
        assert!(
            message.contains(&format!("no stored pipeline named {name:?}")),
            "{message}"
        );
    }

    // An algorithm no runner announces yet: stored unchecked, saying so, and flagged by
    // `algorithms`.
    let later = write(&dir, "later.json", r#"{"t": {"algorithm": "translation"}}"#);
    let output = plugworker(&consul, ROOT_TOKEN, &args(&put("later", &later)));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("note: step \"t\": \"translation\" is not announced now; not checked"),
        "{}",
        stderr(&output)
    );
    let algorithms = ok(&consul, &["algorithms"]);
    assert!(
        algorithms.contains("  t=translation  (not announced now: translation)\n"),
        "{algorithms}"
    );

    // A token that may read pipelines but not write them: refused, saying which rule.
    let reader = reader_token(&consul).await;
    let listed = stdout(&plugworker(&consul, &reader, &["pipeline", "list"]));
    assert!(listed.contains("echo_twice"), "{listed}");
    let message = refused(
        &consul,
        &reader,
        &["pipeline", "put", "echo_twice", good.to_str().unwrap()],
    );
    assert!(
        message.contains("cannot store pipeline echo_twice: Consul refused: the token (CONSUL_HTTP_TOKEN) needs key_prefix \"plugworker/pipelines/\" { policy = \"write\" }")
            && message.contains("HTTP 403"),
        "{message}"
    );
    let message = refused(&consul, &reader, &["pipeline", "delete", "echo_twice"]);
    assert!(message.contains("policy = \"write\""), "{message}");

    // Delete: gone from get and list; deleting again says there is none.
    assert_eq!(
        ok(&consul, &["pipeline", "delete", "mismatch"]),
        "deleted pipeline mismatch\n"
    );
    let message = refused(&consul, ROOT_TOKEN, &["pipeline", "delete", "mismatch"]);
    assert!(
        message.contains("no stored pipeline named \"mismatch\""),
        "{message}"
    );
    // Keys no job can name (nested, or not a pipeline name) are not listed: the
    // controller does not run them either.
    let admin = admin(&consul);
    for key in ["nested/deeper", "Meme_Report"] {
        let key = format!("{}{key}", plugworker_jobs::pipeline::KV_PREFIX);
        assert!(
            admin
                .kv_put(&key, br#"{"a": {"algorithm": "echo"}}"#, None)
                .await
                .unwrap()
        );
    }
    let listed = ok(&consul, &["pipeline", "list"]);
    let names: Vec<&str> = listed.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(names, ["echo_twice", "later"], "{listed}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client with the registry's root token.
fn admin(consul: &str) -> plugworker_consul_client::ConsulClient {
    plugworker_consul_client::ConsulClient::new(plugworker_consul_client::ConsulConfig {
        address: consul.to_string(),
        token: Some(ROOT_TOKEN.into()),
        ..Default::default()
    })
    .unwrap()
}

/// A token whose policy reads (but cannot write) the stored pipelines.
async fn reader_token(consul: &str) -> String {
    use plugworker_consul_client::admin::{NewPolicy, NewToken, PolicyLink};
    let admin = admin(consul);
    let policy = admin
        .acl_policy_create(&NewPolicy {
            name: "pipelines-reader".into(),
            description: "reads the stored pipelines".into(),
            rules: r#"key_prefix "plugworker/pipelines/" { policy = "read" }"#.into(),
        })
        .await
        .unwrap();
    admin
        .acl_token_create(&NewToken {
            policies: vec![PolicyLink {
                id: policy.id,
                name: String::new(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .secret_id
}
