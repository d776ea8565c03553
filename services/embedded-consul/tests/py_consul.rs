//! py-consul (an independent Consul client from PyPI, pinned in
//! `scripts/requirements/consul.txt`) drives the embedded registry: a TTL check registered
//! in a `Checks` list and passed by `service:<id>`, tag filters in another case, a
//! blocking query woken by a change, KV with check-and-set
//! (`tests/py/py_consul_client.py`). With `CONSUL_HTTP_ADDR` set, the same script runs
//! against that agent instead.

use plugworker_embedded_consul::{Registry, RegistryConfig};
use std::path::PathBuf;
use std::time::Duration;

/// The test venv's Python; the test fails (never skips) without it or without py-consul.
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("PLUGWORKER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/plugworker/venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it installs py-consul from scripts/requirements/consul.txt)",
        python.display()
    );
    let import = std::process::Command::new(&python)
        .args(["-c", "import consul"])
        .output()
        .expect("the venv's python runs");
    assert!(
        import.status.success(),
        "py-consul is not installed in {}: run scripts/setup.sh ({})",
        venv.display(),
        String::from_utf8_lossy(&import.stderr).trim()
    );
    python
}

/// py-consul bootstraps ACLs, writes a runner's least-privilege policy and token, and is
/// refused (403) registering under another service's name or without a token
/// (`tests/py/py_consul_acl.py`). Against a real agent (`CONSUL_HTTP_ADDR`) it needs that
/// agent's management token in `PLUGWORKER_CONSUL_ACL_TOKEN` (ACLs on, default deny) and
/// is skipped without one.
#[tokio::test]
async fn py_consul_drives_acls() {
    let python = venv_python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/py_consul_acl.py");
    let (_registry, host, port, token) = match std::env::var("CONSUL_HTTP_ADDR") {
        Ok(address) => {
            let Ok(token) = std::env::var("PLUGWORKER_CONSUL_ACL_TOKEN") else {
                eprintln!(
                    "skipped: PLUGWORKER_CONSUL_ACL_TOKEN (the agent's management token) is not set"
                );
                return;
            };
            let address = address.rsplit("://").next().unwrap_or(&address).to_string();
            let (host, port) = address
                .rsplit_once(':')
                .expect("CONSUL_HTTP_ADDR is host:port");
            (None, host.to_string(), port.to_string(), Some(token))
        }
        Err(_) => {
            let registry = Registry::spawn(
                "127.0.0.1:0",
                RegistryConfig {
                    acl_enabled: true,
                    acl_default_policy: plugworker_embedded_consul::IntentionAction::Deny,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let address = registry.address();
            (
                Some(registry),
                address.ip().to_string(),
                address.port().to_string(),
                None,
            )
        }
    };
    let mut command = tokio::process::Command::new(&python);
    command.arg(&script).args([&host, &port]);
    if let Some(token) = token {
        command.arg(token);
    }
    let run = command
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the py-consul ACL script finishes within two minutes")
        .expect("the py-consul ACL script starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "py-consul ACL script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("every ACL check passed"), "{stdout}");
}

#[tokio::test]
async fn py_consul_drives_the_registry() {
    let python = venv_python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/py_consul_client.py");
    let (_registry, host, port) = match std::env::var("CONSUL_HTTP_ADDR") {
        Ok(address) => {
            let address = address.rsplit("://").next().unwrap_or(&address).to_string();
            let (host, port) = address
                .rsplit_once(':')
                .expect("CONSUL_HTTP_ADDR is host:port");
            (None, host.to_string(), port.to_string())
        }
        Err(_) => {
            let registry = Registry::spawn("127.0.0.1:0", RegistryConfig::default())
                .await
                .unwrap();
            let address = registry.address();
            (
                Some(registry),
                address.ip().to_string(),
                address.port().to_string(),
            )
        }
    };
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .args([&host, &port])
        .env_remove("CONSUL_HTTP_ADDR")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the py-consul script finishes within two minutes")
        .expect("the py-consul script starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "py-consul script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("every check passed"), "{stdout}");
}
