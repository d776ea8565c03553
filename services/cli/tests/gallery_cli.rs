//! `plugworker gallery add | remove | list | history | rollback` as real processes, with
//! the real SSCD model, on a folder and on S3 (moto), the version written to the embedded
//! registry's KV.

use plugworker_consul_client::{ConsulClient, ConsulConfig, QueryOptions};
use plugworker_meme::Location;
use plugworker_testkit::memes::{crop, jpeg_bytes, load, models_dir, png_bytes};
use plugworker_testkit::s3::S3;
use plugworker_testkit::sqs::{AWS_ENV, Sqs};
use plugworker_testkit::{Process, bin_path, registry_address};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(bin_path("plugworker"));
    command
        .arg("gallery")
        .args(args)
        .env("PLUGWORKER_MODELS_DIR", models_dir())
        .env("PLUGWORKER_GALLERY_AUTHOR", "tester@ci")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied());
    command
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("plugworker runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and expects success: (stdout, stderr).
fn ok(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let output = run(args, env);
    assert!(
        output.status.success(),
        "plugworker gallery {args:?} failed: {}",
        text(&output.stderr)
    );
    (text(&output.stdout), text(&output.stderr))
}

/// Runs and expects failure: stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let output = run(args, env);
    assert!(
        !output.status.success(),
        "plugworker gallery {args:?} succeeded: {}",
        text(&output.stdout)
    );
    text(&output.stderr)
}

/// `gallery add --gallery GALLERY --label LABEL [FLAGS] <demo image>`; must succeed:
/// (stdout, stderr).
fn add(
    gallery: &str,
    label: &str,
    flags: &[&str],
    image: &str,
    env: &[(&str, &str)],
) -> (String, String) {
    let image = demo(image);
    let mut args = vec!["add", "--gallery", gallery, "--label", label];
    args.extend_from_slice(flags);
    args.push(&image);
    ok(&args, env)
}

fn demo(relative: &str) -> String {
    models_dir()
        .join("gallery")
        .join(relative)
        .to_string_lossy()
        .into_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

/// The labels `list --json` shows, sorted.
fn labels(gallery: &str, env: &[(&str, &str)]) -> Vec<String> {
    let (out, _) = ok(&["list", "--gallery", gallery, "--json"], env);
    let document: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut labels: Vec<String> = document["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["label"].as_str().unwrap().to_string())
        .collect();
    labels.sort();
    labels.dedup();
    labels
}

fn history(gallery: &str, env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let (out, _) = ok(&["history", "--gallery", gallery, "--json"], env);
    serde_json::from_str(&out).unwrap()
}

async fn kv(consul: &str, key: &str) -> Option<String> {
    let client = ConsulClient::new(ConsulConfig {
        address: consul.to_string(),
        ..ConsulConfig::default()
    })
    .unwrap();
    let (pair, _) = client.kv_get(key, QueryOptions::default()).await.unwrap();
    pair.map(|p| text(&p.value))
}

/// An embedded registry process and its address.
async fn registry() -> (Process, String) {
    let registry = Process::spawn(
        &bin_path("plugworker"),
        &["registry", "--listen", "127.0.0.1:0"],
        &[],
    );
    let consul = registry_address(&registry).await;
    (registry, consul)
}

#[tokio::test]
async fn add_checks_images_publishes_versions_and_announces_them_in_the_registry() {
    let (_registry, consul) = registry().await;
    let env = [("CONSUL_HTTP_ADDR", consul.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let gallery_dir = dir.path().join("gallery");
    let gallery = gallery_dir.to_string_lossy().into_owned();

    // Refused before anything is written: not an image, too small, a missing file.
    let not_image = write(dir.path(), "notes.png", b"not an image");
    let error = refused(
        &["add", "--gallery", &gallery, "--label", "x", &not_image],
        &env,
    );
    assert!(error.contains("notes.png"), "{error}");
    let tiny = write(
        dir.path(),
        "tiny.png",
        &png_bytes(&image::RgbImage::new(16, 16)),
    );
    let error = refused(&["add", "--gallery", &gallery, "--label", "x", &tiny], &env);
    assert!(error.contains("at least 32"), "{error}");
    assert!(!gallery_dir.join("current").exists());

    let (out, err) = add(&gallery, "cat", &[], "chelsea-the-cat/chelsea.jpg", &env);
    let v1 = out.trim().to_string();
    assert_eq!(v1.len(), 64, "{out}");
    assert!(err.contains("add cat (1 image)"), "{err}");
    let key = Location::parse(&gallery).unwrap().kv_key();
    assert_eq!(kv(&consul, &key).await.as_deref(), Some(v1.as_str()));

    // A cropped, recompressed copy of the cat under another label: published, with a
    // warning naming the template it looks like.
    let copy = crop(
        &load(Path::new(&demo("chelsea-the-cat/chelsea.jpg"))),
        0.05,
        0.05,
        0.95,
        0.95,
    );
    let copy = write(dir.path(), "cat-copy.jpg", &jpeg_bytes(&copy, 70));
    let (out, err) = ok(
        &[
            "add",
            "--gallery",
            &gallery,
            "--label",
            "kitten",
            &copy,
            &demo("coffee-cup/coffee.jpg"),
        ],
        &env,
    );
    let v2 = out.trim().to_string();
    assert!(
        err.contains("warning: cat-copy.jpg looks like template chelsea.jpg of \"cat\""),
        "{err}"
    );
    assert!(!err.contains("coffee.jpg looks like"), "{err}");
    assert_eq!(kv(&consul, &key).await.as_deref(), Some(v2.as_str()));
    assert_eq!(labels(&gallery, &env), ["cat", "kitten"]);

    // Removing and rolling back reuse the stored embeddings: no model needed.
    let no_models = [
        ("CONSUL_HTTP_ADDR", consul.as_str()),
        ("PLUGWORKER_MODELS_DIR", "/nonexistent"),
    ];
    let (out, _) = ok(
        &[
            "remove",
            "--gallery",
            &gallery,
            "--label",
            "kitten",
            "--file",
            "cat-copy.jpg",
        ],
        &no_models,
    );
    let v3 = out.trim().to_string();
    let (listing, _) = ok(&["list", "--gallery", &gallery], &env);
    assert!(
        listing.contains("coffee.jpg") && !listing.contains("cat-copy.jpg"),
        "{listing}"
    );
    let error = refused(&["remove", "--gallery", &gallery, "--label", "nope"], &env);
    assert!(error.contains("no template labelled \"nope\""), "{error}");

    // Back to the first version, as a new version: the history keeps every step.
    let (out, _) = ok(
        &["rollback", "--gallery", &gallery, "--to", &v1[..10]],
        &no_models,
    );
    let v4 = out.trim().to_string();
    assert_eq!(labels(&gallery, &env), ["cat"]);
    assert_eq!(kv(&consul, &key).await.as_deref(), Some(v4.as_str()));
    let entries = history(&gallery, &env);
    let versions: Vec<&str> = entries
        .iter()
        .map(|e| e["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, [&v4, &v3, &v2, &v1]);
    assert_eq!(entries[0]["change"], format!("rollback to {}", &v1[..12]));
    assert_eq!(entries[2]["change"], "add kitten (2 images)");
    assert!(entries.iter().all(|e| e["created_by"] == "tester@ci"));
    let (text_history, _) = ok(&["history", "--gallery", &gallery], &env);
    assert!(
        text_history
            .lines()
            .next()
            .unwrap()
            .starts_with(&format!("{} (current)", &v4[..12])),
        "{text_history}"
    );
}

/// Four publishers as separate processes, all past their read of `current` when the
/// folder's lock frees (a process holds it until each has stored its manifest): every
/// change lands, at least three re-applied theirs on another's version, and the registry's
/// KV ends on the gallery's current version, whichever publisher wrote it last.
#[tokio::test]
async fn concurrent_adds_from_separate_processes_all_land() {
    let (_registry, consul) = registry().await;
    let env = [("CONSUL_HTTP_ADDR", consul.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let gallery_dir = dir.path().join("gallery");
    let gallery = gallery_dir.to_string_lossy().into_owned();
    add(&gallery, "cat", &[], "chelsea-the-cat/chelsea.jpg", &env);
    // util-linux flock(1) on descriptor 9: the flock(2) lock the store takes on `.lock`.
    let lock = gallery_dir.join(".lock");
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 9>"$1" && flock 9 && exec sleep 600"#)
        .arg("sh")
        .arg(&lock)
        .spawn()
        .expect("sh and flock(1)");
    let held = || {
        !Command::new("flock")
            .arg("-n")
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    };
    while !held() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let images = [
        ("astronaut", "astronaut/astronaut.jpg"),
        ("cameraman", "cameraman/camera.jpg"),
        ("cup", "coffee-cup/coffee.jpg"),
        ("rocket", "rocket-launch/rocket.jpg"),
    ];
    let children: Vec<_> = images
        .iter()
        .map(|(label, image)| {
            command(
                &["add", "--gallery", &gallery, "--label", label, &demo(image)],
                &env,
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    // Each publisher stores its manifest after reading `current`, then waits for the lock.
    let manifests = || {
        std::fs::read_dir(gallery_dir.join("versions"))
            .unwrap()
            .count()
    };
    let started = std::time::Instant::now();
    while manifests() < 1 + images.len() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "publishers did not reach the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let mut retried = 0;
    for child in children {
        let output = child.wait_with_output().unwrap();
        let err = text(&output.stderr);
        assert!(output.status.success(), "{err}");
        retried += usize::from(err.contains("re-applied"));
    }
    assert!(retried >= images.len() - 1, "{retried} re-applied");
    assert_eq!(
        labels(&gallery, &env),
        ["astronaut", "cameraman", "cat", "cup", "rocket"]
    );
    let entries = history(&gallery, &env);
    assert_eq!(entries.len(), 5, "{entries:?}");
    let current: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gallery_dir.join("current")).unwrap()).unwrap();
    let key = Location::parse(&gallery).unwrap().kv_key();
    assert_eq!(
        kv(&consul, &key).await.as_deref(),
        current["version"].as_str()
    );
}

#[tokio::test]
async fn a_corrupt_version_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let gallery = dir.path().join("gallery");
    let location = gallery.to_string_lossy().into_owned();
    let env = [("CONSUL_HTTP_ADDR", "127.0.0.1:1")];
    let (out, err) = add(&location, "cat", &[], "chelsea-the-cat/chelsea.jpg", &env);
    // Without a registry the version is still published; the KV write is a warning.
    assert!(
        err.contains("warning: cannot write plugworker/galleries/"),
        "{err}"
    );
    let manifest: PathBuf = gallery.join(format!("versions/{}.json", out.trim()));
    let corrupted = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"cat\"", "\"dog\"");
    std::fs::write(&manifest, corrupted).unwrap();
    let error = refused(&["list", "--gallery", &location], &env);
    assert!(
        error.contains("is corrupt") && error.contains("its sha256 is not its name"),
        "{error}"
    );
}

#[tokio::test]
async fn an_s3_gallery_on_moto() {
    let sqs = Sqs::start().await;
    let s3 = S3::on(&sqs);
    s3.create_bucket("memes").await;
    let mut env: Vec<(&str, &str)> = AWS_ENV.to_vec();
    env.push(("AWS_ENDPOINT_URL", &sqs.endpoint));
    env.push(("CONSUL_HTTP_ADDR", "127.0.0.1:1"));
    let gallery = "s3://memes/galleries/board";
    let (out, _) = add(
        gallery,
        "cat",
        &["--no-registry"],
        "chelsea-the-cat/chelsea.jpg",
        &env,
    );
    let v1 = out.trim().to_string();
    add(
        gallery,
        "cup",
        &["--no-registry"],
        "coffee-cup/coffee.jpg",
        &env,
    );
    assert_eq!(labels(gallery, &env), ["cat", "cup"]);
    let keys = s3.keys("memes").await;
    assert!(
        keys.contains(&"galleries/board/current".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("galleries/board/versions/{v1}.json")),
        "{keys:?}"
    );
    assert_eq!(
        keys.iter()
            .filter(|k| k.starts_with("galleries/board/templates/"))
            .count(),
        2
    );
    ok(
        &[
            "rollback",
            "--gallery",
            gallery,
            "--to",
            &v1,
            "--no-registry",
        ],
        &env,
    );
    assert_eq!(labels(gallery, &env), ["cat"]);
    assert_eq!(history(gallery, &env).len(), 3);
}
