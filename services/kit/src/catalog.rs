//! The algorithms of this runner: discovered from the link-time registry, described, and
//! loaded once.

use crate::algorithm::{AlgorithmEntry, LoadContext, LoadedAlgorithm};
use crate::metrics::AlgorithmMetrics;
use plugworker_rpc::runner::v1::AlgorithmInfo;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Why a runner's algorithm set is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "no algorithms are linked into this runner (does main.rs call plugworker_kit::algorithms!()?)"
    )]
    Empty,
    #[error("algorithm name {0:?} is registered twice")]
    Duplicate(&'static str),
    #[error(
        "algorithm name {0:?} is not usable as a Consul tag (use lowercase letters, digits and _)"
    )]
    BadName(&'static str),
    #[error("the input schema of {algorithm} does not compile: {reason}")]
    BadSchema {
        algorithm: &'static str,
        reason: String,
    },
    #[error("algorithm {algorithm} failed to load: {source}")]
    Load {
        algorithm: &'static str,
        #[source]
        source: crate::LoadError,
    },
}

/// An algorithm's published description plus its compiled input validator.
pub(crate) struct Described {
    pub entry: &'static AlgorithmEntry,
    /// Position in name order: where [`Catalog::load_all`] puts the loaded algorithm.
    pub index: usize,
    pub info: AlgorithmInfo,
    pub validator: jsonschema::Validator,
    /// `Run <name>`: the name of the run's server span, built once.
    pub span_name: String,
    /// The algorithm's metric series, looked up at its first run.
    pub metrics: OnceLock<AlgorithmMetrics>,
}

/// Every algorithm linked into the binary, described but not yet loaded.
pub struct Catalog {
    pub(crate) algorithms: BTreeMap<&'static str, Described>,
}

impl Catalog {
    /// Collects every [`register_algorithm!`](crate::register_algorithm) in the binary.
    pub fn discover() -> Result<Self, CatalogError> {
        Self::from_entries(inventory::iter::<AlgorithmEntry>)
    }

    /// The algorithms of `entries` alone ([`AlgorithmEntry::of`]), checked as
    /// [`Catalog::discover`] checks them: for a runner served in-process
    /// ([`crate::Runner`]) with the algorithms a test chose.
    pub fn from_entries(
        entries: impl IntoIterator<Item = &'static AlgorithmEntry>,
    ) -> Result<Self, CatalogError> {
        let mut algorithms = BTreeMap::new();
        for entry in entries {
            if entry.name.is_empty()
                || !entry
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(CatalogError::BadName(entry.name));
            }
            let input_schema = (entry.input_schema)();
            let output_schema = (entry.output_schema)();
            let validator =
                jsonschema::validator_for(&input_schema).map_err(|e| CatalogError::BadSchema {
                    algorithm: entry.name,
                    reason: e.to_string(),
                })?;
            let info = AlgorithmInfo {
                name: entry.name.to_string(),
                version: entry.version.to_string(),
                description: entry.description.to_string(),
                input_schema: input_schema.to_string(),
                output_schema: output_schema.to_string(),
            };
            let described = Described {
                entry,
                // Set below, once every name is known.
                index: 0,
                info,
                validator,
                span_name: format!("Run {}", entry.name),
                metrics: OnceLock::new(),
            };
            if algorithms.insert(entry.name, described).is_some() {
                return Err(CatalogError::Duplicate(entry.name));
            }
        }
        if algorithms.is_empty() {
            return Err(CatalogError::Empty);
        }
        for (index, described) in algorithms.values_mut().enumerate() {
            described.index = index;
        }
        Ok(Self { algorithms })
    }

    /// Algorithm names, sorted: exactly the runner's Consul tags.
    pub fn names(&self) -> Vec<String> {
        self.algorithms.keys().map(|n| n.to_string()).collect()
    }

    pub fn infos(&self) -> Vec<AlgorithmInfo> {
        self.algorithms.values().map(|d| d.info.clone()).collect()
    }

    /// Loads every algorithm, in name order (each at its [`Described::index`], so a run
    /// finds it without a second lookup by name); the first failure names the algorithm.
    pub(crate) fn load_all(
        &self,
        context: &LoadContext,
    ) -> Result<Vec<Arc<dyn LoadedAlgorithm>>, CatalogError> {
        let mut loaded = Vec::with_capacity(self.algorithms.len());
        for (name, described) in &self.algorithms {
            let started = std::time::Instant::now();
            let algorithm =
                (described.entry.load)(context).map_err(|source| CatalogError::Load {
                    algorithm: name,
                    source,
                })?;
            tracing::info!(
                algorithm = name,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "algorithm loaded"
            );
            loaded.push(algorithm);
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_algorithms::Twice;
    use crate::{Algorithm, LoadError, RunContext, RunError};

    struct BadName;

    impl Algorithm for BadName {
        type Input = f64;
        type Output = f64;
        const NAME: &'static str = "Bad Name";
        const VERSION: &'static str = "1";
        const DESCRIPTION: &'static str = "Not a tag.";
        fn load(_: &LoadContext) -> Result<Self, LoadError> {
            Err(LoadError::other("unreachable"))
        }
        async fn run(&self, input: f64, _: &RunContext) -> Result<f64, RunError> {
            Ok(input)
        }
    }

    static TWICE: AlgorithmEntry = AlgorithmEntry::of::<Twice>();
    static TWICE_AGAIN: AlgorithmEntry = AlgorithmEntry::of::<Twice>();
    static BAD_NAME: AlgorithmEntry = AlgorithmEntry::of::<BadName>();

    #[test]
    fn a_name_registered_twice_is_refused() {
        let error = Catalog::from_entries([&TWICE, &TWICE_AGAIN]).err().unwrap();
        assert!(matches!(error, CatalogError::Duplicate("twice")), "{error}");
    }

    #[test]
    fn names_must_be_usable_as_consul_tags() {
        let error = Catalog::from_entries([&BAD_NAME]).err().unwrap();
        assert!(
            matches!(error, CatalogError::BadName("Bad Name")),
            "{error}"
        );
    }

    #[test]
    fn an_empty_runner_is_refused() {
        let error = Catalog::from_entries([]).err().unwrap();
        assert!(matches!(error, CatalogError::Empty));
    }

    #[tokio::test]
    async fn described_and_loaded_algorithms_run() {
        let catalog = Catalog::from_entries([&TWICE]).unwrap();
        assert_eq!(catalog.names(), vec!["twice"]);
        let info = &catalog.infos()[0];
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&info.input_schema).unwrap()["type"],
            "number"
        );
        let loaded = catalog.load_all(&LoadContext::new(".")).unwrap();
        let context = RunContext::new("twice", None);
        let (output, _) = loaded[catalog.algorithms["twice"].index]
            .clone()
            .run(serde_json::json!(21.0), context)
            .await
            .unwrap();
        assert_eq!(output, b"42.0");
    }
}
