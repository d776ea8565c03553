//! The gallery at scale, scaled down to run with the tests: 200 synthetic templates (50
//! look-alike families of 4) embedded with the real SSCD model, loaded, then reloaded after
//! one template is added and after one is removed, each reload taking the rows of the
//! version serving. The full-size figures (10,000 templates, accuracy at 1,000) are
//! `scripts/bench-gallery.sh`'s.

use crate::synthetic;

use plugworker_meme::{
    Change, Embedder, Gallery, GalleryStore, Location, MemeClassifier, NewImage, Published, rank,
};
use plugworker_onnx::Runtime;
use plugworker_testkit::memes::{self, models_dir};
use std::path::Path;
use synthetic::Edit;

const TEMPLATES: usize = 200;
const FAMILY: usize = 4;
const SEED: u64 = 27;

fn embedder() -> Embedder {
    let models = models_dir();
    let runtime = Runtime::load(&models.join("cache"), Some(1))
        .expect("ONNX Runtime (scripts/fetch-models.sh)");
    Embedder::new(
        runtime
            .open(&models.join("cache/sscd/sscd_distilled.onnx"))
            .expect("SSCD model (scripts/fetch-models.sh)"),
    )
}

fn label(index: usize) -> String {
    format!("synthetic-{index:05}")
}

fn image(index: usize) -> NewImage {
    NewImage {
        name: format!("{}.png", label(index)),
        bytes: memes::png_bytes(&synthetic::template(SEED, index, FAMILY)),
    }
}

async fn folder_store(path: &Path) -> GalleryStore {
    GalleryStore::open(Location::parse(&path.to_string_lossy()).unwrap())
        .await
        .unwrap()
}

/// Publishes the first `count` look-alike templates to `store` in one import.
async fn import(store: &GalleryStore, embedder: &Embedder, count: usize) -> Published {
    store
        .publish(
            Change::Import {
                templates: (0..count).map(|i| (label(i), image(i))).collect(),
            },
            Some(embedder),
            "tester@host",
        )
        .await
        .unwrap()
}

/// Loaded from scratch (no rows to reuse): what an incremental reload must equal.
async fn fresh(store: &GalleryStore, version: &str, embedder: &Embedder) -> Gallery {
    store.load(version, embedder, None).await.unwrap()
}

fn assert_same(reloaded: &Gallery, fresh: &Gallery) {
    assert_eq!(reloaded.version(), fresh.version());
    assert_eq!(reloaded.templates(), fresh.templates());
    for row in 0..fresh.templates().len() {
        assert_eq!(
            reloaded.index().row(row),
            fresh.index().row(row),
            "row {row} ({})",
            fresh.templates()[row].label
        );
    }
}

#[tokio::test]
async fn a_gallery_of_200_look_alikes_loads_and_reloads_one_change_at_a_time() {
    let embedder = embedder();
    let dir = tempfile::tempdir().unwrap();
    let store = folder_store(dir.path()).await;
    let imported = import(&store, &embedder, TEMPLATES).await;
    assert_eq!(imported.change, "import 200 images (200 labels)");
    let v1 = imported.version.unwrap();
    let first = store.load(&v1, &embedder, None).await.unwrap();
    assert_eq!(first.templates().len(), TEMPLATES);
    // Every template is its own nearest row, look-alikes included.
    for row in 0..TEMPLATES {
        let top = first.index().top(first.index().row(row), 1)[0];
        assert_eq!(top.row, row, "{}", first.templates()[row].label);
    }

    // One template added: the reload takes 200 rows from the version serving and one
    // from the new version's blob, and equals a load from scratch.
    let added = store
        .publish(
            Change::Add {
                label: label(TEMPLATES),
                images: vec![image(TEMPLATES)],
            },
            Some(&embedder),
            "tester@host",
        )
        .await
        .unwrap();
    let v2 = added.version.unwrap();
    let second = store.load(&v2, &embedder, Some(&first)).await.unwrap();
    assert_eq!(second.templates().len(), TEMPLATES + 1);
    assert_same(&second, &fresh(&store, &v2, &embedder).await);

    // The added template answers its captioned, cropped and recoloured memes; its
    // look-alikes (the same family) are not taken for it.
    let fonts = memes::fonts();
    let classifier = MemeClassifier::new(embedder, second, 0.3);
    let template = synthetic::template(SEED, TEMPLATES, FAMILY);
    for edit in Edit::ALL {
        let meme = synthetic::query(&template, edit, 1, &fonts);
        let answer = classifier.classify(&meme, 3).unwrap();
        assert_eq!(answer.label, label(TEMPLATES), "{edit:?}: {answer:?}");
    }
    let (embedder, second) = (classifier.embedder(), classifier.gallery());

    // One removed: the reload keeps the other rows where they were.
    let removed = store
        .publish(
            Change::Remove {
                label: label(7),
                file: None,
            },
            Some(embedder),
            "tester@host",
        )
        .await
        .unwrap();
    let v3 = removed.version.unwrap();
    let third = store.load(&v3, embedder, Some(second)).await.unwrap();
    assert_eq!(third.templates().len(), TEMPLATES);
    assert!(!third.labels().contains(&label(7).as_str()));
    assert_same(&third, &fresh(&store, &v3, embedder).await);
    for row in [0, 7, TEMPLATES - 1] {
        let own = rank(&third, third.index().row(row), 0.99, 1);
        assert_eq!(own.label, third.templates()[row].label);
    }
}

/// A read-only folder's `current` is the hash of its templates: each poll lists and
/// stats the files and reads only those whose status changed, and still sees every change.
#[tokio::test]
async fn a_read_only_folder_poll_sees_each_change_without_rereading_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let write = |index: usize, seed: u64| {
        let path = dir.path().join(label(index)).join("template.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            memes::png_bytes(&synthetic::template(seed, index, FAMILY)),
        )
        .unwrap();
    };
    for index in 0..TEMPLATES {
        write(index, SEED);
    }
    // Every file is younger than the default racy window (2 s), which would have each
    // poll read them all: none here, so the skipping is what is seen.
    let store = folder_store(dir.path())
        .await
        .with_racy_window(std::time::Duration::ZERO);
    let first = store.current().await.unwrap();
    let read = store.files_read();
    assert_eq!(read, TEMPLATES as u64);
    assert_eq!(store.current().await.unwrap(), first);
    assert_eq!(
        store.files_read(),
        read,
        "a poll of unchanged files read some"
    );
    // Replaced content, an added template, a removed one: each a new version, and only
    // the changed file read.
    write(3, SEED + 1);
    let replaced = store.current().await.unwrap();
    assert_ne!(replaced, first);
    assert_eq!(store.files_read(), read + 1);
    write(TEMPLATES, SEED);
    let grown = store.current().await.unwrap();
    assert_ne!(grown, replaced);
    assert_eq!(store.files_read(), read + 2);
    std::fs::remove_dir_all(dir.path().join(label(TEMPLATES))).unwrap();
    assert_eq!(store.current().await.unwrap(), replaced);
    let templates = store.templates(&replaced).await.unwrap();
    assert_eq!(templates.len(), TEMPLATES);
    assert_eq!(store.files_read(), read + 2);
}

#[test]
fn synthetic_templates_are_deterministic_and_look_alikes_share_layout_and_size() {
    assert_eq!(synthetic::template(7, 3, 4), synthetic::template(7, 3, 4));
    assert_ne!(synthetic::template(7, 3, 4), synthetic::template(8, 3, 4));
    // Members 0..4 of one family: same size, different pixels.
    let family: Vec<image::RgbImage> = (4..8).map(|i| synthetic::template(7, i, 4)).collect();
    for member in &family[1..] {
        assert_eq!(member.dimensions(), family[0].dimensions());
        assert_ne!(member, &family[0]);
    }
}

#[test]
fn a_synthetic_recolour_turns_hues_and_keeps_greys() {
    let image = image::RgbImage::from_fn(4, 1, |x, _| match x {
        0 => image::Rgb([200, 40, 40]),
        _ => image::Rgb([128, 128, 128]),
    });
    let turned = synthetic::recolour(&image, 120.0, 1.0, 1.0);
    let red = turned.get_pixel(0, 0).0;
    assert!(
        red[1] > red[0] && red[1] > red[2],
        "red turned to green: {red:?}"
    );
    let grey = turned.get_pixel(1, 0).0;
    assert!(grey.iter().all(|&c| c.abs_diff(128) <= 1), "{grey:?}");
}

/// Every `.bin` under the gallery's `embeddings/`.
fn embedding_blobs(root: &Path) -> std::collections::HashSet<std::path::PathBuf> {
    let mut blobs = std::collections::HashSet::new();
    let mut folders = vec![root.join("embeddings")];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "bin") {
                blobs.insert(path);
            }
        }
    }
    blobs
}

/// A reload hashes the embeddings blob as it streams it: a blob that is not what the
/// sha256 in its name says is refused before its rows are served, and the caller keeps
/// the version serving.
#[tokio::test]
async fn a_reload_refuses_an_embeddings_blob_whose_bytes_are_not_its_name() {
    let embedder = embedder();
    let dir = tempfile::tempdir().unwrap();
    let store = folder_store(dir.path()).await;
    let imported = import(&store, &embedder, 3).await;
    let first = store
        .load(&imported.version.unwrap(), &embedder, None)
        .await
        .unwrap();
    let before = embedding_blobs(dir.path());
    let added = store
        .publish(
            Change::Add {
                label: label(3),
                images: vec![image(3)],
            },
            Some(&embedder),
            "tester@host",
        )
        .await
        .unwrap();
    let v2 = added.version.unwrap();
    let blob = embedding_blobs(dir.path())
        .difference(&before)
        .next()
        .cloned()
        .expect("the new version's embeddings blob");
    // One bit of the last float: the blob still parses, its rows are just not the ones
    // its name promises.
    let mut bytes = std::fs::read(&blob).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    let mut permissions = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&blob, permissions).unwrap();
    std::fs::write(&blob, &bytes).unwrap();
    let Err(error) = store.load(&v2, &embedder, Some(&first)).await else {
        panic!("the corrupted blob was loaded");
    };
    assert!(
        error.to_string().contains("its sha256 is not its name"),
        "{error}"
    );
}
