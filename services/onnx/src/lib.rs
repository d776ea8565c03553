//! ONNX Runtime for plugworker algorithms.
//!
//! `ort` is built with `load-dynamic`: the runtime is a shared library fetched by
//! `scripts/fetch-models.sh` (docs/architecture.md §10), not linked at build time, because `ort`'s
//! default download step cannot work on machines that only reach package registries.
//! [`Runtime::load`] loads it once per process; [`OnnxModel`] opens a model on it.
//!
//! `ort` sessions need `&mut` to run, so a model holds its session behind a mutex: one
//! inference at a time per model, each using the runtime's intra-op threads. For CPU-bound
//! models on a small machine that is also the fastest schedule — two concurrent inferences
//! would only fight over the same cores.
//!
//! Those intra-op threads are one pool for the whole process (ONNX Runtime's global thread
//! pool), not a pool per session. A runner holds several sessions (OCR's detector and
//! recogniser, the meme embedder), and ONNX Runtime's threads spin for a while after each
//! operator: with a pool per session, the detector's pool was still spinning while the
//! recogniser ran, and on 2 cores that took half the CPU from it. With one pool, OCR p50 on
//! the bench set went from 130 ms to 72 ms; turning spinning off in per-session pools gave
//! 75–78 ms but made the meme embedder 1–2 ms slower (docs/benchmarks.md).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

pub use ort;
use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

/// Where the runtime library lives inside the models folder (see `models/manifest.json`).
pub const LIBRARY_IN_MODELS_DIR: &str = "onnxruntime/libonnxruntime.so.1.32.0";

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error(
        "ONNX Runtime library {path} not found (run scripts/fetch-models.sh, or set ORT_DYLIB_PATH)"
    )]
    LibraryMissing { path: PathBuf },
    #[error("cannot load ONNX Runtime library {path}: {reason}")]
    Library { path: PathBuf, reason: String },
    #[error("ONNX Runtime was already loaded from {loaded}; cannot switch to {requested}")]
    LibraryConflict { loaded: PathBuf, requested: PathBuf },
    #[error("model file {path} not found")]
    ModelMissing { path: PathBuf },
    #[error("cannot read model file {path}: {source}")]
    ModelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open model {path}: {reason}")]
    Session { path: PathBuf, reason: String },
    #[error("model {path} has no custom metadata key {key:?}")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("inference failed: {0}")]
    Inference(String),
}

impl From<ort::Error> for OnnxError {
    fn from(error: ort::Error) -> Self {
        OnnxError::Inference(error.to_string())
    }
}

/// The loaded runtime; one per process.
pub struct Runtime {
    library: PathBuf,
    environment: Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

impl Runtime {
    /// Loads the runtime library: `ORT_DYLIB_PATH` if set, else the copy in `models_dir`.
    /// Later calls return the runtime already loaded (a process can hold only one).
    ///
    /// `intra_threads` sizes the process's one intra-op thread pool, which every
    /// inference uses (`None`: one thread per core).
    pub fn load(
        models_dir: &Path,
        intra_threads: Option<usize>,
    ) -> Result<&'static Runtime, OnnxError> {
        let requested = match std::env::var_os("ORT_DYLIB_PATH") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => models_dir.join(LIBRARY_IN_MODELS_DIR),
        };
        let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runtime) = RUNTIME.get() {
            if runtime.library != requested {
                return Err(OnnxError::LibraryConflict {
                    loaded: runtime.library.clone(),
                    requested,
                });
            }
            return Ok(runtime);
        }
        if !requested.is_file() {
            return Err(OnnxError::LibraryMissing { path: requested });
        }
        let library_error = |reason: String| OnnxError::Library {
            path: requested.clone(),
            reason,
        };
        let intra_threads = intra_threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1);
        // Loads the library; nothing of the runtime's API can be called before this.
        let builder = ort::init_from(&requested).map_err(|e| library_error(e.to_string()))?;
        // One intra-op pool for every session (see the module docs); sessions opened in
        // this environment use it instead of starting their own.
        // Sessions run their operators one after another, so the inter-op pool (which the
        // global options would otherwise size to the core count) gets one thread.
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(intra_threads)
            .and_then(|pool| pool.with_inter_threads(1))
            .and_then(|pool| pool.with_spin_control(true))
            .map_err(|e| library_error(e.to_string()))?;
        let environment = builder
            .with_name("plugworker")
            .with_global_thread_pool(pool)
            .build()
            .map_err(|e| library_error(e.to_string()))?;
        tracing::info!(library = %requested.display(), intra_threads, "ONNX Runtime loaded");
        Ok(RUNTIME.get_or_init(|| Runtime {
            library: requested,
            environment,
        }))
    }

    /// Opens a model file.
    pub fn open(&self, path: &Path) -> Result<OnnxModel, OnnxError> {
        let bytes = std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                OnnxError::ModelMissing {
                    path: path.to_owned(),
                }
            } else {
                OnnxError::ModelRead {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let session_error = |reason: String| OnnxError::Session {
            path: path.to_owned(),
            reason,
        };
        let session = Session::builder(&self.environment)
            .map_err(|e| session_error(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| session_error(e.to_string()))?
            .commit_from_memory(&bytes)
            .map_err(|e| session_error(e.to_string()))?;
        Ok(OnnxModel {
            path: path.to_owned(),
            sha256,
            session: Mutex::new(session),
        })
    }
}

/// An opened model; see the module docs for why runs are serialised.
pub struct OnnxModel {
    path: PathBuf,
    sha256: String,
    session: Mutex<Session>,
}

impl OnnxModel {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hex sha256 of the model file: identifies the model in caches.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// A custom metadata value stored in the model (e.g. PaddleOCR's `character` list).
    pub fn custom_metadata(&self, key: &str) -> Result<String, OnnxError> {
        let session = self.session();
        let metadata = session.metadata()?;
        metadata
            .custom(key)
            .ok_or_else(|| OnnxError::MissingMetadata {
                path: self.path.clone(),
                key: key.to_owned(),
            })
    }

    /// Exclusive use of the session for one inference.
    pub fn session(&self) -> MutexGuard<'_, Session> {
        // A panic inside a run leaves the session itself intact; keep serving.
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
