//! Named pipelines: the controller's live copy of Consul's KV prefix
//! `plugworker/pipelines/` (one key per pipeline, its value the pipeline's JSON object).
//!
//! One blocking `kv_list` on the prefix, with the index handling, rate limit and error
//! backoff of [`Watch`] (as the resolver follows the catalog): a pipeline put, changed
//! or deleted applies to jobs that start after the watch sees it, with no restart. Each
//! value is parsed once per revision (its `ModifyIndex`); one that does not parse is kept
//! as its error, so jobs naming it fail `invalid_pipeline` with the reason.
//!
//! Before the first answer nothing is known: [`Lookup::NotYet`] (jobs naming a pipeline
//! are transient then). Consul answers a listing with only the entries the token may
//! read (no error), so a token without read on the prefix would see no pipeline at all
//! and fail every named job permanently: the watch therefore first reads one key under
//! the prefix, which such a token is refused (403). Until that read passes, the watch
//! logs the fix and named pipelines stay unavailable (transient); inline ones still run.

use plugworker_consul_client::{ConsulClient, Error, KvPair, Watch};
use plugworker_jobs::pipeline::{KV_PREFIX, Pipeline, valid_pipeline_name};
use plugworker_lifecycle::Backoff;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
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

/// Stored pipelines by name; `None` until Consul first answers.
type View = Option<Arc<HashMap<String, Stored>>>;

/// The named pipelines, kept live by a blocking query; the task stops when this is dropped.
pub struct StoredPipelines {
    view: watch::Receiver<View>,
    /// True once the watch has tried Consul (answered, refused or failed).
    tried: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
    client: Option<ConsulClient>,
}

impl StoredPipelines {
    /// Follows `plugworker/pipelines/` with requests Consul may hold for up to `wait`.
    pub fn start(client: ConsulClient, wait: Duration) -> Self {
        let (sender, view) = watch::channel(None);
        let (tried_sender, tried) = watch::channel(false);
        let task = tokio::spawn(follow(client.clone(), wait, sender, tried_sender));
        Self {
            view,
            tried,
            task: Some(task),
            client: Some(client),
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
        }
    }

    /// The pipeline stored as `name` now. A name the watch does not hold is read once
    /// more from Consul: a pipeline put just before its first job (the watch a few
    /// milliseconds behind) must not fail that job permanently.
    pub async fn get(&self, name: &str) -> Lookup {
        let cached = match &*self.view.borrow() {
            None => return Lookup::NotYet,
            Some(view) => view.get(name).cloned(),
        };
        if let Some(stored) = cached {
            return Lookup::Found(stored);
        }
        let Some(client) = &self.client else {
            return Lookup::Unknown;
        };
        match client
            .kv_get(&format!("{KV_PREFIX}{name}"), Default::default())
            .await
        {
            Ok((None, _)) => Lookup::Unknown,
            Ok((Some(pair), _)) => Lookup::Found(parse(name, &pair)),
            Err(error) => {
                tracing::warn!(%error, pipeline = name, "cannot read a stored pipeline the watch does not hold yet");
                Lookup::NotYet
            }
        }
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
) {
    wait_for_permission(&client, &tried).await;
    let mut watch = Watch::new(wait);
    loop {
        let result = watch
            .next(|options| client.kv_list(KV_PREFIX, options))
            .await;
        tried.send_replace(true);
        match result {
            Ok(pairs) => {
                let previous = sender.borrow().clone();
                let view = read(&pairs, previous.as_deref());
                tracing::debug!(pipelines = view.len(), "stored pipelines changed");
                sender.send_replace(Some(Arc::new(view)));
            }
            Err(error) => {
                tracing::warn!(%error, "Consul watch of the stored pipelines failed; keeping the last known ones");
            }
        }
    }
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
        let Some(name) = pair.key.strip_prefix(KV_PREFIX) else {
            continue;
        };
        if !valid_pipeline_name(name) {
            continue;
        }
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

    #[tokio::test]
    async fn an_unanswered_store_says_not_yet() {
        let store = StoredPipelines::none();
        assert!(matches!(store.get("x").await, Lookup::NotYet));
    }
}
