//! `meme_classifier` on a real image-runner: memes rendered from the gallery's templates
//! are recognised, unrelated photos are `unknown`.

use crate::support;

use plugworker_testkit::memes::{self, Lcg};
use support::{
    CAPTIONS, base64_payload, call, copy_dir, plain, start, templates, unrelated_photos,
};

/// Eight edited memes per template: captions in varying fonts, then a mix of JPEG
/// recompression, crops, banners and rescaling.
fn rendered_memes() -> Vec<(String, String, Vec<u8>)> {
    let fonts = memes::fonts();
    let mut random = Lcg::new(7);
    let mut cases = Vec::new();
    for (t, (label, template)) in templates().iter().enumerate() {
        for variant in 0..8 {
            let (top, bottom) = CAPTIONS[(t * 8 + variant) % CAPTIONS.len()];
            let font = random.pick(&fonts);
            let mut image = memes::caption(template, top, bottom, font);
            let mut edits = vec![format!("caption {top:?}/{bottom:?}")];
            if variant % 2 == 1 {
                let (l, tp) = (random.range(0.0, 0.12), random.range(0.0, 0.12));
                let (r, b) = (random.range(0.88, 1.0), random.range(0.88, 1.0));
                image = memes::crop(&image, l, tp, r, b);
                edits.push(format!("crop {l:.2},{tp:.2},{r:.2},{b:.2}"));
            }
            if variant % 4 == 2 {
                image = memes::banner(&image, "when the meme hits different", font);
                edits.push("banner".into());
            }
            if variant % 3 == 0 {
                let factor = random.range(0.5, 0.9);
                image = memes::scale(&image, factor);
                edits.push(format!("scale {factor:.2}"));
            }
            let quality = random.range(35.0, 90.0) as u8;
            edits.push(format!("jpeg q{quality}"));
            cases.push((
                label.clone(),
                edits.join(", "),
                memes::jpeg_bytes(&image, quality),
            ));
        }
    }
    cases
}

/// Each photo as is, with captions, and a recompressed crop of it.
fn unrelated_images() -> Vec<(String, Vec<u8>)> {
    let fonts = memes::fonts();
    let mut cases = Vec::new();
    for (i, (name, photo)) in unrelated_photos().into_iter().enumerate() {
        let (top, bottom) = CAPTIONS[i % CAPTIONS.len()];
        cases.push((name.clone(), memes::png_bytes(&photo)));
        cases.push((
            format!("{name} captioned"),
            memes::jpeg_bytes(
                &memes::caption(&photo, top, bottom, &fonts[i % fonts.len()]),
                75,
            ),
        ));
        cases.push((
            format!("{name} cropped"),
            memes::jpeg_bytes(&memes::crop(&photo, 0.1, 0.1, 0.8, 0.9), 60),
        ));
    }
    cases
}

#[tokio::test]
async fn rendered_memes_are_recognised_and_unrelated_photos_are_unknown() {
    // Inputs first: the runner closes a connection whose first call does not come within
    // its --header-read-timeout, and rendering takes seconds on a busy machine.
    let memes = rendered_memes();
    assert!(memes.len() >= 40);
    let unrelated = unrelated_images();
    assert!(unrelated.len() >= 20);
    let cache = tempfile_dir();
    let mut runner = start(&[("PLUGWORKER_MEME_GALLERY_CACHE", cache.as_str())]).await;

    let mut correct = 0;
    let mut report = String::new();
    for (label, edits, bytes) in &memes {
        let result = call(
            &mut runner.client,
            "meme_classifier",
            &base64_payload(bytes),
        )
        .await
        .unwrap();
        let got = result["label"].as_str().unwrap();
        if got == label {
            correct += 1;
        }
        report.push_str(&format!(
            "{} {label:<20} → {got:<20} {:.3} (next {:.3}) [{edits}]\n",
            if got == label { "ok  " } else { "MISS" },
            result["score"].as_f64().unwrap(),
            result["candidates"]
                .get(1)
                .map(|c| c["score"].as_f64().unwrap())
                .unwrap_or(0.0),
        ));
    }
    let mut unknown = 0;
    for (name, bytes) in &unrelated {
        let result = call(
            &mut runner.client,
            "meme_classifier",
            &base64_payload(bytes),
        )
        .await
        .unwrap();
        let got = result["label"].as_str().unwrap();
        if got == "unknown" {
            unknown += 1;
        }
        report.push_str(&format!(
            "{} {name:<28} → {got:<20} {:.3}\n",
            if got == "unknown" { "ok  " } else { "FP  " },
            result["score"].as_f64().unwrap()
        ));
    }
    println!("{report}");
    let top1 = correct as f64 / memes.len() as f64;
    let unknown_rate = unknown as f64 / unrelated.len() as f64;
    println!(
        "top-1 {top1:.3} on {} memes; unknown {unknown_rate:.3} on {} unrelated",
        memes.len(),
        unrelated.len()
    );
    assert!(top1 >= 0.95, "top-1 {top1:.3} < 0.95\n{report}");
    assert!(
        unknown_rate >= 0.95,
        "unknown rate {unknown_rate:.3} < 0.95\n{report}"
    );
}

#[tokio::test]
async fn adding_a_template_is_adding_an_image_and_known_templates_come_from_the_cache() {
    // A copy of the gallery, warmed into a fresh cache by a first runner.
    let gallery = std::path::PathBuf::from(tempfile_dir()).join("gallery");
    copy_dir(&memes::models_dir().join("gallery"), &gallery);
    let cache = std::path::PathBuf::from(tempfile_dir()).join("cache");
    let gallery_env = gallery.to_string_lossy().into_owned();
    let cache_env = cache.to_string_lossy().into_owned();
    let env = [
        ("PLUGWORKER_MEME_GALLERY", gallery_env.as_str()),
        ("PLUGWORKER_MEME_GALLERY_CACHE", cache_env.as_str()),
    ];
    let templates = templates().len();
    let (brick, query) = support::brick_wall();
    {
        let mut runner = start(&env).await;
        let before = call(
            &mut runner.client,
            "meme_classifier",
            &base64_payload(&query),
        )
        .await
        .unwrap();
        assert_eq!(
            before["label"], "unknown",
            "the brick wall is not a template yet: {before}"
        );
        assert!(
            plain(&runner.process.log()).contains(&format!("embedded: {templates}, from_cache: 0")),
            "{}",
            runner.process.log()
        );
    }

    // Add one image in a new label folder; nothing else changes.
    std::fs::create_dir_all(gallery.join("brick-wall")).unwrap();
    std::fs::write(
        gallery.join("brick-wall/brick.png"),
        memes::png_bytes(&brick),
    )
    .unwrap();
    let mut runner = start(&env).await;
    let after = call(
        &mut runner.client,
        "meme_classifier",
        &base64_payload(&query),
    )
    .await
    .unwrap();
    assert_eq!(after["label"], "brick-wall", "{after}");
    assert_eq!(after["candidates"][0]["template"], "brick-wall/brick.png");
    assert!(
        plain(&runner.process.log()).contains(&format!(
            "templates: {}, embedded: 1, from_cache: {templates}",
            templates + 1
        )),
        "only the new template is embedded: {}",
        runner.process.log()
    );
}

fn tempfile_dir() -> String {
    support::temp_dir().to_string_lossy().into_owned()
}
