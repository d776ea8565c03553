//! Support for tests that run plugworker the way it runs in production: real processes,
//! real gRPC, a real (embedded or external) Consul-compatible registry, a real SQS emulator.

pub mod dashboard;
/// Rendering memes: its own crate, optimised in dev builds (Cargo.toml).
pub use plugworker_test_memes as memes;
pub mod otlp;
pub mod s3;
pub mod sqs;

use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of a binary built from this workspace (`cargo test --workspace` builds them all
/// before running tests; so does `cargo build --workspace --bins`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary has a path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let mut dir = exe
        .parent()
        .expect("test binary has a folder")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A TCP address on 127.0.0.1 that refuses connections, for tests of what a client does
/// when nothing listens: a socket bound but never listening (a connection attempt gets a
/// reset at once), held for the guard's life so that no other process can take the port.
/// Without `SO_REUSEADDR`, which every listener of std and tokio sets: the kernel lets
/// two sockets share a port only when both set it.
pub struct ClosedPort {
    socket: socket2::Socket,
    address: std::net::SocketAddr,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("can create a socket");
        let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        socket
            .bind(&any_port.into())
            .expect("can bind an ephemeral port");
        let address = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("a bound socket has an address");
        Self { socket, address }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Starts listening on the same port (a service that comes up where nothing answered):
    /// the port is never released in between.
    pub fn open(self) -> std::net::TcpListener {
        self.socket
            .listen(128)
            .expect("can listen on a bound socket");
        self.socket
            .set_nonblocking(true)
            .expect("can make a socket non-blocking");
        self.socket.into()
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// The addresses a process bound, from the JSON object it wrote to its `--address-file`
/// (a runner: `grpc`, `health`, and `metrics` when served; `plugworker controller`:
/// `health`; the moto wrapper: `http`).
#[derive(Clone, Debug)]
pub struct Addresses(BTreeMap<String, String>);

impl Addresses {
    /// The address under `key` (`host:port`); panics naming the keys present if absent.
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "no {key:?} in the address file (it has {:?})",
                self.0.keys().collect::<Vec<_>>()
            )
        })
    }

    pub fn grpc(&self) -> &str {
        self.get("grpc")
    }

    pub fn health(&self) -> &str {
        self.get("health")
    }

    /// The metrics address (a runner started with `--metrics-address`).
    pub fn metrics(&self) -> &str {
        self.get("metrics")
    }
}

/// How long [`Process::spawn_reporting`] waits for the address file: a bound on a busy
/// 2-core machine where other tests start processes too, not a timing.
pub const ADDRESS_FILE_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process killed when dropped. Its stderr goes to a log file that is printed if
/// the test fails, so a failing test shows what the process said.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args` and `envs` (added to the test's own environment).
    pub fn spawn(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = std::env::temp_dir().join(format!(
            "plugworker-test-{name}-{}-{}.log",
            std::process::id(),
            unique()
        ));
        let log_file = std::fs::File::create(&log).expect("can create a log file");
        let child = Command::new(program)
            .args(args)
            .envs(envs.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Self { name, child, log }
    }

    /// Starts `program` with `args` and `--address-file <temporary file>`, and waits for
    /// the addresses it writes there once its listeners are bound (so `args` can ask for
    /// port 0 everywhere). Panics with the process's log if it exits first or writes
    /// nothing within [`ADDRESS_FILE_TIMEOUT`].
    pub async fn spawn_reporting(
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> (Self, Addresses) {
        let file = std::env::temp_dir().join(format!(
            "plugworker-test-addresses-{}-{}.json",
            std::process::id(),
            unique()
        ));
        let file_arg = file.to_string_lossy().into_owned();
        let mut all_args = args.to_vec();
        all_args.extend(["--address-file", &file_arg]);
        let mut process = Self::spawn(program, &all_args, envs);
        let deadline = Instant::now() + ADDRESS_FILE_TIMEOUT;
        loop {
            // The writer renames a complete file into place: present means whole.
            if let Ok(text) = std::fs::read_to_string(&file) {
                let _ = std::fs::remove_file(&file);
                let addresses = serde_json::from_str(&text).unwrap_or_else(|e| {
                    panic!(
                        "{}'s address file is not a JSON object of strings ({e}): {text}",
                        process.name
                    )
                });
                return (process, Addresses(addresses));
            }
            if let Some(status) = process.child.try_wait().expect("can poll a child") {
                panic!(
                    "{} exited ({status}) before writing its address file; log:\n{}",
                    process.name,
                    process.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} wrote no address file within {ADDRESS_FILE_TIMEOUT:?}; log:\n{}",
                process.name,
                process.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Sends a signal by name (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, signal: &str) {
        let number = match signal {
            "TERM" => libc::SIGTERM,
            "KILL" => libc::SIGKILL,
            "INT" => libc::SIGINT,
            other => panic!("unsupported signal {other}"),
        };
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child.
        let result = unsafe { libc::kill(pid, number) };
        assert_eq!(
            result,
            0,
            "kill -{signal} {pid} failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("can poll a child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("can poll a child").is_none()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) log ----\n{}",
                self.name,
                self.child.id(),
                self.log()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Polls `probe` every 50 ms until it yields `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The address (`host:port`) of a `plugworker registry` started with `--listen
/// 127.0.0.1:0`, from the line it logs once it listens.
pub async fn registry_address(registry: &Process) -> String {
    eventually(Duration::from_secs(10), "the registry's address", || {
        let log = registry.log();
        async move {
            let (_, rest) = log.split_once("CONSUL_HTTP_ADDR=http://")?;
            Some(rest.split_whitespace().next()?.to_string())
        }
    })
    .await
}

/// A gRPC client for the runner at `address` (`host:port`), retrying the connection until
/// `timeout` so callers need not race the runner's start-up.
pub async fn runner_client(
    address: &str,
    timeout: Duration,
) -> RunnerClient<tonic::transport::Channel> {
    let url = format!("http://{address}");
    eventually(timeout, &format!("a gRPC connection to {address}"), || {
        let url = url.clone();
        async move { RunnerClient::connect(url).await.ok() }
    })
    .await
    .max_decoding_message_size(64 * 1024 * 1024)
    .max_encoding_message_size(64 * 1024 * 1024)
}

/// Healthy (`?passing`) instances of `service` in the registry at `consul`.
pub async fn passing_instances(
    consul: &plugworker_consul_client::ConsulClient,
    service: &str,
) -> Vec<plugworker_consul_client::ServiceEntry> {
    consul
        .health_service(service, &[], true, Default::default())
        .await
        .map(|(entries, _)| entries)
        .unwrap_or_default()
}

/// Peak (`VmHWM`) and current (`VmRSS`) resident memory of a process, from /proc, in
/// bytes.
pub fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Reads one sample from Prometheus text exposition: the value of `name` whose labels
/// include all of `labels`; `None` if absent.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let present: Vec<(String, String)> = label_text
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
                .collect();
            labels
                .iter()
                .all(|(k, v)| present.iter().any(|(pk, pv)| pk == k && pv == v))
                .then(|| value.parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_refuses_connections_and_cannot_be_taken() {
        let closed = ClosedPort::new();
        let refused = std::net::TcpStream::connect(closed.address()).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        // std's listener sets SO_REUSEADDR, as tokio's does: still refused the port.
        let taken = std::net::TcpListener::bind(closed.address()).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
        let address = closed.address();
        let listener = closed.open();
        listener.set_nonblocking(false).unwrap();
        std::net::TcpStream::connect(&address).unwrap();
        listener.accept().unwrap();
    }

    #[tokio::test]
    async fn a_process_that_exits_before_its_address_file_fails_with_its_log() {
        let outcome = tokio::spawn(async {
            Process::spawn_reporting(
                Path::new("/bin/sh"),
                &["-c", "echo about to fail >&2; exit 3", "sh"],
                &[],
            )
            .await
        })
        .await;
        let Err(failure) = outcome else {
            panic!("a process that exited reported addresses");
        };
        let panic = failure.into_panic();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("exited"), "{message}");
        assert!(message.contains("about to fail"), "{message}");
    }
}
