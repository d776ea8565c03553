//! A versioned gallery in a folder or under an S3 prefix (docs/gallery.md).
//!
//! Layout at a location:
//! - `templates/<sha256>.<ext>`: template image bytes, content-addressed;
//! - `embeddings/<model key>/<sha256>.bin`: one version's embeddings, in the embedding
//!   cache's format ([`Embedder::cache_key`] is the model key), content-addressed;
//! - `versions/<version>.json`: an immutable manifest, `<version>` the sha256 of its bytes;
//! - `current`: `{"version": "<version>"}`, the live version.
//!
//! Everything but `current` is immutable and named by its content, so writing it twice
//! (two publishers, a retry) is harmless, and `current` is replaced last by a conditional
//! write (S3 `If-Match`/`If-None-Match`, a folder's lock file and rename): a reader sees the
//! old version or the new one, and of two concurrent publishers the second re-applies its
//! change on top of the first instead of overwriting it. A folder without `current` is a
//! read-only gallery in the older format ([`Gallery::load`]); publishing to it converts it.

use crate::embedder::{EMBEDDING_DIM, Embedder, EmbedderError};
use crate::gallery::{
    self, FileHashes, Gallery, GalleryError, Template, decode_embeddings, decode_template,
    encode_embeddings, sha256_hex, validate_label, write_atomically,
};
use crate::index::EmbeddingIndex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const CURRENT: &str = "current";
const FORMAT: u32 = 1;
/// A publisher that loses the race for `current` this many times in a row gives up: each
/// loss means another version landed, so only a storm of publishers gets here.
const MAX_ATTEMPTS: usize = 20;
/// How long a publisher waits for a folder's lock before giving up: the critical section it
/// guards (re-read `current`, rename) takes milliseconds, and a dead holder's lock is gone.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Similarity from which a new template is reported as a near-duplicate of a template of
/// another label: copies of one template with captions and crops score 0.46–0.82 with SSCD
/// distilled and unrelated photos at most 0.17 (runners/image's meme tests), so at 0.5
/// queries of one label would often be answered with the other.
pub const NEAR_DUPLICATE_SIMILARITY: f32 = 0.5;
/// Length of a short version id (as in `algorithm_version`'s `+gallery.<short>`).
pub const SHORT_VERSION: usize = 12;

/// The first [`SHORT_VERSION`] characters of a version id.
pub fn short_version(version: &str) -> &str {
    &version[..version.len().min(SHORT_VERSION)]
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("gallery location {text:?}: {reason}")]
    InvalidLocation { text: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{url}: {message}")]
    S3 { url: String, message: String },
    #[error("S3 gallery locations need plugworker-meme's `s3` feature")]
    S3Disabled,
    #[error("gallery {location} is corrupt: {object}: {reason}")]
    Corrupt {
        location: String,
        object: String,
        reason: String,
    },
    #[error("gallery {location}: {object} does not exist")]
    Missing { location: String, object: String },
    #[error(
        "gallery {0} has no version yet (no `current`): publish one with `plugworker gallery add`"
    )]
    NoVersion(String),
    #[error(transparent)]
    Gallery(#[from] GalleryError),
    #[error("template {name}: {reason}")]
    Template { name: String, reason: String },
    #[error("template {name}: {source}")]
    Embed { name: String, source: EmbedderError },
    #[error("{0}")]
    Change(String),
    #[error("no version of {location} starts with {prefix:?}{}", if *.ambiguous { " uniquely" } else { "" })]
    UnknownVersion {
        location: String,
        prefix: String,
        ambiguous: bool,
    },
    #[error("gallery {location}: lost the race for `current` {attempts} times in a row; try again")]
    Contended { location: String, attempts: usize },
    #[error(
        "this change needs the embedding model: templates have no stored embedding of the gallery's model"
    )]
    NeedsModel,
    #[error("gallery {0}: the lock file .lock is held (another publisher); try again")]
    Locked(String),
    #[error(
        "the gallery's embeddings are of model {gallery_model}, this embedder is {model}: publishing would re-embed every template and switch the runners' model (allow it with --reembed)"
    )]
    ModelChange {
        gallery_model: String,
        model: String,
    },
}

/// Where a gallery lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A folder, absolute (canonical when it exists).
    Folder(PathBuf),
    /// `s3://bucket/prefix`; `prefix` without leading or trailing `/`, possibly empty.
    S3 { bucket: String, prefix: String },
}

impl Location {
    /// `s3://bucket[/prefix]` or a folder path (relative paths are made absolute).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidLocation {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        if text.trim().is_empty() {
            return Err(invalid("empty"));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("no bucket (s3://bucket/prefix)"));
            }
            if !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            {
                return Err(invalid("not an S3 bucket name"));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if text.contains("://") {
            return Err(invalid("a folder or s3://bucket/prefix"));
        }
        let absolute = std::path::absolute(text).map_err(|e| invalid(&e.to_string()))?;
        // Canonical, so two spellings of one folder share one KV key.
        Ok(Self::Folder(
            std::fs::canonicalize(&absolute).unwrap_or(absolute),
        ))
    }

    /// `plugworker/galleries/<first 16 hex of sha256 of the location>`: the Consul KV key
    /// holding the current version, which runners watch.
    pub fn kv_key(&self) -> String {
        format!(
            "plugworker/galleries/{}",
            &sha256_hex(self.to_string().as_bytes())[..16]
        )
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Folder(path) => write!(f, "{}", path.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// One template in a version's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredTemplate {
    pub label: String,
    /// Path relative to the location (`templates/<sha256>.<ext>`).
    pub file: String,
    pub sha256: String,
    /// The file name it was added as (what `list` shows and `remove --file` matches).
    pub name: String,
}

/// An immutable version: `versions/<sha256 of these bytes>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub parent: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub created_by: String,
    /// One line: what this version changed.
    pub change: String,
    /// [`Embedder::cache_key`] of the model the embeddings were computed with.
    pub embedding_model: String,
    /// The embeddings blob, relative to the location.
    pub embeddings: String,
    pub templates: Vec<StoredTemplate>,
}

/// One entry of [`GalleryStore::history`], newest first.
#[derive(Clone, Debug, Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub parent: Option<String>,
    pub created_at: String,
    pub created_by: String,
    pub change: String,
    pub templates: usize,
}

/// An image to add.
#[derive(Clone, Debug)]
pub struct NewImage {
    /// File name, for the manifest's `name` and messages; its extension names the format.
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A change [`GalleryStore::publish`] applies on top of the current version.
#[derive(Clone, Debug)]
pub enum Change {
    Add {
        label: String,
        images: Vec<NewImage>,
    },
    /// Templates under several labels in one version, each (label, image): a bulk import
    /// (a whole collection at once, rather than one version per label). Near-duplicates
    /// are looked for among the gallery's templates, not among the imported ones.
    Import { templates: Vec<(String, NewImage)> },
    /// Every template of `label`, or only those whose `name` or `file` is `file`.
    Remove { label: String, file: Option<String> },
    /// A new version with the templates of `to` (a version id or a unique prefix of one in
    /// the history), so the history records the way back too.
    Rollback { to: String },
}

/// What [`GalleryStore::publish`] did.
#[derive(Clone, Debug)]
pub struct Published {
    /// The new version; `None` when the change changed nothing (nothing was written).
    pub version: Option<String>,
    /// The version it was applied on (`None`: an empty location).
    pub parent: Option<String>,
    /// The manifest's `change` line.
    pub change: String,
    /// Near-duplicates under other labels, templates already present: published anyway.
    pub warnings: Vec<String>,
    /// How many times another publisher's version landed first and the change was re-applied.
    pub retries: usize,
}

/// A gallery location and the client to reach it.
pub struct GalleryStore {
    location: Location,
    backend: Backend,
    cache_dir: Option<PathBuf>,
    reembed: bool,
    /// A read-only folder's file hashes, so a poll of `current` reads only changed files.
    hashes: FileHashes,
}

enum Backend {
    Folder(PathBuf),
    #[cfg(feature = "s3")]
    S3(S3Prefix),
}

/// `current` as read, with what a conditional replace compares against.
struct CurrentRead {
    version: Option<String>,
    /// S3: the object's ETag; a folder: its bytes.
    tag: Option<String>,
}

/// The templates and embeddings a change applies to.
struct Base {
    version: Option<String>,
    templates: Vec<StoredTemplate>,
    /// The version's model key and embeddings blob (`None`: no version yet).
    embedding_model: Option<String>,
    embeddings: Option<String>,
    /// Bytes of templates not yet under `templates/` (a read-only folder being converted).
    unstored: HashMap<String, PathBuf>,
}

impl GalleryStore {
    /// A store at `location`. S3 uses the standard AWS configuration chain (endpoint from
    /// `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`, path-style then, as for moto).
    pub async fn open(location: Location) -> Result<Self, StoreError> {
        let backend = match &location {
            Location::Folder(path) => Backend::Folder(path.clone()),
            #[cfg(feature = "s3")]
            Location::S3 { bucket, prefix } => Backend::S3(S3Prefix {
                client: plugworker_claim_check::s3_client(None, None).await,
                bucket: bucket.clone(),
                prefix: prefix.clone(),
            }),
            #[cfg(not(feature = "s3"))]
            Location::S3 { .. } => return Err(StoreError::S3Disabled),
        };
        Ok(Self {
            location,
            backend,
            cache_dir: None,
            reembed: false,
            hashes: FileHashes::default(),
        })
    }

    /// A store at `location` reached with `client` (tests, callers that built one).
    #[cfg(feature = "s3")]
    pub fn with_s3_client(location: Location, client: aws_sdk_s3::Client) -> Self {
        let backend = match &location {
            Location::Folder(path) => Backend::Folder(path.clone()),
            Location::S3 { bucket, prefix } => Backend::S3(S3Prefix {
                client,
                bucket: bucket.clone(),
                prefix: prefix.clone(),
            }),
        };
        Self {
            location,
            backend,
            cache_dir: None,
            reembed: false,
            hashes: FileHashes::default(),
        }
    }

    /// Where a read-only folder's embeddings are cached ([`Gallery::load`]); versioned
    /// galleries carry theirs.
    pub fn with_cache_dir(mut self, cache_dir: Option<PathBuf>) -> Self {
        self.cache_dir = cache_dir;
        self
    }

    /// A read-only folder's files are remembered by status once their last change is
    /// `racy` old (2 s by default, as timestamps may be coarse): a test whose files are
    /// all fresh sets less to see the unchanged ones skipped ([`GalleryStore::files_read`]).
    pub fn with_racy_window(mut self, racy: Duration) -> Self {
        self.hashes = FileHashes::new(racy);
        self
    }

    /// How many of a read-only folder's files polls and loads have read and hashed.
    pub fn files_read(&self) -> u64 {
        self.hashes.reads()
    }

    /// Whether [`GalleryStore::publish`] may switch the gallery to the embedder's model,
    /// re-embedding every template (otherwise [`StoreError::ModelChange`]).
    pub fn with_reembed(mut self, reembed: bool) -> Self {
        self.reembed = reembed;
        self
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The live version: `current`'s, or a read-only folder's content hash.
    pub async fn current(&self) -> Result<String, StoreError> {
        if let Some(version) = self.read_current().await?.version {
            return Ok(version);
        }
        match &self.backend {
            Backend::Folder(root) => {
                Ok(gallery::legacy_version(&gallery::scan(root, &self.hashes)?))
            }
            #[cfg(feature = "s3")]
            Backend::S3(_) => Err(StoreError::NoVersion(self.location.to_string())),
        }
    }

    /// Loads `version`: templates and embeddings. Rows of `previous` (same model) are
    /// reused, the rest read from the version's embeddings blob; templates without a
    /// stored embedding (another model) are embedded here, and logged.
    pub async fn load(
        &self,
        version: &str,
        embedder: &Embedder,
        previous: Option<&Gallery>,
    ) -> Result<Gallery, StoreError> {
        let manifest = match self.manifest(version).await {
            Ok(manifest) => manifest,
            Err(StoreError::Missing { .. }) if self.is_read_only_folder().await? => {
                let Some(root) = self.folder() else {
                    unreachable!("only folders are read-only galleries")
                };
                let (gallery, stats) =
                    Gallery::load_with(root, embedder, self.cache_dir.as_deref(), &self.hashes)?;
                tracing::info!(gallery = %self.location, version = short_version(gallery.version()), ?stats, "loaded read-only gallery folder");
                return Ok(gallery);
            }
            Err(e) => return Err(e),
        };
        let key = embedder.cache_key();
        let templates: Vec<Template> = manifest
            .templates
            .iter()
            .map(|t| Template {
                label: t.label.clone(),
                file: t.file.clone(),
                sha256: t.sha256.clone(),
                name: t.name.clone(),
            })
            .collect();
        // The new version's rows are written straight into its index: copied from the
        // version serving (same model), then the rows still missing taken from the blob
        // as it is read, then computed. Nothing else holds a row, so adding one template
        // to 10,000 costs the new index and a read of the blob, not copies of every row.
        let mut index = EmbeddingIndex::zeroed(EMBEDDING_DIM, templates.len());
        let mut missing: HashMap<&str, Vec<usize>> = HashMap::new();
        let reusable = previous
            .filter(|p| p.embedding_model() == key)
            .map(|p| (p, p.rows_by_sha()));
        for (position, template) in templates.iter().enumerate() {
            match &reusable {
                Some((previous, rows)) if rows.contains_key(template.sha256.as_str()) => {
                    let row = rows[template.sha256.as_str()];
                    index
                        .row_mut(position)
                        .copy_from_slice(previous.index().row(row));
                }
                _ => missing
                    .entry(template.sha256.as_str())
                    .or_default()
                    .push(position),
            }
        }
        let reused = templates.len() - missing.values().map(Vec::len).sum::<usize>();
        if !missing.is_empty() && manifest.embedding_model == key {
            let object = &manifest.embeddings;
            let reader = self
                .reader(object)
                .await?
                .ok_or_else(|| StoreError::Missing {
                    location: self.location.to_string(),
                    object: object.clone(),
                })?;
            // Hashed as it streams: rows of a blob that is not what its name says are
            // refused before the index is served, and the version serving stays.
            let mut reader = gallery::HashingReader::new(reader);
            let sha256 = gallery::for_each_embedding(&mut reader, &key, |sha, row| {
                if let Some(positions) = missing.remove(sha) {
                    for position in positions {
                        index.row_mut(position).copy_from_slice(row);
                    }
                }
            })
            .and_then(|()| reader.finish())
            .map_err(|e| self.corrupt(object, e.to_string()))?;
            if Path::new(object).file_stem() != Some(std::ffi::OsStr::new(&sha256)) {
                return Err(self.corrupt(object, "its sha256 is not its name".into()));
            }
        }
        let mut embedded = 0;
        for (sha, positions) in missing {
            let template = &manifest.templates[positions[0]];
            debug_assert_eq!(template.sha256, sha);
            let row = self.embed_stored(template, embedder).await?;
            for position in positions {
                index.row_mut(position).copy_from_slice(&row);
            }
            embedded += 1;
        }
        if embedded > 0 {
            tracing::warn!(gallery = %self.location, version = short_version(version), embedded, model = %key, stored_model = %manifest.embedding_model, "embedded templates the version holds no embeddings for (another model)");
        }
        tracing::debug!(gallery = %self.location, version = short_version(version), templates = templates.len(), reused, embedded, "loaded gallery version");
        Ok(Gallery::from_index(
            templates,
            index,
            version.to_string(),
            key,
        ))
    }

    /// The versions from the current one back to the first, newest first.
    pub async fn history(&self) -> Result<Vec<VersionInfo>, StoreError> {
        let mut next = match self.read_current().await?.version {
            Some(version) => Some(version),
            None => {
                let version = self.current().await?;
                let templates = self.templates(&version).await?.len();
                return Ok(vec![VersionInfo {
                    version,
                    parent: None,
                    created_at: String::new(),
                    created_by: String::new(),
                    change: "read-only folder gallery (no versions yet)".into(),
                    templates,
                }]);
            }
        };
        let mut history = Vec::new();
        while let Some(version) = next {
            let manifest = self.manifest(&version).await?;
            next = manifest.parent.clone();
            history.push(VersionInfo {
                version,
                parent: manifest.parent,
                created_at: manifest.created_at,
                created_by: manifest.created_by,
                change: manifest.change,
                templates: manifest.templates.len(),
            });
        }
        Ok(history)
    }

    /// The templates of `version` (a read-only folder's: `file` and `name` are its path).
    pub async fn templates(&self, version: &str) -> Result<Vec<StoredTemplate>, StoreError> {
        match self.manifest(version).await {
            Ok(manifest) => Ok(manifest.templates),
            Err(StoreError::Missing { .. }) if self.is_read_only_folder().await? => {
                let Some(root) = self.folder() else {
                    unreachable!("only folders are read-only galleries")
                };
                Ok(gallery::scan(root, &self.hashes)?
                    .into_iter()
                    .map(|t| StoredTemplate {
                        name: t.file.clone(),
                        label: t.label,
                        file: t.file,
                        sha256: t.sha256,
                    })
                    .collect())
            }
            Err(e) => Err(e),
        }
    }

    /// A version's manifest, checked against its id (the sha256 of its bytes).
    pub async fn manifest(&self, version: &str) -> Result<Manifest, StoreError> {
        if version.len() != 64 || !version.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Change(format!(
                "{version:?} is not a version id (64 hex digits)"
            )));
        }
        let object = format!("versions/{version}.json");
        let bytes = self
            .get(&object)
            .await?
            .ok_or_else(|| StoreError::Missing {
                location: self.location.to_string(),
                object: object.clone(),
            })?;
        if sha256_hex(&bytes) != version {
            return Err(self.corrupt(&object, "its sha256 is not its name".into()));
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| self.corrupt(&object, format!("not a version manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(self.corrupt(
                &object,
                format!(
                    "format {} (this build reads format {FORMAT})",
                    manifest.format
                ),
            ));
        }
        Ok(manifest)
    }

    /// Applies `change` to the current version and publishes the result as the new current
    /// version. New images are decoded and embedded once; when another publisher's version
    /// lands first, the change is re-applied on top of it.
    ///
    /// Without `embedder`, the version keeps the current version's model and its stored
    /// rows; a change that needs a row computed (an `add`, a template without a stored row)
    /// is then [`StoreError::NeedsModel`], before anything is written.
    pub async fn publish(
        &self,
        change: Change,
        embedder: Option<&Embedder>,
        author: &str,
    ) -> Result<Published, StoreError> {
        // Embeddings known so far, by template sha256: the new images', then each base's.
        let mut known: HashMap<String, Vec<f32>> = HashMap::new();
        let mut additions: Vec<(StoredTemplate, &NewImage)> = Vec::new();
        let incoming: Vec<(&String, &NewImage)> = match &change {
            Change::Add { label, images } => images.iter().map(|image| (label, image)).collect(),
            Change::Import { templates } => templates.iter().map(|(l, i)| (l, i)).collect(),
            Change::Remove { .. } | Change::Rollback { .. } => Vec::new(),
        };
        if matches!(change, Change::Add { .. } | Change::Import { .. }) {
            let embedder = embedder.ok_or(StoreError::NeedsModel)?;
            if incoming.is_empty() {
                return Err(StoreError::Change("no images to add".into()));
            }
            for (label, image) in incoming {
                validate_label(label)
                    .map_err(|reason| StoreError::Change(format!("label {label:?}: {reason}")))?;
                let sha256 = sha256_hex(&image.bytes);
                let decoded =
                    decode_template(&image.bytes).map_err(|reason| StoreError::Template {
                        name: image.name.clone(),
                        reason,
                    })?;
                if !known.contains_key(&sha256) {
                    let row = embedder
                        .embed(&decoded)
                        .map_err(|source| StoreError::Embed {
                            name: image.name.clone(),
                            source,
                        })?;
                    known.insert(sha256.clone(), row);
                }
                additions.push((
                    StoredTemplate {
                        label: label.clone(),
                        file: format!(
                            "templates/{sha256}.{}",
                            extension(&image.name, &image.bytes)
                        ),
                        sha256,
                        name: file_name(&image.name),
                    },
                    image,
                ));
            }
        }
        for attempt in 0..MAX_ATTEMPTS {
            let current = self.read_current().await?;
            let base = self.base(current.version.as_deref()).await?;
            let key = match (embedder, &base.embedding_model) {
                (Some(embedder), Some(model))
                    if !self.reembed && &embedder.cache_key() != model =>
                {
                    return Err(StoreError::ModelChange {
                        gallery_model: model.clone(),
                        model: embedder.cache_key(),
                    });
                }
                (Some(embedder), _) => embedder.cache_key(),
                (None, Some(model)) => model.clone(),
                (None, None) => return Err(StoreError::NeedsModel),
            };
            let (templates, description, warnings) = match &change {
                Change::Add { .. } | Change::Import { .. } => {
                    self.fill_embeddings(&base, &base.templates, &key, embedder, &mut known)
                        .await?;
                    let mut templates = base.templates.clone();
                    let mut present: std::collections::HashSet<(String, String)> = templates
                        .iter()
                        .map(|t| (t.label.clone(), t.sha256.clone()))
                        .collect();
                    let mut warnings = Vec::new();
                    let mut added = 0;
                    for (new, _) in &additions {
                        if !present.insert((new.label.clone(), new.sha256.clone())) {
                            warnings.push(format!(
                                "{}: already a template of {:?}, skipped",
                                new.name, new.label
                            ));
                            continue;
                        }
                        // Against the gallery it joins, not within an import: a collection
                        // of look-alikes would warn quadratically (and cost as much).
                        let checked = match &change {
                            Change::Import { .. } => &templates[..base.templates.len()],
                            _ => &templates[..],
                        };
                        warnings.extend(near_duplicates(new, checked, &known));
                        templates.push(new.clone());
                        added += 1;
                    }
                    if added == 0 {
                        return Ok(Published {
                            version: None,
                            parent: base.version,
                            change: "nothing to add".into(),
                            warnings,
                            retries: attempt,
                        });
                    }
                    let plural = if added == 1 { "image" } else { "images" };
                    let description = match &change {
                        Change::Add { label, .. } => format!("add {label} ({added} {plural})"),
                        _ => {
                            let labels: std::collections::HashSet<&str> =
                                additions.iter().map(|(t, _)| t.label.as_str()).collect();
                            format!("import {added} {plural} ({} labels)", labels.len())
                        }
                    };
                    (templates, description, warnings)
                }
                Change::Remove { label, file } => {
                    let matches = |t: &StoredTemplate| {
                        &t.label == label
                            && file.as_ref().is_none_or(|f| &t.name == f || &t.file == f)
                    };
                    let removed = base.templates.iter().filter(|t| matches(t)).count();
                    if removed == 0 {
                        return Err(StoreError::Change(match file {
                            Some(file) => format!("no template {file:?} labelled {label:?}"),
                            None => format!("no template labelled {label:?}"),
                        }));
                    }
                    let templates: Vec<StoredTemplate> = base
                        .templates
                        .iter()
                        .filter(|t| !matches(t))
                        .cloned()
                        .collect();
                    if templates.is_empty() {
                        return Err(StoreError::Change(
                            "that would remove the last template; a gallery needs one".into(),
                        ));
                    }
                    let plural = if removed == 1 { "image" } else { "images" };
                    let what = match file {
                        Some(file) => format!("remove {label} {file}"),
                        None => format!("remove {label} ({removed} {plural})"),
                    };
                    (templates, what, Vec::new())
                }
                Change::Rollback { to } => {
                    let target = self.resolve(to).await?;
                    let manifest = self.manifest(&target).await?;
                    if manifest.embedding_model == key {
                        let stored = self.read_embeddings(&manifest.embeddings, &key).await?;
                        known.extend(stored);
                    }
                    (
                        manifest.templates,
                        format!("rollback to {}", short_version(&target)),
                        Vec::new(),
                    )
                }
            };
            if same_templates(&templates, &base.templates) {
                return Ok(Published {
                    version: None,
                    parent: base.version,
                    change: format!("nothing changed ({description})"),
                    warnings,
                    retries: attempt,
                });
            }
            self.fill_embeddings(&base, &templates, &key, embedder, &mut known)
                .await?;
            // Every template's bytes and embedding stored before the manifest names them,
            // and the manifest before `current`: whatever a reader can reach is complete.
            for template in &templates {
                if let Some((_, image)) =
                    additions.iter().find(|(t, _)| t.sha256 == template.sha256)
                {
                    self.put_immutable(&template.file, &image.bytes).await?;
                } else if let Some(path) = base.unstored.get(&template.sha256) {
                    let bytes = std::fs::read(path).map_err(|source| StoreError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    self.put_immutable(&template.file, &bytes).await?;
                }
            }
            let blob = encode_embeddings(
                &key,
                templates
                    .iter()
                    .map(|t| (t.sha256.as_str(), known[&t.sha256].as_slice())),
            );
            let embeddings = format!("embeddings/{key}/{}.bin", sha256_hex(&blob));
            self.put_immutable(&embeddings, &blob).await?;
            let manifest = Manifest {
                format: FORMAT,
                parent: base.version.clone(),
                created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                created_by: author.to_string(),
                change: description.clone(),
                embedding_model: key.clone(),
                embeddings,
                templates,
            };
            let bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
            let version = sha256_hex(&bytes);
            self.put_immutable(&format!("versions/{version}.json"), &bytes)
                .await?;
            let pointer = serde_json::to_vec(&serde_json::json!({ "version": version }))
                .expect("a pointer serializes");
            if self
                .replace_current(current.tag.as_deref(), &pointer)
                .await?
            {
                return Ok(Published {
                    version: Some(version),
                    parent: base.version,
                    change: description,
                    warnings,
                    retries: attempt,
                });
            }
            tracing::info!(gallery = %self.location, attempt, "another version landed first; re-applying the change on top of it");
        }
        Err(StoreError::Contended {
            location: self.location.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// A version id from a full id or a unique prefix of one in the history.
    pub async fn resolve(&self, prefix: &str) -> Result<String, StoreError> {
        let prefix = prefix.to_ascii_lowercase();
        let candidates: Vec<String> = self
            .history()
            .await?
            .into_iter()
            .map(|v| v.version)
            .filter(|v| !prefix.is_empty() && v.starts_with(&prefix))
            .collect();
        match candidates.as_slice() {
            [one] => Ok(one.clone()),
            many => Err(StoreError::UnknownVersion {
                location: self.location.to_string(),
                prefix,
                ambiguous: many.len() > 1,
            }),
        }
    }

    async fn base(&self, version: Option<&str>) -> Result<Base, StoreError> {
        if let Some(version) = version {
            let manifest = self.manifest(version).await?;
            return Ok(Base {
                version: Some(version.to_string()),
                templates: manifest.templates,
                embedding_model: Some(manifest.embedding_model),
                embeddings: Some(manifest.embeddings),
                unstored: HashMap::new(),
            });
        }
        // No version yet: an empty location, or a read-only folder whose templates become
        // the first version.
        let Some(root) = self.folder() else {
            return Ok(Base {
                version: None,
                templates: Vec::new(),
                embedding_model: None,
                embeddings: None,
                unstored: HashMap::new(),
            });
        };
        let scanned = match gallery::scan(root, &self.hashes) {
            Ok(scanned) => scanned,
            Err(GalleryError::Missing(_) | GalleryError::Empty(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut unstored = HashMap::new();
        let templates = scanned
            .into_iter()
            .map(|t| {
                let path = root.join(&t.file);
                let stored = StoredTemplate {
                    label: t.label,
                    file: format!("templates/{}.{}", t.sha256, extension(&t.file, &[])),
                    sha256: t.sha256.clone(),
                    name: t.file,
                };
                unstored.insert(t.sha256, path);
                stored
            })
            .collect();
        Ok(Base {
            version: None,
            templates,
            embedding_model: None,
            embeddings: None,
            unstored,
        })
    }

    /// Makes sure `known` has a row of model `key` for each of `templates`: from the base
    /// version's blob (same model), else computed (which needs `embedder`).
    async fn fill_embeddings(
        &self,
        base: &Base,
        templates: &[StoredTemplate],
        key: &str,
        embedder: Option<&Embedder>,
        known: &mut HashMap<String, Vec<f32>>,
    ) -> Result<(), StoreError> {
        let complete = |known: &HashMap<String, Vec<f32>>| {
            templates.iter().all(|t| known.contains_key(&t.sha256))
        };
        if complete(known) {
            return Ok(());
        }
        if let (Some(model), Some(blob)) = (&base.embedding_model, &base.embeddings)
            && model == key
        {
            known.extend(self.read_embeddings(blob, key).await?);
        }
        if complete(known) {
            return Ok(());
        }
        let embedder = embedder.ok_or(StoreError::NeedsModel)?;
        for template in templates {
            if !known.contains_key(&template.sha256) {
                let row = self.embed_stored_or_local(template, base, embedder).await?;
                known.insert(template.sha256.clone(), row);
            }
        }
        Ok(())
    }

    async fn embed_stored_or_local(
        &self,
        template: &StoredTemplate,
        base: &Base,
        embedder: &Embedder,
    ) -> Result<Vec<f32>, StoreError> {
        match base.unstored.get(&template.sha256) {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                embed_bytes(&template.name, &bytes, embedder)
            }
            None => self.embed_stored(template, embedder).await,
        }
    }

    async fn embed_stored(
        &self,
        template: &StoredTemplate,
        embedder: &Embedder,
    ) -> Result<Vec<f32>, StoreError> {
        let bytes = self
            .get(&template.file)
            .await?
            .ok_or_else(|| StoreError::Missing {
                location: self.location.to_string(),
                object: template.file.clone(),
            })?;
        if sha256_hex(&bytes) != template.sha256 {
            return Err(self.corrupt(&template.file, "its sha256 is not the manifest's".into()));
        }
        embed_bytes(&template.name, &bytes, embedder)
    }

    async fn read_embeddings(
        &self,
        object: &str,
        key: &str,
    ) -> Result<HashMap<String, Vec<f32>>, StoreError> {
        let bytes = self.get(object).await?.ok_or_else(|| StoreError::Missing {
            location: self.location.to_string(),
            object: object.to_string(),
        })?;
        decode_embeddings(bytes, key).map_err(|e| self.corrupt(object, e.to_string()))
    }

    /// The folder of a folder location.
    fn folder(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Folder(root) => Some(root),
            #[cfg(feature = "s3")]
            Backend::S3(_) => None,
        }
    }

    async fn is_read_only_folder(&self) -> Result<bool, StoreError> {
        Ok(matches!(self.backend, Backend::Folder(_))
            && self.read_current().await?.version.is_none())
    }

    fn corrupt(&self, object: &str, reason: String) -> StoreError {
        StoreError::Corrupt {
            location: self.location.to_string(),
            object: object.to_string(),
            reason,
        }
    }

    async fn read_current(&self) -> Result<CurrentRead, StoreError> {
        let Some((bytes, tag)) = self.get_tagged(CURRENT).await? else {
            return Ok(CurrentRead {
                version: None,
                tag: None,
            });
        };
        #[derive(Deserialize)]
        struct Pointer {
            version: String,
        }
        let pointer: Pointer = serde_json::from_slice(&bytes)
            .map_err(|e| self.corrupt(CURRENT, format!("not {{\"version\": ...}}: {e}")))?;
        if pointer.version.len() != 64 || !pointer.version.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.corrupt(
                CURRENT,
                format!("{:?} is not a version id", pointer.version),
            ));
        }
        Ok(CurrentRead {
            version: Some(pointer.version),
            tag: Some(tag),
        })
    }

    /// Replaces `current` if it is still what was read (`expected`; `None`: absent).
    /// `Ok(false)`: another publisher replaced it first.
    async fn replace_current(
        &self,
        expected: Option<&str>,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Folder(root) => {
                let _lock = FolderLock::acquire(root, &self.location).await?;
                let now = self.read_current().await?.tag;
                if now.as_deref() != expected {
                    return Ok(false);
                }
                let path = root.join(CURRENT);
                write_atomically(&path, bytes).map_err(|source| StoreError::Io { path, source })?;
                Ok(true)
            }
            #[cfg(feature = "s3")]
            Backend::S3(s3) => s3.put_if(CURRENT, bytes, expected).await,
        }
    }

    /// An object to read through: a folder's file (buffered, so a 20 MB embeddings blob is
    /// never wholly in memory there), an S3 object's body (read whole into memory first).
    async fn reader(
        &self,
        object: &str,
    ) -> Result<Option<Box<dyn std::io::Read + Send>>, StoreError> {
        match &self.backend {
            Backend::Folder(root) => {
                let path = root.join(object);
                match std::fs::File::open(&path) {
                    Ok(file) => Ok(Some(Box::new(std::io::BufReader::with_capacity(
                        1 << 16,
                        file,
                    )))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StoreError::Io { path, source }),
                }
            }
            #[cfg(feature = "s3")]
            Backend::S3(_) => Ok(self.get(object).await?.map(|bytes| {
                Box::new(std::io::Cursor::new(bytes)) as Box<dyn std::io::Read + Send>
            })),
        }
    }

    async fn get(&self, object: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get_tagged(object).await?.map(|(bytes, _)| bytes))
    }

    /// An object's bytes and what a conditional replace compares against: its ETag on
    /// S3, its bytes (as text) in a folder.
    async fn get_tagged(&self, object: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        match &self.backend {
            Backend::Folder(root) => {
                let path = root.join(object);
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        let tag = String::from_utf8_lossy(&bytes).into_owned();
                        Ok(Some((bytes, tag)))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StoreError::Io { path, source }),
                }
            }
            #[cfg(feature = "s3")]
            Backend::S3(s3) => s3.get_tagged(object).await,
        }
    }

    /// Writes a content-addressed object unless it exists (its content is then the same).
    async fn put_immutable(&self, object: &str, bytes: &[u8]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Folder(root) => {
                let path = root.join(object);
                if path.is_file() {
                    return Ok(());
                }
                let io = |source| StoreError::Io {
                    path: path.clone(),
                    source,
                };
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                write_atomically(&path, bytes).map_err(io)
            }
            #[cfg(feature = "s3")]
            Backend::S3(s3) => s3.put_new(object, bytes).await,
        }
    }
}

fn embed_bytes(name: &str, bytes: &[u8], embedder: &Embedder) -> Result<Vec<f32>, StoreError> {
    let image = decode_template(bytes).map_err(|reason| StoreError::Template {
        name: name.to_string(),
        reason,
    })?;
    embedder.embed(&image).map_err(|source| StoreError::Embed {
        name: name.to_string(),
        source,
    })
}

/// Warnings for templates of other labels `new` is (nearly) the same image as.
fn near_duplicates(
    new: &StoredTemplate,
    templates: &[StoredTemplate],
    known: &HashMap<String, Vec<f32>>,
) -> Vec<String> {
    let Some(row) = known.get(&new.sha256) else {
        return Vec::new();
    };
    templates
        .iter()
        .filter(|t| t.label != new.label)
        .filter_map(|t| {
            let other = known.get(&t.sha256)?;
            let score: f32 = row.iter().zip(other).map(|(a, b)| a * b).sum();
            (score >= NEAR_DUPLICATE_SIMILARITY).then(|| {
                format!(
                    "{} looks like template {} of {:?} (similarity {score:.2}): queries of one may be answered with the other",
                    new.name, t.name, t.label
                )
            })
        })
        .collect()
}

fn same_templates(a: &[StoredTemplate], b: &[StoredTemplate]) -> bool {
    let key = |t: &[StoredTemplate]| {
        let mut pairs: Vec<(String, String)> = t
            .iter()
            .map(|t| (t.label.clone(), t.sha256.clone()))
            .collect();
        pairs.sort();
        pairs
    };
    key(a) == key(b)
}

/// The file name without folders.
fn file_name(name: &str) -> String {
    Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string())
}

/// A lower-case image extension: the name's, else the format the bytes start with.
fn extension(name: &str, bytes: &[u8]) -> String {
    let from_name = Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .filter(|e| gallery::IMAGE_EXTENSIONS.contains(&e.as_str()));
    from_name
        .or_else(|| {
            image::guess_format(bytes)
                .ok()
                .and_then(|f| f.extensions_str().first().map(|e| e.to_string()))
        })
        .unwrap_or_else(|| "img".into())
}

/// The folder's exclusive lock: an advisory `flock` on `.lock`, held while the value is
/// alive. The kernel releases it when the holder's file is closed, including when its
/// process dies, so a dead publisher never blocks the next one and no staleness rule (with
/// its races and clock skew) is needed. The file itself stays: removing it would let a
/// waiter lock an unlinked file while a newcomer locks a new one.
struct FolderLock {
    _file: std::fs::File,
}

impl FolderLock {
    async fn acquire(root: &Path, location: &Location) -> Result<Self, StoreError> {
        use std::os::fd::AsRawFd;
        let path = root.join(".lock");
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let started = std::time::Instant::now();
        loop {
            // SAFETY: flock on a descriptor this function owns for the call's duration.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Self { _file: file });
            }
            let error = std::io::Error::last_os_error();
            match error.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {}
                _ => return Err(io(error)),
            }
            if started.elapsed() > LOCK_WAIT {
                return Err(StoreError::Locked(location.to_string()));
            }
            // The holder is between its re-read and its rename: milliseconds.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The objects under one S3 prefix.
#[cfg(feature = "s3")]
struct S3Prefix {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

#[cfg(feature = "s3")]
impl S3Prefix {
    fn key(&self, object: &str) -> String {
        if self.prefix.is_empty() {
            object.to_string()
        } else {
            format!("{}/{object}", self.prefix)
        }
    }

    /// The object's bytes and ETag; `None` if it does not exist.
    async fn get_tagged(&self, object: &str) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        let key = self.key(object);
        let request = self.client.get_object().bucket(&self.bucket).key(&key);
        match request.send().await {
            Ok(output) => {
                let tag = output.e_tag().unwrap_or_default().to_string();
                let body = output.body.collect().await;
                let bytes = body.map_err(|e| s3_error(&self.bucket, &key, e))?;
                Ok(Some((bytes.into_bytes().to_vec(), tag)))
            }
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            // Without s3:ListBucket, S3 answers a missing key 403, not 404: say what to
            // grant rather than take a refusal for "no version yet".
            Err(e) if status(&e) == Some(403) => {
                let mut error = s3_error(&self.bucket, &key, e);
                if let StoreError::S3 { message, .. } = &mut error {
                    message.push_str(LIST_BUCKET_HINT);
                }
                Err(error)
            }
            Err(e) => Err(s3_error(&self.bucket, &key, e)),
        }
    }

    /// Puts `bytes` if the object's ETag is still `expected` (`None`: if there is no
    /// object). `Ok(false)`: the condition failed.
    async fn put_if(
        &self,
        object: &str,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        let key = self.key(object);
        match self.send_put(&key, bytes, expected).await {
            Ok(()) => Ok(true),
            Err(e) if is_lost_race(&e) => Ok(false),
            Err(e) => Err(s3_error(&self.bucket, &key, e)),
        }
    }

    /// One conditional `PutObject` of `key`: `If-Match: expected`, or `If-None-Match: *`.
    async fn send_put(
        &self,
        key: &str,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<(), aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::put_object::PutObjectError>>
    {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(bytes.to_vec().into());
        let request = match expected {
            Some(etag) => request.if_match(etag),
            None => request.if_none_match("*"),
        };
        request.send().await.map(drop)
    }

    /// Puts a content-addressed object unless it exists (its content is then the same).
    /// Only 412 means "exists": a 409 means another conditional write of the key is in
    /// progress and may still fail, so the put is retried (backing off) until it lands or
    /// a 412 shows the other one did.
    async fn put_new(&self, object: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let backoff =
            plugworker_lifecycle::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        let started = std::time::Instant::now();
        let key = self.key(object);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send_put(&key, bytes, None).await {
                Ok(()) => return Ok(()),
                Err(e) if status(&e) == Some(412) => return Ok(()),
                Err(e) if status(&e) == Some(409) && started.elapsed() < PUT_CONFLICT_WAIT => {
                    tracing::debug!(object = %key, "a concurrent write of the object is in progress; retrying");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
                Err(e) => return Err(s3_error(&self.bucket, &key, e)),
            }
        }
    }
}

/// How long a put of an immutable object keeps retrying S3's 409 (a concurrent
/// conditional write of the same key in progress): such a write takes well under a second.
#[cfg(feature = "s3")]
const PUT_CONFLICT_WAIT: Duration = Duration::from_secs(10);

/// Added to a 403 on a read: S3 answers a missing key 403 to a principal without
/// s3:ListBucket, so a gallery without `current` yet looks like a refusal.
#[cfg(feature = "s3")]
const LIST_BUCKET_HINT: &str = " (access denied: reading a gallery needs s3:GetObject on its prefix and s3:ListBucket on the bucket limited to the prefix; without ListBucket S3 answers a missing object, such as the `current` of a gallery not yet published, 403 instead of 404)";

#[cfg(feature = "s3")]
fn status<E>(error: &aws_sdk_s3::error::SdkError<E>) -> Option<u16> {
    error.raw_response().map(|r| r.status().as_u16())
}

#[cfg(feature = "s3")]
fn s3_error(bucket: &str, key: &str, error: impl std::error::Error) -> StoreError {
    StoreError::S3 {
        url: format!("s3://{bucket}/{key}"),
        message: aws_sdk_s3::error::DisplayErrorContext(error).to_string(),
    }
}

/// A conditional replace of `current` refused: 412 (the condition failed) or 409 (a
/// concurrent conditional write of the key is in progress). Either way the publisher
/// re-reads `current` and re-applies its change: if the other write failed, `current` is
/// unchanged and the next attempt replaces it.
#[cfg(feature = "s3")]
fn is_lost_race<E>(error: &aws_sdk_s3::error::SdkError<E>) -> bool {
    matches!(status(error), Some(409 | 412))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_normalise() {
        assert_eq!(
            Location::parse("s3://b/p/q/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(Location::parse("s3://b").unwrap().to_string(), "s3://b");
        assert_eq!(
            Location::parse("s3://b/x/").unwrap().kv_key(),
            Location::parse("s3://b/x").unwrap().kv_key()
        );
        assert!(Location::parse("s3:///x").is_err());
        assert!(Location::parse("http://x/y").is_err());
        assert!(Location::parse("").is_err());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        let Location::Folder(path) =
            Location::parse(&dir.path().join("a/..").to_string_lossy()).unwrap()
        else {
            panic!("a folder")
        };
        assert_eq!(path, std::fs::canonicalize(dir.path()).unwrap());
        let key = Location::parse("s3://b/x").unwrap().kv_key();
        assert!(key.starts_with("plugworker/galleries/") && key.len() == 21 + 16);
    }

    /// An S3 endpoint on a local port answering PutObject with the given statuses in turn
    /// (the last repeated); returns its address and the count of requests it answered.
    #[cfg(feature = "s3")]
    async fn scripted_s3(
        statuses: Vec<u16>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                // Read the head, then the body its Content-Length announces.
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                let head_end = loop {
                    let n = stream.read(&mut buffer).await.unwrap();
                    assert!(n > 0, "the client closed mid-request");
                    request.extend_from_slice(&buffer[..n]);
                    if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while request.len() < head_end + length {
                    let n = stream.read(&mut buffer).await.unwrap();
                    request.extend_from_slice(&buffer[..n]);
                }
                let n = count.fetch_add(1, Ordering::SeqCst);
                let status = statuses[n.min(statuses.len() - 1)];
                let (reason, code) = match status {
                    200 => ("OK", ""),
                    409 => ("Conflict", "ConditionalRequestConflict"),
                    _ => ("Precondition Failed", "PreconditionFailed"),
                };
                let body = if code.is_empty() {
                    String::new()
                } else {
                    format!("<Error><Code>{code}</Code><Message>scripted</Message></Error>")
                };
                let response = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nETag: \"e\"\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await.unwrap();
            }
        });
        (address, served)
    }

    /// S3 answers 409 to a conditional put while another conditional write of the key is
    /// in progress, which may still fail: an immutable object is then put again until it
    /// lands (200) or exists (412), never taken as present on the 409.
    #[cfg(feature = "s3")]
    #[tokio::test]
    async fn s3_writes_retry_409_take_only_412_as_present_and_explain_403() {
        use std::sync::atomic::Ordering;
        for (statuses, requests) in [(vec![409, 409, 200], 3), (vec![409, 412], 2)] {
            let (endpoint, served) = scripted_s3(statuses.clone()).await;
            let store = GalleryStore::with_s3_client(
                Location::parse("s3://galleries/board").unwrap(),
                plugworker_testkit::s3::S3::at(&endpoint).client,
            );
            store
                .put_immutable("templates/x.jpg", b"bytes")
                .await
                .unwrap_or_else(|e| panic!("{statuses:?}: {e}"));
            assert_eq!(served.load(Ordering::SeqCst), requests, "{statuses:?}");
        }
        // Anything else is an error.
        let (endpoint, _) = scripted_s3(vec![403]).await;
        let store = GalleryStore::with_s3_client(
            Location::parse("s3://galleries/board").unwrap(),
            plugworker_testkit::s3::S3::at(&endpoint).client,
        );
        assert!(
            store
                .put_immutable("templates/x.jpg", b"bytes")
                .await
                .is_err()
        );
        // A 403 on `current` says which permission tells "absent" from "refused".
        let error = store.current().await.unwrap_err().to_string();
        assert!(error.contains("s3:ListBucket"), "{error}");
    }
}
