//! The versioned gallery store on a real folder and on S3 (moto), with the real SSCD model.

use plugworker_meme::{
    Change, Embedder, Gallery, GalleryStore, Location, NewImage, Published, StoreError,
    legacy_version,
};
use plugworker_onnx::Runtime;
use plugworker_testkit::memes::models_dir;
use std::path::Path;

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

fn demo(name: &str) -> NewImage {
    let path = models_dir().join("gallery").join(name);
    NewImage {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        bytes: std::fs::read(&path).unwrap(),
    }
}

fn add(label: &str, images: &[&str]) -> Change {
    Change::Add {
        label: label.into(),
        images: images.iter().map(|i| demo(i)).collect(),
    }
}

fn labels(gallery: &Gallery) -> Vec<String> {
    gallery.labels().into_iter().map(str::to_owned).collect()
}

/// Publishes `change` as tester@host; it must succeed.
async fn publish(store: &GalleryStore, change: Change, embedder: &Embedder) -> Published {
    store
        .publish(change, Some(embedder), "tester@host")
        .await
        .unwrap_or_else(|e| panic!("publishing failed: {e}"))
}

async fn folder_store(path: &Path) -> GalleryStore {
    GalleryStore::open(Location::parse(&path.to_string_lossy()).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_folder_gallery_publishes_versions_with_history_and_rollback() {
    let embedder = embedder();
    let dir = tempfile::tempdir().unwrap();
    let store = folder_store(dir.path()).await;
    let first = publish(
        &store,
        add("cat", &["chelsea-the-cat/chelsea.jpg"]),
        &embedder,
    )
    .await;
    let v1 = first.version.clone().unwrap();
    assert_eq!(store.current().await.unwrap(), v1);
    // The same image under the same label again: nothing to publish.
    let again = publish(
        &store,
        add("cat", &["chelsea-the-cat/chelsea.jpg"]),
        &embedder,
    )
    .await;
    assert_eq!(again.version, None);
    assert!(
        again.warnings[0].contains("already a template"),
        "{:?}",
        again.warnings
    );
    let second = publish(&store, add("cup", &["coffee-cup/coffee.jpg"]), &embedder).await;
    let v2 = second.version.unwrap();
    assert_eq!(second.parent.as_deref(), Some(v1.as_str()));

    let gallery = store.load(&v2, &embedder, None).await.unwrap();
    assert_eq!(gallery.version(), v2);
    assert_eq!(labels(&gallery), ["cat", "cup"]);
    // Reloading on top of the previous version reuses its rows: same index.
    let again = store.load(&v2, &embedder, Some(&gallery)).await.unwrap();
    assert_eq!(again.index().row(1), gallery.index().row(1));

    // Adding needs the model; removing keeps the stored rows and does not.
    let error = store
        .publish(
            add("dog", &["astronaut/astronaut.jpg"]),
            None,
            "tester@host",
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NeedsModel), "{error}");
    let remove = Change::Remove {
        label: "cat".into(),
        file: None,
    };
    let removed = store.publish(remove, None, "tester@host").await.unwrap();
    let v3 = removed.version.unwrap();
    assert_eq!(
        labels(&store.load(&v3, &embedder, None).await.unwrap()),
        ["cup"]
    );

    let back = publish(&store, Change::Rollback { to: v2[..8].into() }, &embedder).await;
    let v4 = back.version.unwrap();
    assert_eq!(back.change, format!("rollback to {}", &v2[..12]));
    assert_eq!(
        labels(&store.load(&v4, &embedder, None).await.unwrap()),
        ["cat", "cup"]
    );
    let history = store.history().await.unwrap();
    let versions: Vec<&str> = history.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(versions, [&v4, &v3, &v2, &v1]);
    assert_eq!(history[0].created_by, "tester@host");
    assert_eq!(history[2].change, "add cup (1 image)");
    assert_eq!(history[1].change, "remove cat (1 image)");
}

/// `add` with another model than the gallery's would re-embed every template and switch
/// the runners' model: refused unless asked for (`--reembed`).
#[tokio::test]
async fn publishing_with_another_model_is_refused_unless_reembedding() {
    let embedder = embedder();
    let models = models_dir();
    let runtime = Runtime::load(&models.join("cache"), Some(1)).unwrap();
    let other = Embedder::new(runtime.open(&models.join("cache/sscd/sscd.onnx")).unwrap());
    assert_ne!(other.cache_key(), embedder.cache_key());
    let dir = tempfile::tempdir().unwrap();
    let store = folder_store(dir.path()).await;
    let first = publish(
        &store,
        add("cat", &["chelsea-the-cat/chelsea.jpg"]),
        &embedder,
    )
    .await
    .version
    .unwrap();
    let error = store
        .publish(add("cup", &["coffee-cup/coffee.jpg"]), Some(&other), "b")
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::ModelChange { .. }), "{error}");
    assert_eq!(store.current().await.unwrap(), first);
    let store = store.with_reembed(true);
    let switched = publish(&store, add("cup", &["coffee-cup/coffee.jpg"]), &other)
        .await
        .version
        .unwrap();
    let manifest = store.manifest(&switched).await.unwrap();
    assert_eq!(manifest.embedding_model, other.cache_key());
}

/// A real process holding the folder lock `lock` (util-linux flock(1) on its descriptor 9:
/// the same flock(2) lock the store takes) until killed, once it holds it.
async fn hold_lock(lock: &Path) -> std::process::Child {
    let holder = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"exec 9>"$1" && flock 9 && exec sleep 600"#)
        .arg("sh")
        .arg(lock)
        .spawn()
        .expect("sh and flock(1)");
    // Held once a non-blocking attempt fails.
    while std::process::Command::new("flock")
        .arg("-n")
        .arg(lock)
        .arg("true")
        .status()
        .unwrap()
        .success()
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    holder
}

/// Two publishers on one folder, both past their read of `current` when the lock frees
/// (a process holds it until both wait): exactly one loses the race, re-applies its
/// change on the winner's version, and both changes land.
#[tokio::test]
async fn a_folder_gallery_publishes_concurrently_without_losing_a_change() {
    let embedder = embedder();
    let dir = tempfile::tempdir().unwrap();
    let one = folder_store(dir.path()).await;
    let other = folder_store(dir.path()).await;
    let mut holder = hold_lock(&dir.path().join(".lock")).await;
    let versions = dir.path().join("versions");
    let release = async {
        // Both past their read of `current`: each stores its manifest last, then waits for
        // the lock to replace `current`.
        let started = std::time::Instant::now();
        while std::fs::read_dir(&versions).map_or(0, |d| d.count()) < 2 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "the publishers did not reach the lock"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        holder.kill().unwrap();
        holder.wait().unwrap();
    };
    race_cat_and_cup(&one, &other, &embedder, release).await;
}

/// `one` adds "cat" and `other` "cup" together (with `alongside`), on a gallery without
/// `current`: exactly one loses the race and re-applies its change, and both land. The
/// gallery's current version, loaded.
async fn race_cat_and_cup(
    one: &GalleryStore,
    other: &GalleryStore,
    embedder: &Embedder,
    alongside: impl std::future::Future<Output = ()>,
) -> (String, Gallery) {
    let (a, b, ()) = tokio::join!(
        one.publish(
            add("cat", &["chelsea-the-cat/chelsea.jpg"]),
            Some(embedder),
            "a"
        ),
        other.publish(add("cup", &["coffee-cup/coffee.jpg"]), Some(embedder), "b"),
        alongside,
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.retries + b.retries, 1, "exactly one lost the race");
    let current = one.current().await.unwrap();
    let gallery = other.load(&current, embedder, None).await.unwrap();
    assert_eq!(labels(&gallery), ["cat", "cup"]);
    assert_eq!(one.history().await.unwrap().len(), 2);
    (current, gallery)
}

/// A publisher that died holding `.lock` does not block the next one: the lock is an
/// advisory `flock` the kernel drops with its holder, whatever the file's age. While a live
/// process holds it, publishing waits.
#[tokio::test]
async fn a_killed_lock_holder_does_not_block_the_next_publisher() {
    let embedder = embedder();
    let dir = tempfile::tempdir().unwrap();
    let store = folder_store(dir.path()).await;
    let lock = dir.path().join(".lock");
    let mut holder = hold_lock(&lock).await;
    let publishing = publish(
        &store,
        add("cat", &["chelsea-the-cat/chelsea.jpg"]),
        &embedder,
    );
    tokio::pin!(publishing);
    // Held: the publish cannot replace `current` (it embeds and stores the objects, then
    // waits for the lock).
    let waited = tokio::time::timeout(std::time::Duration::from_secs(5), &mut publishing).await;
    assert!(
        waited.is_err(),
        "published while another process held .lock"
    );
    assert!(!dir.path().join("current").exists());
    holder.kill().unwrap();
    holder.wait().unwrap();
    let started = std::time::Instant::now();
    let published = publishing.await;
    assert!(published.version.is_some());
    // The lock file stays behind, fresh, and blocks nobody.
    assert!(lock.exists());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let again = publish(&store, add("cup", &["coffee-cup/coffee.jpg"]), &embedder).await;
    assert!(again.version.is_some());
}

#[tokio::test]
async fn a_folder_without_current_is_a_read_only_gallery_and_add_converts_it() {
    let embedder = embedder();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("cat")).unwrap();
    std::fs::copy(
        models_dir().join("gallery/chelsea-the-cat/chelsea.jpg"),
        dir.path().join("cat/chelsea.jpg"),
    )
    .unwrap();
    let store = folder_store(dir.path()).await;
    let legacy = store.current().await.unwrap();
    let gallery = store.load(&legacy, &embedder, None).await.unwrap();
    assert_eq!(gallery.version(), legacy);
    assert_eq!(legacy, legacy_version(gallery.templates()));
    assert_eq!(store.history().await.unwrap().len(), 1);

    let published = publish(&store, add("cup", &["coffee-cup/coffee.jpg"]), &embedder).await;
    assert_eq!(published.parent, None);
    let gallery = store
        .load(&published.version.unwrap(), &embedder, None)
        .await
        .unwrap();
    assert_eq!(labels(&gallery), ["cat", "cup"]);
    // Stored content-addressed, named (for results) as added or as the folder had it.
    let names: Vec<(&str, &str)> = gallery
        .templates()
        .iter()
        .map(|t| (t.name.as_str(), t.file.as_str()))
        .collect();
    assert_eq!(names[0].0, "cat/chelsea.jpg");
    assert_eq!(names[1].0, "coffee.jpg");
    assert!(names.iter().all(|(_, file)| file.starts_with("templates/")));
}

#[tokio::test]
async fn a_corrupt_manifest_or_current_is_a_clear_error() {
    let embedder = embedder();
    let dir = tempfile::tempdir().unwrap();
    let store = folder_store(dir.path()).await;
    let version = publish(
        &store,
        add("cat", &["chelsea-the-cat/chelsea.jpg"]),
        &embedder,
    )
    .await
    .version
    .unwrap();
    let manifest = dir.path().join(format!("versions/{version}.json"));
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&manifest, &bytes).unwrap();
    let error = store.load(&version, &embedder, None).await.err().unwrap();
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("is corrupt"), "{error}");

    std::fs::write(dir.path().join("current"), b"{\"version\": 3").unwrap();
    let error = store.current().await.unwrap_err();
    assert!(error.to_string().contains("current"), "{error}");
}

/// A reader polling `current` and loading it while versions are published back to back
/// always loads a whole version: every object a version names is written before
/// `current` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_sees_half_a_change() {
    let embedder = std::sync::Arc::new(embedder());
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(folder_store(dir.path()).await);
    publish(
        &store,
        add("cat", &["chelsea-the-cat/chelsea.jpg"]),
        &embedder,
    )
    .await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, embedder, done) = (store.clone(), embedder.clone(), done.clone());
        tokio::spawn(async move {
            let mut loads = 0;
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let version = store.current().await.expect("current reads");
                let gallery = store
                    .load(&version, &embedder, None)
                    .await
                    .expect("the current version loads whole");
                assert_eq!(gallery.version(), version);
                // The cat alone, or the cat and both cups: never one cup.
                let templates = gallery.templates().len();
                assert!(templates == 1 || templates == 3, "{templates} templates");
                seen.insert(templates);
                loads += 1;
            }
            (loads, seen.len())
        })
    };
    for _ in 0..8 {
        // One change of two templates, then back to the cat alone by a rollback.
        publish(
            &store,
            add("cup", &["coffee-cup/coffee.jpg", "cameraman/camera.jpg"]),
            &embedder,
        )
        .await;
        let first = store
            .history()
            .await
            .unwrap()
            .last()
            .unwrap()
            .version
            .clone();
        publish(&store, Change::Rollback { to: first }, &embedder).await;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (loads, states) = reader.await.unwrap();
    eprintln!("{loads} loads while 16 versions were published, {states} distinct states seen");
    assert!(loads > 10, "the reader ran alongside ({loads} loads)");
}

#[cfg(feature = "s3")]
mod s3 {
    use super::*;
    use plugworker_testkit::s3::S3;
    use plugworker_testkit::sqs::Sqs;

    async fn s3_store(s3: &S3, location: &str) -> GalleryStore {
        GalleryStore::with_s3_client(Location::parse(location).unwrap(), s3.client.clone())
    }

    #[tokio::test]
    async fn an_s3_gallery_publishes_concurrently_without_losing_a_change() {
        let embedder = embedder();
        let moto = Sqs::start().await;
        let s3 = S3::on(&moto);
        s3.create_bucket("galleries").await;
        let one = s3_store(&s3, "s3://galleries/board/").await;
        let other = s3_store(&s3, "s3://galleries/board").await;
        assert!(matches!(one.current().await, Err(StoreError::NoVersion(_))));
        // Both read "no current" and race for If-None-Match: *, then If-Match: the loser
        // re-applies its change on the winner's version.
        let (current, gallery) = race_cat_and_cup(&one, &other, &embedder, async {}).await;

        let removed = publish(
            &one,
            Change::Remove {
                label: "cup".into(),
                file: Some("coffee.jpg".into()),
            },
            &embedder,
        )
        .await
        .version
        .unwrap();
        let reloaded = one.load(&removed, &embedder, Some(&gallery)).await.unwrap();
        assert_eq!(labels(&reloaded), ["cat"]);
        let back = publish(
            &one,
            Change::Rollback {
                to: current[..6].into(),
            },
            &embedder,
        )
        .await
        .version
        .unwrap();
        assert_eq!(
            labels(&one.load(&back, &embedder, None).await.unwrap()),
            ["cat", "cup"]
        );

        // The race's loser wrote a manifest that never became current: harmless, as
        // nothing names it. The history is the four that did.
        assert_eq!(one.history().await.unwrap().len(), 4);
        let keys = s3.keys("galleries").await;
        assert_eq!(
            keys.iter()
                .filter(|k| k.starts_with("board/versions/"))
                .count(),
            5,
            "{keys:?}"
        );
        // Two templates, each stored once, whatever the number of versions naming them.
        assert_eq!(
            keys.iter()
                .filter(|k| k.starts_with("board/templates/"))
                .count(),
            2
        );
        s3.put("galleries", "board/current", b"not json".to_vec())
            .await;
        let error = one.current().await.unwrap_err();
        assert!(error.to_string().contains("is corrupt: current"), "{error}");
    }
}
