//! How `meme_classifier` follows its gallery while serving.
//!
//! The gallery is data that changes while runners serve (`plugworker gallery add`), so a
//! runner never restarts for it. A background task asks the store for its `current`
//! version every poll interval, and sooner when Consul's KV key for the location
//! (`plugworker/galleries/<hash>`, written by the CLI after `current`) changes: a blocking
//! query returns as soon as it does. A new version is loaded beside the live one (its
//! embeddings on a blocking thread, rows the live version already holds reused) and then
//! swapped in with one atomic pointer store: a run takes the gallery it started with and
//! finishes on it, so a reload never fails, blocks or relabels a run in flight.
//!
//! A gallery that cannot be read or loaded leaves the last good version serving; the
//! problem is logged once (and when it changes or clears) and reported as the
//! algorithm's degraded state (health details, `plugworker_runner_algorithm_degraded`).

use arc_swap::ArcSwapOption;
use plugworker_consul_client::{ConsulClient, QueryOptions};
use plugworker_meme::{Embedder, Gallery, GalleryStore, Location, short_version};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// How long one blocking query on the KV key may wait before Consul answers unchanged.
const KV_WAIT: Duration = Duration::from_secs(60);
/// Longest pause between attempts to reach Consul after failures (an agent restarting, a
/// token without read on the key): the poll keeps the gallery fresh meanwhile.
const KV_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The gallery version serving now, and how to get the next.
pub struct LiveGallery {
    store: GalleryStore,
    embedder: Arc<Embedder>,
    live: ArcSwapOption<Gallery>,
    /// Why the last check failed, until one succeeds.
    problem: Mutex<Option<String>>,
}

impl LiveGallery {
    pub fn new(store: GalleryStore, embedder: Arc<Embedder>) -> Self {
        Self {
            store,
            embedder,
            live: ArcSwapOption::empty(),
            problem: Mutex::new(None),
        }
    }

    pub fn location(&self) -> &Location {
        self.store.location()
    }

    /// The version serving now; `None` until a first one loaded.
    pub fn current(&self) -> Option<Arc<Gallery>> {
        self.live.load_full()
    }

    /// Why the gallery could not be refreshed, while that lasts.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One check: reads the store's current version and, when it is not the one serving,
    /// loads and swaps it in. Failures keep what serves and are recorded.
    pub async fn refresh(self: &Arc<Self>) {
        let version = match self.store.current().await {
            Ok(version) => version,
            Err(error) => {
                return self.failed(format!("cannot read the current version: {error}"));
            }
        };
        let serving = self.current();
        if serving.as_ref().is_some_and(|g| g.version() == version) {
            return self.recovered();
        }
        let this = Arc::clone(self);
        let handle = tokio::runtime::Handle::current();
        let wanted = version.clone();
        // Reading the blobs is I/O, but embedding templates without stored embeddings is
        // CPU work: the whole load runs on a blocking thread, off the runs' I/O threads.
        let loaded = tokio::task::spawn_blocking(move || {
            handle.block_on(this.store.load(&wanted, &this.embedder, serving.as_deref()))
        })
        .await;
        match loaded {
            Ok(Ok(gallery)) => {
                let gallery = Arc::new(gallery);
                let previous = self.live.swap(Some(Arc::clone(&gallery)));
                tracing::info!(
                    gallery = %self.location(),
                    version = short_version(gallery.version()),
                    previous = previous.as_ref().map(|g| short_version(g.version())),
                    templates = gallery.templates().len(),
                    labels = gallery.labels().len(),
                    "meme gallery version loaded; serving it"
                );
                self.recovered();
            }
            Ok(Err(error)) => self.failed(format!(
                "cannot load version {}: {error}",
                short_version(&version)
            )),
            Err(panic) => self.failed(format!(
                "loading version {} panicked: {panic}",
                short_version(&version)
            )),
        }
    }

    /// Records a failed check; logs it when it is new, so a gallery unreadable for an
    /// hour says so once, not every poll.
    fn failed(&self, problem: String) {
        let serving = self.current();
        let mut slot = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_deref() != Some(problem.as_str()) {
            match &serving {
                Some(gallery) => tracing::warn!(
                    gallery = %self.location(),
                    serving = short_version(gallery.version()),
                    problem = %problem,
                    "meme gallery unreadable; still serving the last good version"
                ),
                None => tracing::warn!(
                    gallery = %self.location(),
                    problem = %problem,
                    "meme gallery unreadable and no version loaded yet: meme_classifier answers gallery_unavailable"
                ),
            }
        }
        *slot = Some(problem);
    }

    fn recovered(&self) {
        let mut slot = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        if slot.take().is_some() {
            tracing::info!(gallery = %self.location(), "meme gallery readable again");
        }
    }

    /// Follows the gallery for as long as it is in use: checks every `poll`, and at once
    /// when `consul` says the KV key changed. The tasks hold it weakly, so they end with
    /// the algorithm (in a runner, with the process).
    pub fn follow(self: &Arc<Self>, poll: Duration, consul: Option<ConsulClient>) {
        let changed = Arc::new(Notify::new());
        if let Some(consul) = consul {
            let key = self.location().kv_key();
            tokio::spawn(watch_key(
                consul,
                key,
                Arc::clone(&changed),
                Arc::downgrade(self),
            ));
        }
        let gallery = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    () = changed.notified() => {}
                }
                let Some(gallery) = gallery.upgrade() else {
                    return;
                };
                gallery.refresh().await;
            }
        });
    }
}

/// Watches `key` with blocking queries and wakes the follower whenever its value changes.
async fn watch_key(
    consul: ConsulClient,
    key: String,
    changed: Arc<Notify>,
    gallery: Weak<LiveGallery>,
) {
    let mut index = 0;
    let mut seen: Option<Option<Vec<u8>>> = None;
    let mut failures = 0u32;
    while gallery.strong_count() > 0 {
        let options = QueryOptions {
            index,
            wait: Some(KV_WAIT),
        };
        match consul.kv_get(&key, options).await {
            Ok((pair, meta)) => {
                if failures > 0 {
                    tracing::info!(%key, "watching the gallery's version in Consul again");
                }
                failures = 0;
                // An index that went backwards (a restored or new Consul) restarts the
                // watch from the current state.
                index = if meta.last_index < index {
                    0
                } else {
                    meta.last_index
                };
                let value = pair.map(|pair| pair.value);
                if seen.as_ref() != Some(&value) {
                    if seen.is_some() {
                        changed.notify_one();
                    }
                    seen = Some(value);
                }
            }
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(
                        %key,
                        %error,
                        "cannot watch the gallery's version in Consul; polling the gallery only"
                    );
                }
                index = 0;
                let backoff = Duration::from_millis(500 * 2u64.pow(failures.min(6)));
                tokio::time::sleep(backoff.min(KV_MAX_BACKOFF)).await;
            }
        }
    }
}
