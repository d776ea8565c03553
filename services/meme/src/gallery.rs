//! The labelled template images, and their embeddings cached on disk.
//!
//! A gallery is a folder. By default every image in a sub-folder is a template whose
//! label is the sub-folder's name (`gallery/distracted-boyfriend/original.jpg`); an image
//! directly in the folder is labelled by its file stem. A `manifest.json` in the folder,
//! `{"templates": [{"label": "...", "file": "relative/path.jpg"}]}`, replaces that
//! convention when labels and files must not be tied to names.
//!
//! Embedding thousands of templates takes minutes, so embeddings are cached in one file
//! per model and preprocessing ([`Embedder::cache_key`]), keyed inside by each template
//! file's sha256: an edited, renamed or added image is embedded again, the rest are read.

use crate::embedder::{EMBEDDING_DIM, Embedder, EmbedderError};
use crate::index::EmbeddingIndex;
use image::{ImageDecoder, ImageReader, RgbImage};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

pub(crate) const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif"];
const MANIFEST: &str = "manifest.json";
const CACHE_MAGIC: &[u8] = b"plugworker-gallery-embeddings/1\n";

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("gallery folder {0} not found")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("template {path}: {reason}")]
    Template { path: PathBuf, reason: String },
    #[error("gallery {0} has no template images")]
    Empty(PathBuf),
    #[error("template {path}: {source}")]
    Embed {
        path: PathBuf,
        source: EmbedderError,
    },
}

/// One template image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub label: String,
    /// Path relative to the gallery folder, `/`-separated (reported in results).
    pub file: String,
    /// Hex sha256 of the file's bytes.
    pub sha256: String,
    /// What people call the file, for results: the name it was added as in a versioned
    /// gallery (`file` is then `templates/<sha256>.<ext>`), else `file`.
    pub name: String,
}

/// Templates and their embeddings, row `i` of the index belonging to template `i`.
pub struct Gallery {
    templates: Vec<Template>,
    index: EmbeddingIndex,
    /// The version id (see [`crate::GalleryStore`]); empty for a gallery built from parts.
    version: String,
    /// [`Embedder::cache_key`] of the model that computed the rows, so a reload can reuse
    /// them only when the model is the same.
    embedding_model: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    templates: Vec<ManifestEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    label: String,
    file: String,
}

/// How loading went, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    pub templates: usize,
    pub embedded: usize,
    pub from_cache: usize,
}

impl Gallery {
    /// Builds a gallery from templates already embedded (benchmarks, tests).
    pub fn from_parts(templates: Vec<Template>, index: EmbeddingIndex) -> Self {
        assert_eq!(templates.len(), index.len(), "one embedding per template");
        Self {
            templates,
            index,
            version: String::new(),
            embedding_model: String::new(),
        }
    }

    /// A gallery whose row `i` (of `index`) is the embedding of `templates[i]`.
    pub(crate) fn from_index(
        templates: Vec<Template>,
        index: EmbeddingIndex,
        version: String,
        embedding_model: String,
    ) -> Self {
        assert_eq!(templates.len(), index.len(), "one embedding per template");
        Self {
            templates,
            index,
            version,
            embedding_model,
        }
    }

    /// The version this gallery is: the manifest's id in a versioned gallery, the hash of
    /// its (label, file sha256) list in a read-only folder (see [`legacy_version`]).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The model key ([`Embedder::cache_key`]) its embeddings were computed with.
    pub fn embedding_model(&self) -> &str {
        &self.embedding_model
    }

    /// The row of each template, by file sha256: what a reload copies instead of reading
    /// or computing again. Borrowed, so finding them costs no copy of the rows.
    pub(crate) fn rows_by_sha(&self) -> HashMap<&str, usize> {
        self.templates
            .iter()
            .enumerate()
            .map(|(row, t)| (t.sha256.as_str(), row))
            .collect()
    }

    /// Reads the gallery at `root`, embedding each template or reading its embedding from
    /// `cache_dir`. A cache that cannot be read or written costs time, never correctness:
    /// it is logged and ignored.
    pub fn load(
        root: &Path,
        embedder: &Embedder,
        cache_dir: Option<&Path>,
    ) -> Result<(Self, LoadStats), GalleryError> {
        Self::load_with(root, embedder, cache_dir, &FileHashes::default())
    }

    /// [`Gallery::load`], taking the sha256 of files unchanged since `hashes` last saw
    /// them from it instead of reading them.
    pub(crate) fn load_with(
        root: &Path,
        embedder: &Embedder,
        cache_dir: Option<&Path>,
        hashes: &FileHashes,
    ) -> Result<(Self, LoadStats), GalleryError> {
        let files = discover(root)?;
        let cache_file =
            cache_dir.map(|dir| dir.join(format!("embeddings-{}.bin", embedder.cache_key())));
        let mut cached = match &cache_file {
            Some(path) => read_cache(path, &embedder.cache_key()).unwrap_or_else(|e| {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(cache = %path.display(), error = %e, "ignoring unreadable gallery cache");
                }
                HashMap::new()
            }),
            None => HashMap::new(),
        };
        let mut stats = LoadStats::default();
        let mut templates = Vec::with_capacity(files.len());
        let mut index = EmbeddingIndex::new(EMBEDDING_DIM);
        let mut fresh: HashMap<String, Vec<f32>> = HashMap::new();
        for (label, relative) in files {
            let path = root.join(&relative);
            let io = |source| GalleryError::Io {
                path: path.clone(),
                source,
            };
            let known = hashes.sha256(&path).map_err(io)?;
            let sha256 = if let Some(embedding) = cached.get(&known).or_else(|| fresh.get(&known)) {
                stats.from_cache += 1;
                index.push(embedding);
                known
            } else {
                // Hashed again from the bytes embedded: the file may have changed since.
                let bytes = std::fs::read(&path).map_err(io)?;
                let sha256 = sha256_hex(&bytes);
                let image = decode_template(&bytes).map_err(|reason| GalleryError::Template {
                    path: path.clone(),
                    reason,
                })?;
                let embedding = embedder
                    .embed(&image)
                    .map_err(|source| GalleryError::Embed {
                        path: path.clone(),
                        source,
                    })?;
                stats.embedded += 1;
                index.push(&embedding);
                fresh.insert(sha256.clone(), embedding);
                if sha256 != known {
                    hashes.forget(&path);
                }
                sha256
            };
            templates.push(Template {
                label,
                name: relative.clone(),
                file: relative,
                sha256,
            });
        }
        stats.templates = templates.len();
        if let Some(path) = cache_file
            && !fresh.is_empty()
        {
            // Keep entries of templates removed since: they cost nothing to keep and a
            // template put back is then free.
            cached.extend(fresh);
            if let Err(e) = write_cache(&path, &embedder.cache_key(), &cached) {
                tracing::warn!(cache = %path.display(), error = %e, "cannot write gallery cache");
            }
        }
        let version = legacy_version(&templates);
        Ok((
            Self {
                templates,
                index,
                version,
                embedding_model: embedder.cache_key(),
            },
            stats,
        ))
    }

    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    pub fn index(&self) -> &EmbeddingIndex {
        &self.index
    }

    /// Distinct labels, sorted.
    pub fn labels(&self) -> Vec<&str> {
        let mut labels: Vec<&str> = self.templates.iter().map(|t| t.label.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        labels
    }
}

/// The version id of a read-only folder gallery: the sha256 of its sorted (label, file
/// sha256) list, so it changes exactly when what the classifier answers can change.
pub fn legacy_version(templates: &[Template]) -> String {
    let mut pairs: Vec<(&str, &str)> = templates
        .iter()
        .map(|t| (t.label.as_str(), t.sha256.as_str()))
        .collect();
    pairs.sort_unstable();
    let mut hasher = Sha256::new();
    for (label, sha) in pairs {
        hasher.update(label.as_bytes());
        hasher.update([0]);
        hasher.update(sha.as_bytes());
        hasher.update([b'\n']);
    }
    hex(&hasher.finalize())
}

/// The templates of a read-only folder gallery, each file hashed (not decoded): read only
/// when `hashes` has not seen it as it is now.
pub(crate) fn scan(root: &Path, hashes: &FileHashes) -> Result<Vec<Template>, GalleryError> {
    let files = discover(root)?;
    let mut seen = Vec::with_capacity(files.len());
    let templates = files
        .into_iter()
        .map(|(label, file)| {
            let path = root.join(&file);
            let sha256 = hashes.sha256(&path).map_err(|source| GalleryError::Io {
                path: path.clone(),
                source,
            })?;
            seen.push(path);
            Ok(Template {
                label,
                name: file.clone(),
                file,
                sha256,
            })
        })
        .collect::<Result<Vec<_>, GalleryError>>()?;
    hashes.retain(&seen);
    Ok(templates)
}

/// The sha256 of files by path, valid while the file's status is unchanged: polling a
/// read-only folder of 10,000 templates then costs a listing and a `stat` per file, not
/// reading and hashing every byte (docs/benchmarks.md, gallery scale).
///
/// A file is rehashed when its size, modification or status-change time, inode or device
/// differ from when it was hashed. Writing a file updates its status-change time, which
/// no tool can set back, so an edit that restores the old size and modification time is
/// seen too. A file modified within [`RACY`] of being hashed is not remembered: a second
/// write in the same timestamp tick would leave its status unchanged (git's "racy clean").
#[derive(Debug)]
pub(crate) struct FileHashes {
    known: std::sync::Mutex<HashMap<PathBuf, (FileStamp, String)>>,
    racy: std::time::Duration,
    /// Files read so far, so tests and benchmarks can see that unchanged ones are not.
    reads: std::sync::atomic::AtomicU64,
}

impl Default for FileHashes {
    fn default() -> Self {
        Self::new(RACY)
    }
}

/// What a file's status says about its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

/// Files changed this recently are hashed again at the next look (see [`FileHashes`]).
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// Whether the last change is at least `racy` old by the clock now.
    fn settled(&self, racy: std::time::Duration) -> bool {
        let (seconds, nanos) = self.modified.max(self.changed);
        let last = std::time::UNIX_EPOCH
            + std::time::Duration::new(seconds.max(0) as u64, nanos.clamp(0, 999_999_999) as u32);
        std::time::SystemTime::now()
            .duration_since(last)
            .is_ok_and(|age| age >= racy)
    }
}

impl FileHashes {
    /// Remembering files whose last change is at least `racy` old (the default, [`RACY`],
    /// covers coarse timestamps; a test whose files are all fresh needs less).
    pub(crate) fn new(racy: std::time::Duration) -> Self {
        Self {
            known: Default::default(),
            racy,
            reads: Default::default(),
        }
    }

    /// How many files have been read and hashed.
    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The sha256 of the file at `path`: remembered if its status is unchanged, else read.
    pub(crate) fn sha256(&self, path: &Path) -> std::io::Result<String> {
        let stamp = FileStamp::of(&std::fs::metadata(path)?);
        if let Some((known, sha256)) = self.lock().get(path)
            && *known == stamp
        {
            return Ok(sha256.clone());
        }
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sha256 = sha256_hex(&std::fs::read(path)?);
        if stamp.settled(self.racy) {
            self.lock().insert(path.to_owned(), (stamp, sha256.clone()));
        }
        Ok(sha256)
    }

    /// Forgets `path` (its bytes were seen to differ from what its status promised).
    pub(crate) fn forget(&self, path: &Path) {
        self.lock().remove(path);
    }

    /// Keeps only `paths`: files gone from the gallery are not remembered for ever.
    fn retain(&self, paths: &[PathBuf]) {
        let keep: std::collections::HashSet<&PathBuf> = paths.iter().collect();
        self.lock().retain(|path, _| keep.contains(path));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (FileStamp, String)>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// (label, path relative to root) of every template, in a stable order.
pub fn discover(root: &Path) -> Result<Vec<(String, String)>, GalleryError> {
    if !root.is_dir() {
        return Err(GalleryError::Missing(root.to_owned()));
    }
    let manifest = root.join(MANIFEST);
    let mut files = if manifest.is_file() {
        from_manifest(root, &manifest)?
    } else {
        from_folders(root)?
    };
    if files.is_empty() {
        return Err(GalleryError::Empty(root.to_owned()));
    }
    for (label, file) in &files {
        validate_label(label).map_err(|reason| GalleryError::Template {
            path: root.join(file),
            reason,
        })?;
    }
    files.sort();
    Ok(files)
}

fn from_manifest(root: &Path, manifest: &Path) -> Result<Vec<(String, String)>, GalleryError> {
    let text = std::fs::read_to_string(manifest).map_err(|source| GalleryError::Io {
        path: manifest.to_owned(),
        source,
    })?;
    let parsed: Manifest = serde_json::from_str(&text).map_err(|e| GalleryError::Manifest {
        path: manifest.to_owned(),
        reason: e.to_string(),
    })?;
    parsed
        .templates
        .into_iter()
        .map(|entry| {
            let relative = Path::new(&entry.file);
            if relative.is_absolute()
                || relative
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(GalleryError::Manifest {
                    path: manifest.to_owned(),
                    reason: format!(
                        "file {:?} must be a path inside the gallery folder",
                        entry.file
                    ),
                });
            }
            if !root.join(relative).is_file() {
                return Err(GalleryError::Manifest {
                    path: manifest.to_owned(),
                    reason: format!("file {:?} does not exist", entry.file),
                });
            }
            Ok((entry.label, entry.file))
        })
        .collect()
}

fn from_folders(root: &Path) -> Result<Vec<(String, String)>, GalleryError> {
    let mut files = Vec::new();
    for entry in read_dir(root)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        // A versioned gallery's own folders are never labels: a folder being converted
        // holds them before its `current` is written, and its version must not change
        // under a runner reading it meanwhile.
        if name.starts_with('.') || ["templates", "embeddings", "versions"].contains(&name.as_str())
        {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            for inner in read_dir(&path)? {
                let inner_name = inner.file_name().to_string_lossy().into_owned();
                if inner.path().is_file() && is_image(&inner_name) {
                    files.push((name.clone(), format!("{name}/{inner_name}")));
                }
            }
        } else if is_image(&name) {
            let stem = Path::new(&name)
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            files.push((stem, name));
        }
    }
    Ok(files)
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, GalleryError> {
    let io = |source| GalleryError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io)
}

fn is_image(name: &str) -> bool {
    Path::new(name)
        .extension()
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

pub(crate) fn validate_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() {
        return Err("empty label".into());
    }
    if label == crate::UNKNOWN_LABEL {
        return Err(format!(
            "label {label:?} is reserved for images that match no template"
        ));
    }
    Ok(())
}

/// Templates are the operator's own files: decoded with EXIF orientation, like inputs,
/// so a template and a photo of it agree, but without the untrusted-input limits.
pub(crate) fn decode_template(bytes: &[u8]) -> Result<RgbImage, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let orientation = decoder.orientation().map_err(|e| e.to_string())?;
    let mut image = image::DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    image.apply_orientation(orientation);
    Ok(image.to_rgb8())
}

fn read_cache(path: &Path, key: &str) -> std::io::Result<HashMap<String, Vec<f32>>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    decode_embeddings(bytes, key)
}

/// Parses the embeddings file format (the cache's, and a versioned gallery's embedding
/// blobs): magic, model key, width, count, then (template sha256, row) pairs.
pub(crate) fn decode_embeddings(
    bytes: Vec<u8>,
    key: &str,
) -> std::io::Result<HashMap<String, Vec<f32>>> {
    // Bounded by what the bytes can hold, so a corrupt count cannot reserve gigabytes.
    let mut entries = HashMap::with_capacity(bytes.len() / (EMBEDDING_DIM * 4));
    for_each_embedding(Cursor::new(bytes), key, |sha, row| {
        entries.insert(sha.to_string(), row.to_vec());
    })?;
    Ok(entries)
}

/// Reads the embeddings format from `reader` row by row, handing each (template sha256,
/// row) to `visit`: a reload takes the rows it lacks without holding the whole blob
/// decoded (10,000 rows are 20 MB).
pub(crate) fn for_each_embedding(
    mut reader: impl Read,
    key: &str,
    mut visit: impl FnMut(&str, &[f32]),
) -> std::io::Result<()> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut magic = vec![0u8; CACHE_MAGIC.len()];
    reader.read_exact(&mut magic)?;
    if magic != CACHE_MAGIC {
        return Err(invalid("not a gallery embeddings file"));
    }
    let stored_key = read_string(&mut reader)?;
    if stored_key != key {
        return Err(invalid("embeddings of another model"));
    }
    let dim = read_u32(&mut reader)? as usize;
    let count = read_u32(&mut reader)? as usize;
    if dim != EMBEDDING_DIM {
        return Err(invalid("embeddings of another width"));
    }
    let mut buffer = vec![0u8; dim * 4];
    let mut row = vec![0f32; dim];
    for _ in 0..count {
        let sha = read_string(&mut reader)?;
        reader.read_exact(&mut buffer)?;
        for (value, bytes) in row.iter_mut().zip(buffer.as_chunks::<4>().0) {
            *value = f32::from_le_bytes(*bytes);
        }
        visit(&sha, &row);
    }
    Ok(())
}

/// The embeddings file format (see [`decode_embeddings`]): one row per distinct sha256,
/// sorted by it so equal contents give equal bytes (the blobs are content-addressed).
pub(crate) fn encode_embeddings<'a>(
    key: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a [f32])>,
) -> Vec<u8> {
    let mut entries: Vec<(&str, &[f32])> = entries.into_iter().collect();
    entries.sort_unstable_by_key(|(sha, _)| *sha);
    entries.dedup_by_key(|(sha, _)| *sha);
    let mut bytes = Vec::with_capacity(64 + entries.len() * (EMBEDDING_DIM * 4 + 72));
    bytes.extend_from_slice(CACHE_MAGIC);
    write_string(&mut bytes, key);
    bytes.extend_from_slice(&(EMBEDDING_DIM as u32).to_le_bytes());
    bytes.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (sha, row) in entries {
        write_string(&mut bytes, sha);
        for value in row {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
    }
    bytes
}

/// Written to a temporary file then renamed, so a crash or a concurrent runner never
/// leaves a torn cache behind.
fn write_cache(path: &Path, key: &str, entries: &HashMap<String, Vec<f32>>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = encode_embeddings(
        key,
        entries
            .iter()
            .map(|(sha, row)| (sha.as_str(), row.as_slice())),
    );
    write_atomically(path, &bytes)
}

/// Writes to a temporary file in the same folder, syncs it, then renames it over `path`:
/// a reader sees the old file or the whole new one, never a torn one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    // Unique per call: the counter within a process, random bits across processes (two
    // containers sharing a volume can both be pid 1); RandomState is seeded from the OS.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let temporary = path.with_extension(format!(
        "tmp-{}-{}-{random:016x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

fn read_u32(reader: &mut impl Read) -> std::io::Result<u32> {
    let mut buffer = [0u8; 4];
    reader.read_exact(&mut buffer)?;
    Ok(u32::from_le_bytes(buffer))
}

fn read_string(reader: &mut impl Read) -> std::io::Result<String> {
    let length = read_u32(reader)? as usize;
    if length > 4096 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "string too long",
        ));
    }
    let mut buffer = vec![0u8; length];
    reader.read_exact(&mut buffer)?;
    String::from_utf8(buffer).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn write_string(bytes: &mut Vec<u8>, value: &str) {
    bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
    bytes.extend_from_slice(value.as_bytes());
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Reads through `R`, hashing what passes: a streamed blob is checked against the sha256
/// in its name without being held whole.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what is left, then the sha256 of all the bytes.
    pub(crate) fn finish(mut self) -> std::io::Result<String> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok(hex(&self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"not read by discover").unwrap();
    }

    #[test]
    fn folders_name_labels_and_root_images_are_labelled_by_stem() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("drake/a.jpg"));
        touch(&dir.path().join("drake/b.PNG"));
        touch(&dir.path().join("drake/notes.txt"));
        touch(&dir.path().join("doge.webp"));
        touch(&dir.path().join("PROVENANCE.md"));
        touch(&dir.path().join(".cache/x.png"));
        let files = discover(dir.path()).unwrap();
        assert_eq!(
            files,
            vec![
                ("doge".to_string(), "doge.webp".to_string()),
                ("drake".to_string(), "drake/a.jpg".to_string()),
                ("drake".to_string(), "drake/b.PNG".to_string()),
            ]
        );
    }

    #[test]
    fn a_manifest_replaces_the_folder_convention_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("x/1.jpg"));
        std::fs::write(
            dir.path().join(MANIFEST),
            r#"{"templates": [{"label": "success kid", "file": "x/1.jpg"}]}"#,
        )
        .unwrap();
        assert_eq!(
            discover(dir.path()).unwrap(),
            vec![("success kid".into(), "x/1.jpg".into())]
        );

        std::fs::write(
            dir.path().join(MANIFEST),
            r#"{"templates": [{"label": "a", "file": "../etc/passwd"}]}"#,
        )
        .unwrap();
        assert!(
            discover(dir.path())
                .unwrap_err()
                .to_string()
                .contains("inside the gallery")
        );
        std::fs::write(
            dir.path().join(MANIFEST),
            r#"{"templates": [{"label": "a", "file": "missing.jpg"}]}"#,
        )
        .unwrap();
        assert!(
            discover(dir.path())
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
    }

    #[test]
    fn empty_galleries_and_the_reserved_label_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(discover(dir.path()), Err(GalleryError::Empty(_))));
        touch(&dir.path().join("unknown/a.jpg"));
        assert!(
            discover(dir.path())
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
        assert!(matches!(
            discover(&dir.path().join("nope")),
            Err(GalleryError::Missing(_))
        ));
    }

    /// Waits until the file system's clock has moved past `path`'s status-change time, so
    /// the next write gives it another one (the racy window is zero in these tests).
    fn wait_for_a_later_change_time(path: &Path) {
        use std::os::unix::fs::MetadataExt;
        let changed = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.ctime(), m.ctime_nsec())
        };
        let before = changed(path);
        let probe = path.with_extension("probe");
        loop {
            std::fs::write(&probe, b"").unwrap();
            if changed(&probe) > before {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::fs::remove_file(&probe).unwrap();
    }

    /// Writes `bytes` over `path` in place, then sets its modification time back: only
    /// the status-change time tells.
    fn rewrite_keeping_mtime(path: &Path, bytes: &[u8]) {
        let modified = std::fs::metadata(path).unwrap().modified().unwrap();
        std::fs::write(path, bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(
            std::fs::metadata(path).unwrap().modified().unwrap(),
            modified
        );
    }

    #[test]
    fn a_file_is_read_again_exactly_when_its_status_changes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drake/a.jpg");
        touch(&path);
        let hashes = FileHashes::new(std::time::Duration::ZERO);
        let sha = |hashes: &FileHashes| scan(dir.path(), hashes).unwrap()[0].sha256.clone();
        assert_eq!(sha(&hashes), sha256_hex(b"not read by discover"));
        assert_eq!(hashes.reads(), 1);
        assert_eq!(sha(&hashes), sha256_hex(b"not read by discover"));
        assert_eq!(hashes.reads(), 1, "an unchanged file was read again");

        // The same length and modification time: the status-change time gives it away.
        wait_for_a_later_change_time(&path);
        let len = std::fs::metadata(&path).unwrap().len();
        rewrite_keeping_mtime(&path, b"NOT READ BY DISCOVER");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert_eq!(sha(&hashes), sha256_hex(b"NOT READ BY DISCOVER"));
        assert_eq!(hashes.reads(), 2);

        // Renamed over: the same length and modification time, another inode.
        let elsewhere = tempfile::tempdir().unwrap(); // the same file system, outside the gallery
        let replacement = elsewhere.path().join("a.jpg");
        let old = std::fs::metadata(&path).unwrap();
        let bytes = &b"renamed over the file"[..old.len() as usize];
        std::fs::write(&replacement, bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&replacement)
            .unwrap()
            .set_modified(old.modified().unwrap())
            .unwrap();
        std::fs::rename(&replacement, &path).unwrap();
        let new = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (new.len(), new.modified().unwrap()),
            (old.len(), old.modified().unwrap())
        );
        assert_ne!(new.ino(), old.ino());
        assert_eq!(sha(&hashes), sha256_hex(bytes));
        assert_eq!(hashes.reads(), 3);
        // A file written within the racy window is not remembered.
        let fresh = FileHashes::default();
        scan(dir.path(), &fresh).unwrap();
        assert!(fresh.lock().is_empty());
        // Files that left the gallery are forgotten.
        std::fs::remove_file(&path).unwrap();
        touch(&dir.path().join("doge.jpg"));
        scan(dir.path(), &hashes).unwrap();
        assert!(!hashes.lock().contains_key(&path));
    }

    #[test]
    fn the_cache_round_trips_and_refuses_another_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bin");
        let mut entries = HashMap::new();
        entries.insert(
            "ab".repeat(32),
            (0..EMBEDDING_DIM).map(|i| i as f32).collect::<Vec<_>>(),
        );
        write_cache(&path, "model-1", &entries).unwrap();
        assert_eq!(read_cache(&path, "model-1").unwrap(), entries);
        assert!(read_cache(&path, "model-2").is_err());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(read_cache(&path, "model-1").is_err());
    }
}
