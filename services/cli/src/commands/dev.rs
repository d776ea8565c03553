//! `plugworker dev`: the whole pattern on one machine, with no AWS and no Consul.
//!
//! An embedded Consul-compatible registry serves on a local port; the runner binaries of
//! this build start as child processes and register with it over HTTP exactly as with
//! Consul; the controller (the same code as on SQS) takes jobs, one JSON document per
//! line, from a file or stdin through an in-process queue with SQS's delivery semantics,
//! and writes one result line per job. It exits when every job has a final result, or
//! with `--keep-running` at Ctrl-C.
//!
//! On a terminal it shows the results table under one live progress line and writes its
//! logs to `plugworker.log` in the log folder (named at the end) unless `-v` or `RUST_LOG`
//! asks for them on the terminal; piped, it writes JSON lines and logs to stderr. While it
//! runs, dev.json ([`dev_session`](super::dev_session)) lets `call`, `algorithms`, `pipeline` and `gallery` find it.

use super::dev_session as state;
use crate::output::{Format, ResultWriter, terminal_width};
use anyhow::{Context, anyhow, bail};
use plugworker_controller::Settings;
use plugworker_controller::memory::{ChannelSink, MemoryQueue};
use plugworker_jobs::pipeline::{self, Pipeline};
use plugworker_jobs::{ErrorInfo, JobResult, Status, Timings, codes};
use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Jobs, one JSON document per line (`-`: stdin).
    #[arg(long, default_value = "-")]
    pub jobs: String,
    /// Where to write results (`-`: stdout).
    #[arg(long, default_value = "-")]
    pub results: String,
    /// `table` (job, algorithm, status, ms, one-line result; then a tally), `json` (one
    /// result document per line), or `auto`: the table when results go to a terminal,
    /// JSON lines to a file or a pipe.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Runner binaries to start (default: every `*-runner` next to this binary, except
    /// the test-runner fixture).
    #[arg(long = "runner")]
    pub runners: Vec<String>,
    /// Deliveries per job before it is dead-lettered (like SQS maxReceiveCount; at least 1).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// How long a job waits for a runner of its algorithm (runners start with the jobs;
    /// model loading takes a moment) before its attempt counts as failed.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub runner_wait: Duration,
    /// Deadline of one run.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub job_timeout: Duration,
    /// Folder where runner logs go (default: a temporary folder).
    #[arg(long)]
    pub logs: Option<PathBuf>,
    /// Jobs running at once.
    #[arg(long, default_value_t = 16)]
    pub max_in_flight: usize,
    /// Named pipelines: each `DIR/<name>.json` (a pipeline object, as `plugworker pipeline
    /// put` takes) is checked and stored in the registry's KV as `plugworker/pipelines/<name>`
    /// before any job runs, so jobs can say `"pipeline": "<name>"`.
    #[arg(long, value_name = "DIR")]
    pub pipelines: Option<PathBuf>,
    /// Stay up after the jobs (or with none) until Ctrl-C or SIGTERM: the registry, the
    /// runners and dev.json stay for `plugworker call`, `algorithms`, `pipeline` and
    /// `gallery`.
    #[arg(long)]
    pub keep_running: bool,
    /// Logs on the terminal. Without it, when results go to a terminal and RUST_LOG is
    /// unset, logs go to `plugworker.log` in the log folder instead, so that only the
    /// table and the progress line show.
    #[arg(short, long)]
    pub verbose: bool,
}

/// The pipelines of `--pipelines DIR`: (name, the file's JSON), each parsed and checked
/// with the controller's own [`Pipeline::parse`], sorted by name. A file that does not
/// parse, or whose name cannot name a pipeline, is an error naming the file.
fn read_pipelines(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("--pipelines {}: cannot read the folder", dir.display()))?;
    let mut pipelines = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if !pipeline::valid_pipeline_name(&name) {
            bail!(
                "{}: {name:?} cannot name a pipeline ([a-z][a-z0-9_-]{{0,127}}); rename the file",
                path.display()
            );
        }
        let json = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Pipeline::parse(&json).map_err(|error| anyhow!("{}: {error}", path.display()))?;
        pipelines.push((name, json));
    }
    if pipelines.is_empty() {
        bail!(
            "--pipelines {}: no pipeline files (<name>.json) in it",
            dir.display()
        );
    }
    pipelines.sort();
    Ok(pipelines)
}

/// A runner child process, stopped with SIGTERM (then killed) when dropped.
struct Child {
    name: String,
    process: tokio::process::Child,
}

impl Child {
    async fn stop(mut self) {
        if let Some(pid) = self.process.id() {
            // SAFETY: kill(2) on our own child; no memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(10), self.process.wait())
            .await
            .is_err()
        {
            tracing::warn!(runner = %self.name, "runner did not stop within 10 s; killing it");
            let _ = self.process.kill().await;
        }
    }
}

fn runner_binaries(requested: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("cannot locate the plugworker binary")?;
    let dir = exe
        .parent()
        .context("the plugworker binary has no folder")?;
    if !requested.is_empty() {
        return requested
            .iter()
            .map(|name| {
                let path = if name.contains('/') {
                    PathBuf::from(name)
                } else {
                    dir.join(name)
                };
                if path.exists() {
                    Ok(path)
                } else {
                    bail!("runner binary {} not found", path.display())
                }
            })
            .collect();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.ends_with("-runner") && name != "test-runner" && is_executable(p)
        })
        .collect();
    found.sort();
    if found.is_empty() {
        bail!(
            "no runner binaries next to {} (build them: cargo build --workspace --bins)",
            exe.display()
        );
    }
    Ok(found)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A line of the jobs file: a job to queue, or a line that cannot be one.
enum Line {
    Job(String),
    /// Not UTF-8 (JSON text must be): its error result, made here.
    NotText(Box<JobResult>),
}

fn read_jobs(source: &str) -> anyhow::Result<Vec<Line>> {
    let mut reader: Box<dyn BufRead> = if source == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(source).with_context(|| format!("cannot open {source}"))?,
        ))
    };
    let mut lines = Vec::new();
    let mut bytes = Vec::new();
    let mut number = 0usize;
    loop {
        bytes.clear();
        if reader
            .read_until(b'\n', &mut bytes)
            .context("cannot read jobs")?
            == 0
        {
            break;
        }
        number += 1;
        match std::str::from_utf8(&bytes) {
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => lines.push(Line::Job(line.trim_end_matches(['\n', '\r']).to_string())),
            Err(error) => lines.push(Line::NotText(Box::new(not_utf8(number, error)))),
        }
    }
    Ok(lines)
}

fn not_utf8(line: usize, error: std::str::Utf8Error) -> JobResult {
    JobResult {
        job_id: None,
        message_id: format!("line-{line}"),
        algorithm: None,
        status: Status::Error,
        result: None,
        error: Some(ErrorInfo::permanent(
            codes::BAD_JSON,
            format!(
                "line {line} is not UTF-8 (invalid byte at offset {}); a job is JSON text, which is UTF-8",
                error.valid_up_to()
            ),
        )),
        runner: None,
        algorithm_version: None,
        trace_id: None,
        attempt: 1,
        timings: Timings {
            received_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            ..Timings::default()
        },
        pipeline: None,
        steps: None,
    }
}

/// Resolves at SIGINT or SIGTERM. The handlers are installed when this is called, so a
/// Ctrl-C during the start is not lost (and does not kill the process before it cleans up):
/// it is seen as soon as the run waits for results.
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received; stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT received; stopping"),
        }
    })
}

/// Whether logs leave the terminal for the log folder: the results are on it, and neither
/// `-v` nor `RUST_LOG` asks for logs there.
fn quiet(results_on_terminal: bool, verbose: bool, rust_log: Option<&std::ffi::OsStr>) -> bool {
    results_on_terminal && !verbose && rust_log.is_none()
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut stop = std::pin::pin!(stop_signal()?);
    // Checked before anything starts: a bad file fails the command, naming it.
    let pipelines = match &args.pipelines {
        Some(dir) => read_pipelines(dir)?,
        None => Vec::new(),
    };
    let lines = read_jobs(&args.jobs)?;
    let total = lines.len();
    let mut jobs = Vec::new();
    let mut unreadable = Vec::new();
    for line in lines {
        match line {
            Line::Job(job) => jobs.push(job),
            Line::NotText(result) => unreadable.push(result),
        }
    }
    let (output, on_terminal): (Box<dyn Write + Send>, bool) = if args.results == "-" {
        let stdout = std::io::stdout();
        let on_terminal = stdout.is_terminal();
        (Box::new(stdout), on_terminal)
    } else {
        let file = std::fs::File::create(&args.results)
            .with_context(|| format!("cannot create {}", args.results))?;
        (Box::new(file), false)
    };
    let table = args.format.is_table(on_terminal);
    let mut output = ResultWriter::new(output, table.then(terminal_width));
    if on_terminal && total > 0 {
        output = output.with_progress(total, terminal_width());
    }
    let (mut ok, mut failed) = (0usize, 0usize);
    for result in &unreadable {
        output.result(result)?;
        failed += 1;
    }
    if jobs.is_empty() && !args.keep_running {
        output.finish()?;
        if total == 0 {
            tracing::warn!("no jobs given");
        } else {
            eprintln!("plugworker dev: {total} jobs, 0 ok, {failed} failed");
        }
        return Ok(());
    }

    let logs = match &args.logs {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("plugworker-dev-{}", std::process::id())),
    };
    std::fs::create_dir_all(&logs)?;
    if quiet(
        on_terminal,
        args.verbose,
        std::env::var_os("RUST_LOG").as_deref(),
    ) {
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(logs.join("plugworker.log"))
            .with_context(|| format!("cannot create the log file in {}", logs.display()))?;
        plugworker_telemetry::redirect_logs(file);
    }

    // ACLs and intentions on, default deny (dev_mesh.rs).
    let (registry, mesh) = super::dev_mesh::start_registry().await?;
    let session = state::DevSession {
        pid: std::process::id(),
        registry: mesh.address().to_string(),
        token: mesh.operator().await?,
        mesh_service: super::dev_mesh::OPERATOR_SERVICE.to_string(),
    };
    // Removed when dropped: at the end, on an error, or when the stop signal ends the run.
    let published = match state::publish(&session) {
        Ok(Some(published)) => Some(published),
        Ok(None) => {
            tracing::warn!(
                "another plugworker dev already runs ({}): commands without --consul-address find that one",
                state::path().display()
            );
            None
        }
        Err(error) => {
            tracing::warn!("{error:#}; commands need --consul-address to find this dev");
            None
        }
    };
    // Stored before the controller starts: its first read of the store has them, so no
    // job naming one waits (pipeline_unavailable) for the watch to catch up.
    for (name, json) in &pipelines {
        mesh.store_pipeline(name, json).await?;
        tracing::info!(pipeline = %name, "pipeline stored");
    }
    let mut children = Vec::new();
    for binary in runner_binaries(&args.runners)? {
        let name = binary
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let admission = mesh.admit_runner(&name).await?;
        let mut command = tokio::process::Command::new(&binary);
        // The runners talk to the embedded registry only: whatever the caller's shell says
        // about a real Consul (TLS, token, namespace) must not follow them there.
        for setting in plugworker_consul_client::config::settings::ALL {
            command.env_remove(setting.env);
        }
        let process = command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--check-interval",
                "1s",
                "--deregister-critical-after",
                "10s",
            ])
            .envs(admission)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        tracing::info!(runner = %name, "runner started");
        children.push(Child { name, process });
    }
    tracing::info!(registry = %registry.url(), logs = %logs.display(), jobs = jobs.len(), "plugworker dev running");

    let queue = Arc::new(MemoryQueue::new(
        Duration::from_secs(1),
        Duration::from_secs(60),
        args.max_attempts,
    ));
    for job in &jobs {
        queue.send(job.clone());
    }
    let (consul, link) = mesh.controller().await?;
    let settings = Settings {
        max_in_flight: args.max_in_flight,
        job_timeout: args.job_timeout,
        runner_wait: args.runner_wait,
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(10),
        ..Settings::default()
    };
    let (results, mut received) = mpsc::unbounded_channel();
    let controller = plugworker_controller::assemble(
        queue.clone(),
        Arc::new(ChannelSink(results)),
        consul,
        Duration::from_secs(30),
        link,
        settings,
    );
    let (stop_controller, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(controller.run(async {
        let _ = stopped.await;
    }));

    let mut finished = HashSet::new();
    let mut duplicates = 0usize;
    let mut stopped_by_signal = false;
    // The progress line's clock: redrawn every half second while nothing else changes.
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    while finished.len() < jobs.len() {
        let result = tokio::select! {
            result = received.recv() => match result { Some(result) => result, None => break },
            _ = ticks.tick() => { output.tick(started.elapsed())?; continue }
            () = &mut stop => { stopped_by_signal = true; tracing::warn!("interrupted"); break }
        };
        // Every result the controller publishes is final; a second one for a message id
        // (possible only after a failure between publishing and deleting) is not printed.
        if !finished.insert(result.message_id.clone()) {
            duplicates += 1;
            tracing::warn!(message_id = %result.message_id, "duplicate final result dropped");
            continue;
        }
        output.result(&result)?;
        // The time on the progress line as of this result, not of the last tick.
        output.tick(started.elapsed())?;
        match result.status {
            Status::Ok => ok += 1,
            Status::Error => failed += 1,
        }
    }
    output.tick(started.elapsed())?;
    output.finish()?;
    let summary = format!(
        "plugworker dev: {total} jobs, {ok} ok, {failed} failed{} in {:.1} s",
        if duplicates > 0 {
            format!(", {duplicates} duplicate results dropped")
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    );
    if args.keep_running && !stopped_by_signal {
        if jobs.is_empty() {
            eprintln!("plugworker dev: running until Ctrl-C");
        } else {
            eprintln!("{summary}; running until Ctrl-C");
        }
        eprintln!("  registry: {}", registry.url());
        if let Some(published) = &published {
            eprintln!(
                "  found by plugworker call, algorithms, pipeline and gallery through {}",
                published.path().display()
            );
        }
        eprintln!("  logs: {}", logs.display());
        stop.as_mut().await;
    }
    let _ = stop_controller.send(());
    let _ = running.await;
    for child in children {
        child.stop().await;
    }
    registry.stop().await;
    drop(published);
    eprintln!("{summary} (logs in {})", logs.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::quiet;

    #[test]
    fn logs_leave_the_terminal_only_for_the_table_and_only_unasked() {
        assert!(
            quiet(true, false, None),
            "results on a terminal: logs to the folder"
        );
        assert!(
            !quiet(false, false, None),
            "piped: logs on stderr as before"
        );
        assert!(!quiet(true, true, None), "-v keeps them on the terminal");
        assert!(
            !quiet(true, false, Some("warn".as_ref())),
            "so does RUST_LOG"
        );
    }
}
