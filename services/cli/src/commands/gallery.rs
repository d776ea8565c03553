//! `plugworker gallery add | remove | list | history | rollback`: the meme gallery of
//! `meme_classifier`, in a folder or under an S3 prefix, as immutable versions with one
//! `current` pointer (docs/gallery.md). Every change publishes a new version atomically
//! (runners serve the old one or the new one, never half of a change), then, best effort,
//! writes the version to Consul's KV (`plugworker/galleries/<location hash>`) so runners
//! watching it reload at once instead of at their next poll.
//!
//! Built with the `gallery` feature: it carries the SSCD model code (ONNX Runtime), which
//! the controller's image leaves out.

use crate::ConsulArgs;
use anyhow::{Context, bail};
use plugworker_consul_client::QueryOptions;
use plugworker_image_input::ImageLimits;
use plugworker_meme::{
    Change, Embedder, GalleryStore, Location, NewImage, Published, StoreError, short_version,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Templates smaller than this on either side carry too little of the image for a
/// copy-detection embedding to tell it apart from others (SSCD looks at ~320 px).
const MIN_SIDE: u32 = 32;
/// The KV write is a hint for runners (they poll `current` anyway): never worth a hang.
const KV_TIMEOUT: Duration = Duration::from_secs(5);
/// Check-and-set writes of the KV key lost in a row before giving up: each loss means
/// another publisher wrote it meanwhile.
const KV_ATTEMPTS: usize = 10;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Subcommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum Subcommand {
    /// Add images as templates of LABEL and publish the new version. Each image is checked
    /// (decodes; size within PLUGWORKER_IMAGE_MAX_BYTES/_MAX_PIXELS, at least 32 px a side)
    /// and embedded; an image that is (nearly) a template of another label is a warning.
    Add(AddArgs),
    /// Remove LABEL's templates (or only --file) and publish the new version.
    Remove(RemoveArgs),
    /// List the templates of the current version (or --version).
    List(ListArgs),
    /// The versions from the current one back to the first: version, time, author, change.
    History(HistoryArgs),
    /// Publish a new version with the templates of an earlier one (the history keeps both).
    Rollback(RollbackArgs),
}

#[derive(clap::Args, Debug)]
pub struct GalleryArg {
    /// The gallery: a folder or s3://bucket/prefix (S3 through the standard AWS
    /// configuration; AWS_ENDPOINT_URL for an emulator).
    #[arg(long, env = "PLUGWORKER_MEME_GALLERY", value_name = "LOCATION")]
    pub gallery: String,
}

/// What publishing needs: the embedding model and who publishes.
#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// Models folder, as the runners' (needed by `add`; `remove` and `rollback` reuse the
    /// stored embeddings): the SSCD model is read from
    /// <models-dir>/cache/sscd/sscd_distilled.onnx (or --model) and ONNX Runtime from
    /// <models-dir>/cache/onnxruntime (or ORT_DYLIB_PATH); scripts/fetch-models.sh fetches both.
    #[arg(long, env = "PLUGWORKER_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// The embedding model; must be the runners' (PLUGWORKER_MEME_MODEL), or they embed
    /// the templates again themselves.
    #[arg(long, env = "PLUGWORKER_MEME_MODEL", value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Allow a model other than the gallery's: every template is embedded again and the
    /// gallery (so every runner) switches to this model. Refused without it.
    #[arg(long)]
    pub reembed: bool,
    /// Recorded in the version as who made the change [default: $USER@hostname].
    #[arg(long, env = "PLUGWORKER_GALLERY_AUTHOR")]
    pub author: Option<String>,
    /// Do not write the new version to Consul's KV (runners then see it at their next
    /// poll of the gallery, within 5 s by default).
    #[arg(long)]
    pub no_registry: bool,
    #[command(flatten)]
    pub consul: ConsulArgs,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    #[command(flatten)]
    pub gallery: GalleryArg,
    /// The template's label (what meme_classifier answers).
    #[arg(long)]
    pub label: String,
    /// Image files (PNG, JPEG, WebP or GIF).
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub publish: PublishArgs,
}

#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub gallery: GalleryArg,
    #[arg(long)]
    pub label: String,
    /// Only this template of LABEL: its name as added (as `list` shows it) or its file.
    #[arg(long, value_name = "F")]
    pub file: Option<String>,
    #[command(flatten)]
    pub publish: PublishArgs,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub gallery: GalleryArg,
    /// A version (id or unique prefix from `history`) instead of the current one.
    #[arg(long)]
    pub version: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub gallery: GalleryArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub gallery: GalleryArg,
    /// The version whose templates to publish again (id or unique prefix, from `history`).
    #[arg(long, value_name = "VERSION")]
    pub to: String,
    #[command(flatten)]
    pub publish: PublishArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Subcommand::Add(args) => add(args).await,
        Subcommand::Remove(args) => {
            let change = Change::Remove {
                label: args.label,
                file: args.file,
            };
            publish(&args.gallery, change, &args.publish).await
        }
        Subcommand::Rollback(args) => {
            let change = Change::Rollback { to: args.to };
            publish(&args.gallery, change, &args.publish).await
        }
        Subcommand::List(args) => list(args).await,
        Subcommand::History(args) => history(args).await,
    }
}

async fn open(gallery: &GalleryArg) -> anyhow::Result<GalleryStore> {
    let location = Location::parse(&gallery.gallery)?;
    Ok(GalleryStore::open(location).await?)
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let limits = ImageLimits::from_env().context("image limits")?;
    let images = args
        .images
        .iter()
        .map(|path| read_image(path, &limits))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let change = Change::Add {
        label: args.label,
        images,
    };
    publish(&args.gallery, change, &args.publish).await
}

/// Reads and checks one image as the runners check inputs, so a template is never an
/// image they would refuse to classify.
fn read_image(path: &Path, limits: &ImageLimits) -> anyhow::Result<NewImage> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size > limits.max_bytes as u64 {
        bail!(
            "{}: {size} bytes, more than the {} allowed (PLUGWORKER_IMAGE_MAX_BYTES)",
            path.display(),
            limits.max_bytes
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let image = plugworker_image_input::decode(&bytes, limits.max_pixels)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if image.width() < MIN_SIDE || image.height() < MIN_SIDE {
        bail!(
            "{}: {}×{} pixels; a template needs at least {MIN_SIDE} a side",
            path.display(),
            image.width(),
            image.height()
        );
    }
    Ok(NewImage {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
        bytes,
    })
}

fn embedder(args: &PublishArgs) -> anyhow::Result<Embedder> {
    let runtime = plugworker_onnx::Runtime::load(&args.models_dir.join("cache"), None)
        .context("cannot load ONNX Runtime (scripts/fetch-models.sh fetches it; --models-dir)")?;
    let model = args
        .model
        .clone()
        .unwrap_or_else(|| args.models_dir.join("cache/sscd/sscd_distilled.onnx"));
    let model = runtime
        .open(&model)
        .with_context(|| format!("cannot open the embedding model {}", model.display()))?;
    Ok(Embedder::new(model))
}

fn author(args: &PublishArgs) -> String {
    args.author.clone().unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        format!("{user}@{}", gethostname::gethostname().to_string_lossy())
    })
}

/// Publishes `change`; prints the new version on stdout (alone, for scripts) and what
/// happened on stderr.
async fn publish(gallery: &GalleryArg, change: Change, args: &PublishArgs) -> anyhow::Result<()> {
    let store = open(gallery).await?.with_reembed(args.reembed);
    let author = author(args);
    // `remove` and `rollback` reuse the stored embeddings, so they need the model (and ONNX
    // Runtime) only when some template has no row of the gallery's model.
    let attempt = match change {
        Change::Add { .. } => Err(change),
        _ => match store.publish(change.clone(), None, &author).await {
            Err(StoreError::NeedsModel) => Err(change),
            outcome => Ok(outcome),
        },
    };
    let outcome = match attempt {
        Ok(outcome) => outcome,
        Err(change) => {
            let embedder = embedder(args)?;
            store.publish(change, Some(&embedder), &author).await
        }
    };
    let published: Published =
        outcome.with_context(|| format!("cannot publish to gallery {}", store.location()))?;
    for warning in &published.warnings {
        eprintln!("warning: {warning}");
    }
    let Some(version) = &published.version else {
        eprintln!("{}: no new version", published.change);
        return Ok(());
    };
    eprintln!(
        "published {} ({}) on {}{}",
        short_version(version),
        published.change,
        published
            .parent
            .as_deref()
            .map(short_version)
            .unwrap_or("an empty gallery"),
        match published.retries {
            0 => String::new(),
            n => format!(", re-applied after {n} concurrent change(s)"),
        }
    );
    println!("{version}");
    if !args.no_registry {
        announce(&store, &args.consul).await;
    }
    Ok(())
}

/// Writes the gallery's current version to Consul's KV: a hint that makes runners reload
/// now. Best effort: the version is published already, and runners poll the gallery anyway.
///
/// The value is `current` re-read after the key's index was read, and written only if the
/// key still has that index (check-and-set), else again: of two publishers, the last KV
/// write read `current` after every other one, so the key never ends on the older version.
async fn announce(store: &GalleryStore, consul: &ConsulArgs) {
    let key = store.location().kv_key();
    let outcome = async {
        let client = super::dev_session::client(consul)?;
        let write = async {
            for _ in 0..KV_ATTEMPTS {
                let (pair, _) = client.kv_get(&key, QueryOptions::default()).await?;
                let index = pair.map_or(0, |p| p.modify_index);
                let version = store.current().await?;
                if client.kv_put(&key, version.as_bytes(), Some(index)).await? {
                    return anyhow::Ok(version);
                }
            }
            anyhow::bail!("{KV_ATTEMPTS} concurrent writes of the key in a row")
        };
        let version = tokio::time::timeout(KV_TIMEOUT, write)
            .await
            .context("timed out")??;
        anyhow::Ok((client.address().to_string(), version))
    }
    .await;
    match outcome {
        Ok((address, version)) => {
            eprintln!("registry {address}: {key} = {}", short_version(&version))
        }
        Err(e) => eprintln!(
            "warning: cannot write {key} to the registry ({e:#}); runners see the new version at their next poll"
        ),
    }
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let store = open(&args.gallery).await?;
    let version = match &args.version {
        Some(prefix) => store.resolve(prefix).await?,
        None => store.current().await?,
    };
    let templates = store.templates(&version).await?;
    if args.json {
        let document = serde_json::json!({ "version": version, "templates": templates });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!(
        "gallery {} version {} ({} templates)",
        store.location(),
        short_version(&version),
        templates.len()
    );
    let mut rows: Vec<_> = templates.iter().collect();
    rows.sort_by(|a, b| (&a.label, &a.name).cmp(&(&b.label, &b.name)));
    let width = rows.iter().map(|t| t.label.len()).max().unwrap_or(0);
    for template in rows {
        println!(
            "{:width$}  {}  {}",
            template.label,
            template.name,
            short_version(&template.sha256)
        );
    }
    Ok(())
}

async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let store = open(&args.gallery).await?;
    let history = store.history().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&history)?);
        return Ok(());
    }
    for (i, entry) in history.iter().enumerate() {
        println!(
            "{}{}  {:20}  {}  {} templates  {}",
            short_version(&entry.version),
            if i == 0 { " (current)" } else { "" },
            entry.created_at,
            entry.created_by,
            entry.templates,
            entry.change
        );
    }
    Ok(())
}
