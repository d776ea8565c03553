//! `plugworker dev` found by the other commands through dev.json, with real processes:
//! `dev --keep-running` (no jobs) writes it private with its live pid; `algorithms` and
//! `call`, given no registry, reach that dev's runners as `operator` and show versions and
//! schemas; its token writes pipelines and gallery versions (`pipeline put`) and no other
//! key; SIGINT and SIGTERM each end dev with the file removed; a dev.json whose pid is
//! gone is ignored (and replaced by the next dev).

use plugworker_testkit::{bin_path, eventually};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::dev_support;

use dev_support::{root, scratch};

/// `plugworker ARGS` as a user runs it on this machine: no registry named anywhere, the
/// runtime folder `runtime`.
fn plugworker(runtime: &Path, args: &[&str]) -> Output {
    Command::new(bin_path("plugworker"))
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime)
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("PLUGWORKER_MESH_SERVICE")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// A dead process's pid: one that ran and was reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn write_session(runtime: &Path, pid: u32, registry: &str) {
    let dir = runtime.join("plugworker");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = dir.join("dev.json");
    let session = serde_json::json!({"pid": pid, "registry": registry, "token": "00000000-0000-4000-a000-000000000000", "mesh_service": "operator"});
    std::fs::write(&file, session.to_string()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

#[tokio::test]
async fn dev_keep_running_is_found_through_dev_json_until_a_signal_removes_it() {
    let dir = scratch("dev-session");
    let runtime = dir.join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let file = runtime.join("plugworker/dev.json");
    // Left by a dev that was killed: replaced, not obeyed.
    write_session(&runtime, dead_pid(), "http://127.0.0.1:1");

    for (round, (sig, name)) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")]
        .into_iter()
        .enumerate()
    {
        let logs = dir.join(format!("logs-{round}"));
        let dev = Killed(
            Command::new(bin_path("plugworker"))
                .args(["dev", "--keep-running", "--jobs", "/dev/null"])
                .args(["--runner", "nlp-runner", "--logs", logs.to_str().unwrap()])
                .current_dir(root())
                .env("XDG_RUNTIME_DIR", &runtime)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let pid = dev.0.id();
        let session: serde_json::Value = eventually(
            Duration::from_secs(30),
            "dev.json naming the running dev",
            || {
                let file = file.clone();
                async move {
                    let session: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
                    (session["pid"] == pid).then_some(session)
                }
            },
        )
        .await;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600, "dev.json is private");
        assert_eq!(mode(file.parent().unwrap()), 0o700);
        assert!(
            session["registry"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:")
        );
        assert_eq!(session["mesh_service"], "operator");

        if round == 0 {
            // No flag, no CONSUL_HTTP_ADDR: the runner's version and schema, asked as operator.
            let listing: serde_json::Value = eventually(
                Duration::from_secs(30),
                "language_detection with its version in `plugworker algorithms --json`",
                || {
                    let runtime = runtime.clone();
                    async move {
                        let output = plugworker(&runtime, &["algorithms", "--json"]);
                        let listing: serde_json::Value =
                            serde_json::from_slice(&output.stdout).ok()?;
                        let described = listing
                            .as_array()?
                            .iter()
                            .any(|a| a["name"] == "language_detection" && a["version"].is_string());
                        described.then_some(listing)
                    }
                },
            )
            .await;
            let algorithm = listing
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == "language_detection")
                .unwrap();
            assert_eq!(algorithm["version"], "1.0.0", "{algorithm}");
            assert_eq!(
                algorithm["input_schema"]["required"],
                serde_json::json!(["text"]),
                "{algorithm}"
            );
            // As a user runs it (no RUST_LOG): the answer on stdout, no INFO lines on stderr.
            let output = Command::new(bin_path("plugworker"))
                .arg("algorithms")
                .env("XDG_RUNTIME_DIR", &runtime)
                .env_remove("CONSUL_HTTP_ADDR")
                .env_remove("RUST_LOG")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!stderr.contains("INFO"), "{stderr}");
            let text = String::from_utf8_lossy(&output.stdout);
            assert!(text.contains("language_detection  v1.0.0"), "{text}");
            assert!(text.contains("input schema: {"), "{text}");

            let output = plugworker(
                &runtime,
                &[
                    "call",
                    "--algorithm",
                    "language_detection",
                    "--text",
                    "Dies ist ganz eindeutig ein deutscher Satz über das Wetter.",
                ],
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{stderr}");
            let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(result["language"], "de");
            assert!(
                stderr.contains("language_detection 1.0.0 on "),
                "the version that answered: {stderr}"
            );

            // The operator token writes pipelines and gallery versions, and nothing else.
            let pipeline = root().join("scripts/demo/pipelines/meme_report.json");
            let output = plugworker(
                &runtime,
                &["pipeline", "put", "meme_report", pipeline.to_str().unwrap()],
            );
            assert!(output.status.success(), "{output:?}");
            let output = plugworker(&runtime, &["pipeline", "list"]);
            assert!(
                String::from_utf8_lossy(&output.stdout).contains("meme_report"),
                "{output:?}"
            );
            let registry = session["registry"].as_str().unwrap();
            let token = session["token"].as_str().unwrap();
            let http = reqwest::Client::new();
            for (key, allowed) in [
                ("plugworker/galleries/0123456789abcdef", true),
                ("plugworker/elsewhere", false),
            ] {
                let status = http
                    .put(format!("{registry}/v1/kv/{key}"))
                    .header("X-Consul-Token", token)
                    .body("v1")
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status.is_success(), allowed, "{key}: {status}");
            }
        }

        signal(&dev.0, sig);
        let mut dev = dev;
        let stderr = BufReader::new(dev.0.stderr.take().unwrap());
        let lines: Vec<String> =
            tokio::task::spawn_blocking(move || stderr.lines().map_while(Result::ok).collect())
                .await
                .unwrap();
        let status = dev.0.wait().unwrap();
        assert!(status.success(), "{name}: {status}\n{}", lines.join("\n"));
        assert!(
            lines.iter().any(|l| l.contains("running until Ctrl-C")),
            "{name}: {lines:#?}"
        );
        assert!(!file.exists(), "{name}: dev.json removed at exit");
    }
}

#[test]
fn a_dev_json_whose_process_is_gone_is_ignored() {
    let dir = scratch("dev-stale");
    let runtime = dir.join("runtime");
    // A registry the file points at: used while the pid lives, ignored once it is gone.
    let mut registry = Killed(
        Command::new(bin_path("plugworker"))
            .args(["registry", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(registry.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("registry listening on ")
        .expect("the registry prints its address")
        .to_string();

    // A live pid (this test's): the file is used.
    write_session(&runtime, std::process::id(), &address);
    let output = plugworker(&runtime, &["algorithms"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("no runners are registered in Consul at {address}")),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // A flag naming a registry wins over the file.
    let output = plugworker(&runtime, &["algorithms", "--consul-address", "127.0.0.1:1"]);
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains(&address),
        "{output:?}"
    );

    // Its process gone: ignored (the default address is tried instead).
    write_session(&runtime, dead_pid(), &address);
    let output = plugworker(&runtime, &["algorithms"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!all.contains(&address), "{all}");
}
