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
use plugworker_consul_client::{ConsulClient, Watch};
use plugworker_meme::{Embedder, Gallery, GalleryStore, Location, short_version};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long one blocking query on the KV key may wait before Consul answers unchanged.
const KV_WAIT: Duration = Duration::from_secs(60);
/// Least time between two queries on the KV key: an agent or proxy that answers at once
/// (index 0, or the same index) makes the watch poll once a second, not spin.
const KV_INTERVAL: Duration = Duration::from_secs(1);
/// Longest one read of `current`, or one load, may take by default
/// (`PLUGWORKER_MEME_GALLERY_TIMEOUT`): a stalled S3 call (no answer, no error) then
/// counts as a failed check instead of stopping the follower for good.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// First wait before a version that failed to load is tried again, doubled on each
/// further failure up to [`RETRY_MAX`]: a broken version costs a manifest read, an
/// embeddings download (and maybe re-embedding) per attempt, not per poll.
const RETRY_FIRST: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The gallery version serving now, and how to get the next.
pub struct LiveGallery {
    store: GalleryStore,
    embedder: Arc<Embedder>,
    live: ArcSwapOption<Gallery>,
    /// Why the last check failed, until one succeeds.
    problem: Mutex<Option<String>>,
    /// The version that last failed to load, and when it may be tried again.
    retry: Mutex<Retry>,
    timeout: Duration,
}

/// When a version that failed to load is tried again: after a wait that doubles with
/// each failure of that same version, at once for any other version.
#[derive(Debug, Default)]
struct Retry {
    failed: Option<Failed>,
}

#[derive(Debug)]
struct Failed {
    version: String,
    failures: u32,
    not_before: Instant,
}

impl Retry {
    /// Whether `version` may be loaded at `now`.
    fn due(&self, version: &str, now: Instant) -> bool {
        match &self.failed {
            Some(failed) if failed.version == version => now >= failed.not_before,
            _ => true,
        }
    }

    /// `version` failed to load at `now`.
    fn failed(&mut self, version: &str, now: Instant) {
        let failures = match &self.failed {
            Some(failed) if failed.version == version => failed.failures.saturating_add(1),
            _ => 1,
        };
        let wait = RETRY_FIRST
            .saturating_mul(2u32.saturating_pow(failures - 1))
            .min(RETRY_MAX);
        self.failed = Some(Failed {
            version: version.to_string(),
            failures,
            not_before: now + wait,
        });
    }

    fn loaded(&mut self) {
        self.failed = None;
    }
}

/// What one check found.
enum Checked {
    /// `current` names the version serving.
    Serving,
    /// `current` names a version that failed to load and whose retry is not due yet.
    Waiting,
    Loaded(Gallery),
}

impl LiveGallery {
    pub fn new(store: GalleryStore, embedder: Arc<Embedder>) -> Self {
        Self {
            store,
            embedder,
            live: ArcSwapOption::empty(),
            problem: Mutex::new(None),
            retry: Mutex::new(Retry::default()),
            timeout: CHECK_TIMEOUT,
        }
    }

    /// Bounds each read of `current` and each load by `timeout` (default [`CHECK_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
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

    fn retry(&self) -> std::sync::MutexGuard<'_, Retry> {
        self.retry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One check: reads the store's current version and, when it is not the one serving,
    /// loads and swaps it in. Failures keep what serves and are recorded; a version that
    /// failed to load is tried again with a growing wait ([`Retry`]).
    pub async fn refresh(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let handle = tokio::runtime::Handle::current();
        // Everything runs on a blocking thread, off the runs' I/O threads: reading
        // `current` of a read-only folder hashes every template file, and a load reads
        // blobs and embeds templates without stored embeddings (CPU work).
        let checked = tokio::task::spawn_blocking(move || handle.block_on(this.check()));
        // The check bounds each store call; this bound is for a call that blocks its
        // thread (a hung file system), which no future can cancel.
        let checked = match tokio::time::timeout(self.timeout * 2, checked).await {
            Ok(Ok(checked)) => checked,
            Ok(Err(panic)) => Err(format!("the check panicked: {panic}")),
            Err(_) => Err(format!(
                "the check took more than {:?}; abandoned",
                self.timeout * 2
            )),
        };
        match checked {
            Ok(Checked::Serving) => self.recovered(),
            // The problem recorded when it failed stands until it loads.
            Ok(Checked::Waiting) => {}
            Ok(Checked::Loaded(gallery)) => {
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
                // The previous version is dropped here, not kept beside the new one
                // while runs that started on it finish (they hold their own Arc).
                drop(previous);
                self.retry().loaded();
                self.recovered();
            }
            Err(problem) => self.failed(problem),
        }
    }

    /// Reads `current` and loads it when it is new and due, each store call bounded by
    /// the timeout. Runs on a blocking thread ([`Self::refresh`]).
    async fn check(&self) -> Result<Checked, String> {
        let version = match tokio::time::timeout(self.timeout, self.store.current()).await {
            Ok(Ok(version)) => version,
            Ok(Err(error)) => return Err(format!("cannot read the current version: {error}")),
            Err(_) => {
                return Err(format!(
                    "reading the current version took more than {:?}",
                    self.timeout
                ));
            }
        };
        let serving = self.current();
        if serving.as_ref().is_some_and(|g| g.version() == version) {
            return Ok(Checked::Serving);
        }
        if !self.retry().due(&version, Instant::now()) {
            return Ok(Checked::Waiting);
        }
        let short = short_version(&version);
        tracing::info!(gallery = %self.location(), version = short, "loading meme gallery version");
        let loaded = tokio::time::timeout(
            self.timeout,
            self.store
                .load(&version, &self.embedder, serving.as_deref()),
        )
        .await;
        // Only the previous version's rows are needed while loading.
        drop(serving);
        let problem = match loaded {
            Ok(Ok(gallery)) => return Ok(Checked::Loaded(gallery)),
            Ok(Err(error)) => format!("cannot load version {short}: {error}"),
            Err(_) => format!("loading version {short} took more than {:?}", self.timeout),
        };
        self.retry().failed(&version, Instant::now());
        Err(problem)
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
/// [`Watch`] keeps the index (0 read as 1, reset when it goes backwards), spaces the
/// queries at least [`KV_INTERVAL`] apart and backs off after errors.
async fn watch_key(
    consul: ConsulClient,
    key: String,
    changed: Arc<Notify>,
    gallery: Weak<LiveGallery>,
) {
    let mut watch = Watch::new(KV_WAIT).with_rate_limit(1, KV_INTERVAL);
    let mut seen: Option<Option<Vec<u8>>> = None;
    let mut failing = false;
    while gallery.strong_count() > 0 {
        match watch.next(|options| consul.kv_get(&key, options)).await {
            Ok(pair) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(%key, "watching the gallery's version in Consul again");
                }
                let value = pair.map(|pair| pair.value);
                if seen.as_ref() != Some(&value) {
                    if seen.is_some() {
                        changed.notify_one();
                    }
                    seen = Some(value);
                }
            }
            Err(error) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        %key,
                        %error,
                        "cannot watch the gallery's version in Consul; polling the gallery only"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_that_failed_is_retried_with_a_doubling_wait_another_at_once() {
        let start = Instant::now();
        let mut retry = Retry::default();
        assert!(retry.due("a", start));
        retry.failed("a", start);
        // Every poll before the wait is over skips the broken version.
        assert!(!retry.due("a", start + Duration::from_secs(5)));
        assert!(retry.due("a", start + RETRY_FIRST));
        // A new `current` is loaded at once.
        assert!(retry.due("b", start + Duration::from_secs(1)));
        let mut at = start + RETRY_FIRST;
        let mut waits = Vec::new();
        for _ in 0..8 {
            retry.failed("a", at);
            let not_before = retry.failed.as_ref().unwrap().not_before;
            waits.push(not_before - at);
            assert!(!retry.due("a", not_before - Duration::from_millis(1)));
            at = not_before;
        }
        assert_eq!(waits[0], RETRY_FIRST * 2);
        assert_eq!(waits[1], RETRY_FIRST * 4);
        assert_eq!(*waits.last().unwrap(), RETRY_MAX, "capped: {waits:?}");
        // Another version failing starts its own count; a load clears it.
        retry.failed("b", at);
        assert_eq!(retry.failed.as_ref().unwrap().failures, 1);
        retry.loaded();
        assert!(retry.due("b", at));
    }
}
