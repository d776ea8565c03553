//! The plug-in API: what an algorithm is, and how it announces itself.
//!
//! An algorithm is a Rust type implementing [`Algorithm`], with typed input and output
//! (serde for the wire, schemars for the published JSON Schemas). A module registers it
//! with [`register_algorithm!`](crate::register_algorithm) right beside its definition;
//! the kit collects every registration linked into the binary at start-up, so there is
//! no hand-written list anywhere.

use futures::future::BoxFuture;
use plugworker_consul_client::ConsulClient;
use plugworker_mesh::{MeshConnectInfo, SpiffeId};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tonic::transport::server::TcpConnectInfo;

use crate::settings::AlgorithmSettings;
use crate::slots::Slot;

/// An algorithm a runner can serve.
pub trait Algorithm: Sized + Send + Sync + 'static {
    /// The input document; `Run` validates payloads against its JSON Schema first.
    type Input: DeserializeOwned + JsonSchema + Send + 'static;
    /// The output document.
    type Output: Serialize + JsonSchema + Send + 'static;

    /// Name used in jobs, Consul tags and gRPC calls (snake_case, unique in a runner).
    const NAME: &'static str;
    /// Version reported with every result (bump it when results may change); see also
    /// [`Algorithm::version`].
    const VERSION: &'static str;
    /// One sentence for `ListAlgorithms` and `plugworker algorithms`.
    const DESCRIPTION: &'static str;

    /// Loads resources (models, galleries) once, at start-up. Blocking work is fine here:
    /// the kit calls it on a blocking thread.
    fn load(context: &LoadContext) -> Result<Self, LoadError>;

    /// Runs on one validated input. CPU-heavy work belongs in [`RunContext::blocking`] so
    /// it does not stall the runner's I/O threads.
    fn run(
        &self,
        input: Self::Input,
        context: &RunContext,
    ) -> impl Future<Output = Result<Self::Output, RunError>> + Send;

    /// The version answering now, for `ListAlgorithms` and for results whose run did not
    /// say otherwise ([`RunContext::report_version`]). An algorithm whose results change
    /// with data it reloads while serving (a gallery) says which data: `VERSION+data`.
    fn version(&self) -> Cow<'_, str> {
        Cow::Borrowed(Self::VERSION)
    }

    /// Something wrong the algorithm is serving through (stale data it cannot refresh),
    /// for the runner's health details and its `plugworker_runner_algorithm_degraded`
    /// metric; `None` when all is well. Asked when those are read, so keep it cheap.
    fn degraded(&self) -> Option<String> {
        None
    }
}

/// What an algorithm may use while loading.
#[derive(Clone, Debug)]
pub struct LoadContext {
    /// Folder holding model files (`--models-dir`).
    pub models_dir: PathBuf,
    settings: AlgorithmSettings,
    consul: Option<ConsulClient>,
}

impl LoadContext {
    /// A context with no registered settings and no Consul (an algorithm's own tests).
    pub fn new(models_dir: impl Into<PathBuf>) -> Self {
        Self {
            models_dir: models_dir.into(),
            settings: AlgorithmSettings::default(),
            consul: None,
        }
    }

    pub(crate) fn with(
        models_dir: PathBuf,
        settings: AlgorithmSettings,
        consul: Option<ConsulClient>,
    ) -> Self {
        Self {
            models_dir,
            settings,
            consul,
        }
    }

    /// A path inside the models folder.
    pub fn model_path(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.models_dir.join(relative)
    }

    /// The settings of type `T`, parsed from the runner's flags and environment at start
    /// (see [`crate::settings`]). Fails when `T` was never registered with
    /// [`register_settings!`](crate::register_settings): a build mistake, said at load.
    pub fn settings<T: Any + Send + Sync>(&self) -> Result<&T, LoadError> {
        self.settings.get::<T>().ok_or_else(|| {
            LoadError::other(format!(
                "settings {} are not registered (plugworker_kit::register_settings!)",
                std::any::type_name::<T>()
            ))
        })
    }

    /// The runner's Consul client, when it has one (it registers, or serves over the
    /// mesh): for algorithms that watch Consul's KV.
    pub fn consul(&self) -> Option<&ConsulClient> {
        self.consul.as_ref()
    }
}

/// A resource an algorithm could not load.
#[derive(Debug, thiserror::Error)]
#[error("{}{reason}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
pub struct LoadError {
    /// The file that could not be used, if the failure concerns one.
    pub file: Option<PathBuf>,
    pub reason: String,
}

impl LoadError {
    pub fn file(file: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self {
            file: Some(file.into()),
            reason: reason.to_string(),
        }
    }

    pub fn other(reason: impl std::fmt::Display) -> Self {
        Self {
            file: None,
            reason: reason.to_string(),
        }
    }
}

/// Who made a call, as the kit's server knows it from the call's connection.
#[derive(Clone, Debug)]
pub struct Caller(Connection);

/// The connection's details the server put in the call's extensions (one `Arc` per
/// connection, cloned per call: see `transport`).
#[derive(Clone, Debug)]
enum Connection {
    Plaintext(Arc<TcpConnectInfo>),
    Mesh(Arc<MeshConnectInfo>),
}

impl Caller {
    /// The caller of a request the kit's server received, from its extensions.
    pub(crate) fn of(extensions: &tonic::Extensions) -> Option<Self> {
        if let Some(mesh) = extensions.get::<Arc<MeshConnectInfo>>() {
            return Some(Self(Connection::Mesh(mesh.clone())));
        }
        extensions
            .get::<Arc<TcpConnectInfo>>()
            .map(|tcp| Self(Connection::Plaintext(tcp.clone())))
    }

    /// The address the call came from.
    pub fn remote_address(&self) -> Option<SocketAddr> {
        match &self.0 {
            Connection::Plaintext(tcp) => tcp.remote_addr,
            Connection::Mesh(mesh) => Some(mesh.remote_addr),
        }
    }

    /// The caller's SPIFFE ID, from the client certificate the mesh verified and
    /// intentions authorized; `None` on a plaintext port (`--insecure-plaintext`).
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        match &self.0 {
            Connection::Plaintext(_) => None,
            Connection::Mesh(mesh) => Some(&mesh.peer),
        }
    }
}

/// What an algorithm knows about the run in progress.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub algorithm: &'static str,
    /// When the caller stops waiting, if it set a deadline.
    pub deadline: Option<Instant>,
    /// Who asked for the run (`None` outside the kit's server).
    caller: Option<Caller>,
    /// The run slot this run occupies; every blocking task of the run holds it too.
    slot: Option<Slot>,
    /// The version this run's result comes from, if the algorithm said so.
    version: OnceLock<String>,
}

impl RunContext {
    /// A context outside the kit's server (an algorithm's own tests, benchmarks): it
    /// holds no run slot.
    pub fn new(algorithm: &'static str, deadline: Option<Instant>) -> Self {
        Self {
            algorithm,
            deadline,
            caller: None,
            slot: None,
            version: OnceLock::new(),
        }
    }

    pub(crate) fn in_slot(
        algorithm: &'static str,
        deadline: Option<Instant>,
        slot: Slot,
        caller: Option<Caller>,
    ) -> Self {
        Self {
            algorithm,
            deadline,
            caller,
            slot: Some(slot),
            version: OnceLock::new(),
        }
    }

    /// Who asked for this run: its address and, over the mesh, its SPIFFE ID.
    pub fn caller(&self) -> Option<&Caller> {
        self.caller.as_ref()
    }

    /// Says which version produced this run's result, when it may differ from what
    /// [`Algorithm::version`] answers by the time the run ends: data reloaded during the
    /// run must not relabel a result computed with the data before. The first call counts.
    pub fn report_version(&self, version: impl Into<String>) {
        let _ = self.version.set(version.into());
    }

    /// What [`RunContext::report_version`] recorded.
    pub fn reported_version(&self) -> Option<&str> {
        self.version.get().map(String::as_str)
    }

    /// Whether the caller's deadline has passed (the caller already has its answer).
    /// Long blocking work may check it between steps and stop early.
    pub fn expired(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Runs CPU-bound work on the blocking thread pool.
    ///
    /// The work keeps the run's slot until it returns, even when the caller's deadline
    /// answers first: a blocking thread cannot be interrupted, and the next run must not
    /// start beside it (the runner's `--max-concurrent-runs` bounds this work, and so its
    /// memory). Every blocking part of an algorithm must go through here, not through
    /// `tokio::task::spawn_blocking`.
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, RunError>
    where
        F: FnOnce() -> Result<T, RunError> + Send + 'static,
        T: Send + 'static,
    {
        // The work's spans (inference, post-processing) belong to the run's trace.
        let span = tracing::Span::current();
        let share = self.slot.as_ref().map(Slot::blocking_share);
        tokio::task::spawn_blocking(move || {
            let _share = share;
            span.in_scope(work)
        })
        .await
        .map_err(|e| RunError::Internal(format!("{} worker thread failed: {e}", self.algorithm)))?
    }
}

/// Why a run failed; each variant maps to one gRPC status code and so to one error class
/// (docs/architecture.md §4).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The input is wrong in a way the schema cannot express (`INVALID_ARGUMENT`, permanent).
    #[error("{0}")]
    InvalidInput(String),
    /// The input is well-formed but cannot be processed, e.g. an undecodable image
    /// (`FAILED_PRECONDITION`, permanent).
    #[error("{0}")]
    Unprocessable(String),
    /// Something the algorithm depends on is temporarily unavailable (`UNAVAILABLE`, transient).
    #[error("{0}")]
    Unavailable(String),
    /// The algorithm failed unexpectedly (`INTERNAL`, transient).
    #[error("{0}")]
    Internal(String),
}

/// One registration in the binary, produced by [`register_algorithm!`](crate::register_algorithm).
pub struct AlgorithmEntry {
    pub name: &'static str,
    pub version: &'static str,
    pub description: &'static str,
    pub(crate) input_schema: fn() -> serde_json::Value,
    pub(crate) output_schema: fn() -> serde_json::Value,
    pub(crate) load: fn(&LoadContext) -> Result<Arc<dyn LoadedAlgorithm>, LoadError>,
}

inventory::collect!(AlgorithmEntry);

impl AlgorithmEntry {
    /// The registration of `A`. `const` so it can live in a link-time registry.
    pub const fn of<A: Algorithm>() -> Self {
        Self {
            name: A::NAME,
            version: A::VERSION,
            description: A::DESCRIPTION,
            input_schema: schema_of::<A::Input>,
            output_schema: schema_of::<A::Output>,
            load: load_erased::<A>,
        }
    }
}

fn schema_of<T: JsonSchema>() -> serde_json::Value {
    schemars::schema_for!(T).to_value()
}

fn load_erased<A: Algorithm>(context: &LoadContext) -> Result<Arc<dyn LoadedAlgorithm>, LoadError> {
    Ok(Arc::new(Erased(A::load(context)?)))
}

/// A run's JSON result, and the version it reported ([`RunContext::report_version`]).
pub(crate) type Answer = (Vec<u8>, Option<String>);

/// A loaded algorithm with its types erased: JSON in, JSON bytes out.
pub(crate) trait LoadedAlgorithm: Send + Sync {
    /// The result, and the version the run reported if it did.
    fn run(
        self: Arc<Self>,
        payload: serde_json::Value,
        context: RunContext,
    ) -> BoxFuture<'static, Result<Answer, RunError>>;

    fn version(&self) -> Cow<'_, str>;

    fn degraded(&self) -> Option<String>;
}

struct Erased<A>(A);

impl<A: Algorithm> LoadedAlgorithm for Erased<A> {
    fn run(
        self: Arc<Self>,
        payload: serde_json::Value,
        context: RunContext,
    ) -> BoxFuture<'static, Result<Answer, RunError>> {
        Box::pin(async move {
            // The schema already passed; this only fails where serde is stricter than it.
            let input: A::Input = serde_json::from_value(payload).map_err(|e| {
                RunError::InvalidInput(format!("payload does not fit {}: {e}", A::NAME))
            })?;
            let output = self.0.run(input, &context).await?;
            let bytes = serde_json::to_vec(&output).map_err(|e| {
                RunError::Internal(format!("cannot serialise {} output: {e}", A::NAME))
            })?;
            Ok((bytes, context.version.into_inner()))
        })
    }

    fn version(&self) -> Cow<'_, str> {
        self.0.version()
    }

    fn degraded(&self) -> Option<String> {
        self.0.degraded()
    }
}

/// Registers an algorithm type with the kit. Put it next to the type's definition:
///
/// ```ignore
/// plugworker_kit::register_algorithm!(LanguageDetection);
/// ```
#[macro_export]
macro_rules! register_algorithm {
    ($algorithm:ty) => {
        $crate::inventory::submit! { $crate::AlgorithmEntry::of::<$algorithm>() }
    };
}

/// Declares the modules under the runner crate's `src/algorithms/` (see
/// `plugworker-kit-build`). Call once, at the top level of `main.rs`.
#[macro_export]
macro_rules! algorithms {
    () => {
        include!(concat!(env!("OUT_DIR"), "/plugworker_algorithms.rs"));
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::RunSlots;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn blocking_work_keeps_the_slot_after_its_run_is_dropped() {
        let slots = RunSlots::new(1, 0);
        let slot = slots.acquire(None).await.unwrap();
        let context = RunContext::in_slot("test", None, slot.clone(), None);
        let release = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let run = {
            let (release, started) = (release.clone(), started.clone());
            async move {
                context
                    .blocking(move || {
                        started.store(true, Ordering::Release);
                        while !release.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Ok(())
                    })
                    .await
            }
        };
        let mut run = Box::pin(run);
        tokio::select! {
            _ = &mut run => panic!("the work cannot end before it is released"),
            () = async {
                while !started.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            } => {}
        }
        // What the kit does at a deadline: stop waiting for the run, drop its slot.
        drop(run);
        drop(slot);
        assert_eq!(
            slots.in_flight(),
            1,
            "the blocking thread still holds the slot"
        );
        assert!(
            slots.acquire(None).await.is_err(),
            "no second run beside it"
        );
        release.store(true, Ordering::Release);
        for _ in 0..400 {
            if slots.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(slots.in_flight(), 0, "returned when the work ended");
    }

    #[test]
    fn expired_follows_the_deadline() {
        assert!(!RunContext::new("a", None).expired());
        assert!(RunContext::new("a", Some(Instant::now())).expired());
        let later = Instant::now() + Duration::from_secs(60);
        assert!(!RunContext::new("a", Some(later)).expired());
    }
}
