//! How other commands on this machine find a running `plugworker dev`: while it runs, dev
//! writes `$XDG_RUNTIME_DIR/plugworker/dev.json` (mode 0600) with its pid, its registry's
//! address and an operator token, and removes it when it ends. `call`, `algorithms`,
//! `pipeline` and `gallery` use it when neither `--consul-address` nor `CONSUL_HTTP_ADDR`
//! names a registry and the pid is alive ([`client`]).
//!
//! Without `XDG_RUNTIME_DIR` the folder is `<temp dir>/plugworker-<uid>`, created 0700 and
//! refused if another user owns it or others may read it: the token lets its holder run
//! jobs and write pipelines.

use crate::ConsulArgs;
use anyhow::{Context, bail};
use plugworker_consul_client::ConsulClient;
use plugworker_consul_client::config::settings;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What dev.json holds.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DevSession {
    /// The `plugworker dev` process.
    pub pid: u32,
    /// Its embedded registry, e.g. `http://127.0.0.1:41234`.
    pub registry: String,
    /// An ACL token with the service identity [`mesh_service`](Self::mesh_service),
    /// intentions to every runner, and KV write on the pipelines and galleries.
    pub token: String,
    /// The Connect identity the token may take (`operator`).
    pub mesh_service: String,
}

// The token stays out of logs and panic messages.
impl std::fmt::Debug for DevSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevSession")
            .field("pid", &self.pid)
            .field("registry", &self.registry)
            .field("token", &"<redacted>")
            .field("mesh_service", &self.mesh_service)
            .finish()
    }
}

/// The folder of dev.json (not created): `$XDG_RUNTIME_DIR/plugworker`, or
/// `<temp dir>/plugworker-<uid>`.
pub fn folder() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join("plugworker"),
        // SAFETY: getuid(2) cannot fail and touches no memory.
        None => std::env::temp_dir().join(format!("plugworker-{}", unsafe { libc::getuid() })),
    }
}

/// `folder()/dev.json`.
pub fn path() -> PathBuf {
    folder().join("dev.json")
}

/// Creates `dir` 0700 if missing; refuses one another user owns or others may enter.
fn private_folder(dir: &Path) -> anyhow::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => {
            return Err(error).with_context(|| format!("cannot create {}", dir.display()));
        }
    }
    check_private(dir)
}

/// `path` is ours and nobody else may read it (a folder or a file).
fn check_private(path: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    // SAFETY: as in `folder`.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid || meta.file_type().is_symlink() {
        bail!("{} is not yours (owner uid {})", path.display(), meta.uid());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} may be read by others (mode {:o}); it must be private",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    Ok(())
}

/// Whether process `pid` exists and is ours (signal 0 reaches it).
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks that the process may be signalled.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn read(path: &Path) -> Option<DevSession> {
    check_private(path).ok()?;
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The running dev session, if dev.json names a live process.
pub fn find() -> Option<DevSession> {
    check_private(&folder()).ok()?;
    read(&path()).filter(|session| alive(session.pid))
}

/// dev.json while this process holds it; dropping it removes the file (if it still names
/// this process), on a normal end, an error or a panic alike.
#[derive(Debug)]
pub struct Published {
    path: PathBuf,
    pid: u32,
}

impl Drop for Published {
    fn drop(&mut self) {
        if read(&self.path).is_some_and(|session| session.pid == self.pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Published {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes dev.json (0600) for `session`, unless another live dev already holds it
/// (`Ok(None)`: commands find that one; each dev keeps its own registry). A file left
/// by a process that is gone is replaced.
pub fn publish(session: &DevSession) -> anyhow::Result<Option<Published>> {
    let dir = folder();
    private_folder(&dir)?;
    let path = dir.join("dev.json");
    // Written whole under a private name, then linked into place: readers never see half
    // a file, and link(2) fails if the name exists, so two devs cannot both take it.
    let temporary = dir.join(format!(".dev.json.{}", session.pid));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    file.write_all(&serde_json::to_vec_pretty(session)?)?;
    drop(file);
    let linked = (|| {
        for _ in 0..3 {
            match std::fs::hard_link(&temporary, &path) {
                Ok(()) => return Ok(true),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    if read(&path).is_some_and(|other| alive(other.pid)) {
                        return Ok(false);
                    }
                    // Stale (its dev is gone) or not ours to trust: replaced.
                    let _ = std::fs::remove_file(&path);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(false)
    })();
    let _ = std::fs::remove_file(&temporary);
    if linked.with_context(|| format!("cannot write {}", path.display()))? {
        Ok(Some(Published {
            path,
            pid: session.pid,
        }))
    } else {
        Ok(None)
    }
}

/// Whether the command line or the environment names a registry (`--consul-address`,
/// `CONSUL_HTTP_ADDR`); `args` is the command line.
fn registry_named(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    env: Option<std::ffi::OsString>,
) -> bool {
    let flag = format!("--{}", settings::HTTP_ADDR.flag);
    env.is_some_and(|v| !v.is_empty())
        || args.into_iter().any(|arg| {
            let arg = arg.to_string_lossy();
            arg == flag.as_str() || arg.starts_with(&format!("{flag}="))
        })
}

/// The Consul client of a command that talks to the registry: the one `args` describe,
/// or, when neither a flag nor `CONSUL_HTTP_ADDR` names a registry and a `plugworker dev`
/// runs, dev's registry with its operator token (the caller's other `CONSUL_*` settings,
/// meant for another registry, are left out).
pub fn client(args: &ConsulArgs) -> anyhow::Result<ConsulClient> {
    Ok(match session() {
        Some(session) => ConsulArgs {
            consul_address: session.registry,
            consul_token: Some(session.token),
            ..ConsulArgs::default()
        }
        .client()?,
        None => args.client()?,
    })
}

/// The dev session commands use, if any (see [`client`]).
pub fn session() -> Option<DevSession> {
    if registry_named(
        std::env::args_os(),
        std::env::var_os(settings::HTTP_ADDR.env),
    ) {
        return None;
    }
    let session = find()?;
    tracing::debug!(pid = session.pid, registry = %session.registry, "using the registry of plugworker dev ({})", path().display());
    Some(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<std::ffi::OsString> {
        list.iter().map(Into::into).collect()
    }

    #[test]
    fn a_flag_or_the_variable_names_a_registry() {
        let plain = args(&["plugworker", "algorithms"]);
        assert!(!registry_named(plain.clone(), None));
        assert!(!registry_named(plain.clone(), Some("".into())));
        assert!(registry_named(plain, Some("127.0.0.1:8500".into())));
        assert!(registry_named(
            args(&["plugworker", "algorithms", "--consul-address", "x:1"]),
            None
        ));
        assert!(registry_named(
            args(&["plugworker", "call", "--consul-address=x:1"]),
            None
        ));
        assert!(!registry_named(
            args(&["plugworker", "call", "--consul-token", "t"]),
            None
        ));
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(0));
        assert!(!alive(u32::MAX));
    }
}
