//! Named pipelines: the controller's live copy of Consul's KV prefix
//! `plugworker/pipelines/` (one key per pipeline, its value the pipeline's JSON object).
//!
//! One blocking `kv_list` on the prefix, with the index handling, rate limit and error
//! backoff of [`Watch`] (as the resolver follows the catalog): a pipeline put, changed
//! or deleted applies to jobs that start after the watch sees it, with no restart. Each
//! value is parsed once per revision (its `ModifyIndex`); one that does not parse is kept
//! as its error, so jobs naming it fail `invalid_pipeline` with the reason.
//!
//! A name the watch does not hold is read from Consul once per watch answer (a pipeline
//! put just before its first job is found while the watch is behind): what that read
//! found, or that it found nothing, serves the next jobs naming it until the watch
//! answers again (a miss at most [`MISS_KEPT`]), so jobs naming an unknown pipeline cost
//! Consul one read per answer, not one each.
//!
//! The last [`REVISIONS_KEPT`] revisions the watch saw of each stored pipeline stay
//! parsed, so a redelivered job can run the revision its first delivery ran
//! ([`StoredPipelines::revision`]).
//!
//! Before the first answer nothing is known: [`Lookup::NotYet`] (jobs naming a pipeline
//! are transient then). Consul answers a listing with only the entries the token may
//! read (no error), so a token without read on the prefix would see no pipeline at all
//! and fail every named job permanently: the watch therefore first reads one key under
//! the prefix, which such a token is refused (403). Until that read passes, the watch
//! logs the fix and named pipelines stay unavailable (transient); inline ones still run.

use plugworker_consul_client::{ConsulClient, Error, KvPair, Watch};
use plugworker_jobs::pipeline::{KV_PREFIX, Pipeline, pipeline_name_of_key};
use plugworker_lifecycle::Backoff;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One stored pipeline at one revision.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Its KV `ModifyIndex`.
    pub revision: u64,
    /// The parsed pipeline, or why the stored value is not one.
    pub pipeline: Result<Arc<Pipeline>, String>,
}

/// What the store says about a name.
#[derive(Clone, Debug)]
pub enum Lookup {
    Found(Stored),
    /// The watch has answered, and no key has this name.
    Unknown,
    /// The watch has not answered yet (or may not read the prefix).
    NotYet,
}

/// Revisions kept parsed per stored pipeline, for redeliveries of jobs that ran them.
pub const REVISIONS_KEPT: usize = 8;
/// The longest a read that found no pipeline answers for later jobs naming it.
pub const MISS_KEPT: Duration = Duration::from_secs(1);
/// Names read outside the watch that are remembered until it answers again (a producer
/// naming many unknown pipelines cannot grow this).
const LOOKUPS_KEPT: usize = 1024;

/// One answer of the watch: the stored pipelines by name, and which answer it is.
#[derive(Debug, Default)]
struct Answer {
    generation: u64,
    pipelines: HashMap<String, Stored>,
}

/// The watch's last answer; `None` until Consul first answers.
type View = Option<Arc<Answer>>;

/// Reads of names the watch did not hold, valid while the watch's answer is `generation`.
#[derive(Default)]
struct Lookups {
    generation: u64,
    /// Name → what the read found (`None`: no such key) and when.
    by_name: HashMap<String, (Option<Stored>, Instant)>,
}

/// The named pipelines, kept live by a blocking query; the task stops when this is dropped.
pub struct StoredPipelines {
    view: watch::Receiver<View>,
    /// True once the watch has tried Consul (answered, refused or failed).
    tried: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
    client: Option<ConsulClient>,
    lookups: Mutex<Lookups>,
    /// Held while a name the watch does not hold is read from Consul.
    reading: tokio::sync::Mutex<()>,
    /// The last [`REVISIONS_KEPT`] revisions of each pipeline the watch holds, oldest
    /// first.
    history: Arc<Mutex<HashMap<String, VecDeque<Stored>>>>,
}

impl StoredPipelines {
    /// Follows `plugworker/pipelines/` with requests Consul may hold for up to `wait`.
    pub fn start(client: ConsulClient, wait: Duration) -> Self {
        let (sender, view) = watch::channel(None);
        let (tried_sender, tried) = watch::channel(false);
        let history = Arc::default();
        let task = tokio::spawn(follow(
            client.clone(),
            wait,
            sender,
            tried_sender,
            Arc::clone(&history),
        ));
        Self {
            view,
            tried,
            task: Some(task),
            client: Some(client),
            lookups: Mutex::default(),
            reading: tokio::sync::Mutex::default(),
            history,
        }
    }

    /// A store that never answers: named pipelines stay unavailable (a controller built
    /// without a Consul client, as in unit tests).
    pub fn none() -> Self {
        Self {
            view: watch::channel(None).1,
            tried: watch::channel(true).1,
            task: None,
            client: None,
            lookups: Mutex::default(),
            reading: tokio::sync::Mutex::default(),
            history: Arc::default(),
        }
    }

    /// Revision `revision` of the pipeline `name`, while it is among the last
    /// [`REVISIONS_KEPT`] the watch saw of a pipeline still stored.
    pub fn revision(&self, name: &str, revision: u64) -> Option<Stored> {
        lock(&self.history)
            .get(name)?
            .iter()
            .find(|stored| stored.revision == revision)
            .cloned()
    }

    /// The pipeline stored as `name` now. A name the watch does not hold is read once
    /// more from Consul: a pipeline put just before its first job (the watch a few
    /// milliseconds behind) must not fail that job permanently. That read serves later
    /// jobs until the watch answers again (a miss at most [`MISS_KEPT`]).
    pub async fn get(&self, name: &str) -> Lookup {
        let (generation, cached) = match &*self.view.borrow() {
            None => return Lookup::NotYet,
            Some(view) => (view.generation, view.pipelines.get(name).cloned()),
        };
        if let Some(stored) = cached {
            return Lookup::Found(stored);
        }
        let Some(client) = &self.client else {
            return Lookup::Unknown;
        };
        if let Some(known) = self.looked_up(generation, name) {
            return known;
        }
        // One read at a time: jobs arriving together with the same unknown name wait for
        // the first one's answer instead of each asking Consul.
        let _one_read = self.reading.lock().await;
        if let Some(known) = self.looked_up(generation, name) {
            return known;
        }
        match client
            .kv_get(&format!("{KV_PREFIX}{name}"), Default::default())
            .await
        {
            Ok((pair, _)) => {
                let found = pair.map(|pair| parse(name, &pair));
                self.remember(generation, name, found.clone());
                found.map_or(Lookup::Unknown, Lookup::Found)
            }
            Err(error) => {
                tracing::warn!(%error, pipeline = name, "cannot read a stored pipeline the watch does not hold yet");
                Lookup::NotYet
            }
        }
    }

    /// What an earlier read of `name` found, while the watch's answer is still
    /// `generation` (and, for a miss, for at most [`MISS_KEPT`]).
    fn looked_up(&self, generation: u64, name: &str) -> Option<Lookup> {
        let lookups = lock(&self.lookups);
        if lookups.generation != generation {
            return None;
        }
        match lookups.by_name.get(name)? {
            (Some(stored), _) => Some(Lookup::Found(stored.clone())),
            (None, at) if at.elapsed() < MISS_KEPT => Some(Lookup::Unknown),
            (None, _) => None,
        }
    }

    fn remember(&self, generation: u64, name: &str, found: Option<Stored>) {
        let mut lookups = lock(&self.lookups);
        if lookups.generation != generation || lookups.by_name.len() >= LOOKUPS_KEPT {
            *lookups = Lookups {
                generation,
                by_name: HashMap::new(),
            };
        }
        lookups
            .by_name
            .insert(name.to_string(), (found, Instant::now()));
    }

    /// Resolves once the watch has tried Consul once, whatever came of it: the
    /// controller receives jobs only then, so that jobs naming a stored pipeline do not
    /// find it unavailable for the few milliseconds the first read takes.
    pub async fn first_attempt(&self) {
        let mut tried = self.tried.clone();
        let _ = tried.wait_for(|tried| *tried).await;
    }
}

impl Drop for StoredPipelines {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Between refused permission checks: the operator has to change the token's policy.
const PERMISSION_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// Waits until the token may read the prefix: a read of the prefix's own key is 404 (or
/// the key) for a token that may, 403 for one that may not.
async fn wait_for_permission(client: &ConsulClient, tried: &watch::Sender<bool>) {
    let mut failures = 0;
    loop {
        let error = match client.kv_get(KV_PREFIX, Default::default()).await {
            Ok(_) => return,
            Err(error) => error,
        };
        tried.send_replace(true);
        failures += 1;
        if is_forbidden(&error) {
            if failures == 1 {
                tracing::error!(%error, "the controller's Consul token may not read {KV_PREFIX}: jobs naming a stored pipeline stay transient (pipeline_unavailable) until it can; grant the controller's policy key_prefix \"{KV_PREFIX}\" {{ policy = \"read\" }}");
            }
        } else {
            tracing::warn!(%error, "cannot read the stored pipelines from Consul yet; retrying");
        }
        tokio::time::sleep(PERMISSION_BACKOFF.delay(failures)).await;
    }
}

async fn follow(
    client: ConsulClient,
    wait: Duration,
    sender: watch::Sender<View>,
    tried: watch::Sender<bool>,
    history: Arc<Mutex<HashMap<String, VecDeque<Stored>>>>,
) {
    wait_for_permission(&client, &tried).await;
    let mut watch = Watch::new(wait);
    let mut generation = 0;
    loop {
        let result = watch
            .next(|options| client.kv_list(KV_PREFIX, options))
            .await;
        tried.send_replace(true);
        match result {
            Ok(pairs) => {
                let previous = sender.borrow().clone();
                let view = read(&pairs, previous.as_ref().map(|p| &p.pipelines));
                tracing::debug!(pipelines = view.len(), "stored pipelines changed");
                keep_history(&mut lock(&history), &view);
                generation += 1;
                sender.send_replace(Some(Arc::new(Answer {
                    generation,
                    pipelines: view,
                })));
            }
            Err(error) => {
                tracing::warn!(%error, "Consul watch of the stored pipelines failed; keeping the last known ones");
            }
        }
    }
}

/// Adds the revisions of `view` to `history`, keeping the last [`REVISIONS_KEPT`] of each
/// pipeline `view` holds (a deleted pipeline's are dropped).
fn keep_history(history: &mut HashMap<String, VecDeque<Stored>>, view: &HashMap<String, Stored>) {
    history.retain(|name, _| view.contains_key(name));
    for (name, stored) in view {
        let kept = history.entry(name.clone()).or_default();
        if kept.iter().all(|k| k.revision != stored.revision) {
            kept.push_back(stored.clone());
            while kept.len() > REVISIONS_KEPT {
                kept.pop_front();
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_forbidden(error: &Error) -> bool {
    matches!(error, Error::Status { status, .. } if status.as_u16() == 403)
}

/// The view of `pairs`: entries whose revision is unchanged from `previous` are reused,
/// the rest parsed (a value that does not parse is logged once, at its revision). Keys
/// below a further `/`, or whose name no job could give, are skipped.
fn read(pairs: &[KvPair], previous: Option<&HashMap<String, Stored>>) -> HashMap<String, Stored> {
    let mut view = HashMap::new();
    for pair in pairs {
        let Some(name) = pipeline_name_of_key(&pair.key) else {
            continue;
        };
        let unchanged = previous
            .and_then(|previous| previous.get(name))
            .filter(|stored| stored.revision == pair.modify_index);
        let stored = match unchanged {
            Some(stored) => stored.clone(),
            None => parse(name, pair),
        };
        view.insert(name.to_string(), stored);
    }
    view
}

/// The pipeline `name` stored as `pair` (a value that does not parse is logged).
fn parse(name: &str, pair: &KvPair) -> Stored {
    let pipeline = std::str::from_utf8(&pair.value)
        .map_err(|_| "the stored value is not UTF-8 text".to_string())
        .and_then(|text| Pipeline::parse(text).map_err(|e| e.to_string()))
        .map(Arc::new);
    if let Err(error) = &pipeline {
        tracing::warn!(pipeline = name, revision = pair.modify_index, %error, "a stored pipeline is invalid; jobs naming it fail invalid_pipeline");
    }
    Stored {
        revision: pair.modify_index,
        pipeline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str, value: &str, revision: u64) -> KvPair {
        KvPair {
            key: format!("{KV_PREFIX}{name}"),
            value: value.as_bytes().to_vec(),
            modify_index: revision,
            ..KvPair::default()
        }
    }

    #[test]
    fn a_view_keeps_parsed_revisions_and_names_what_does_not_parse() {
        let good = r#"{"a": {"algorithm": "echo"}}"#;
        let pairs = vec![
            pair("ok", good, 5),
            pair("broken", "{not json", 6),
            pair("nested/deeper", good, 7),
            pair("Bad Name", good, 8),
        ];
        let view = read(&pairs, None);
        assert_eq!(view.len(), 2, "{view:?}");
        assert_eq!(view["ok"].revision, 5);
        assert!(view["ok"].pipeline.is_ok());
        assert!(view["broken"].pipeline.is_err());
        // A changed revision is parsed again; an unchanged one reused.
        let again = read(
            &[pair("ok", "[]", 9), pair("broken", "{not json", 6)],
            Some(&view),
        );
        assert_eq!(again["ok"].revision, 9);
        assert!(again["ok"].pipeline.is_err());
        assert!(again["broken"].pipeline.is_err());
    }

    #[test]
    fn the_last_revisions_of_each_stored_pipeline_are_kept() {
        let good = |n: u64| format!(r#"{{"a": {{"algorithm": "echo{n}"}}}}"#);
        let mut history = HashMap::new();
        let mut view = None;
        for revision in 1..=12 {
            let next = read(
                &[pair("p", &good(revision), revision), pair("q", &good(0), 1)],
                view.as_ref(),
            );
            keep_history(&mut history, &next);
            view = Some(next);
        }
        let revisions: Vec<u64> = history["p"].iter().map(|s| s.revision).collect();
        assert_eq!(revisions, (5..=12).collect::<Vec<_>>());
        assert_eq!(history["q"].len(), 1, "an unchanged revision is kept once");
        let step = &history["p"][0].pipeline.as_ref().unwrap().steps()[0];
        assert_eq!(step.algorithm, "echo5", "each revision as it was");
        keep_history(&mut history, &read(&[pair("q", &good(0), 1)], None));
        assert!(!history.contains_key("p"), "a deleted pipeline's go");
    }

    #[tokio::test]
    async fn an_unanswered_store_says_not_yet() {
        let store = StoredPipelines::none();
        assert!(matches!(store.get("x").await, Lookup::NotYet));
    }
}
