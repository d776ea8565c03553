//! `ocr` on a real image-runner: the text of rendered memes is read back.

use crate::support;

use plugworker_testkit::memes::{self, Lcg, character_accuracy, edit_distance};
use support::{CAPTIONS, base64_payload, call, start, templates};

#[tokio::test]
async fn captions_of_rendered_memes_are_read_with_high_character_accuracy() {
    let mut runner = start(&[]).await;
    let fonts = memes::fonts();
    let templates = templates();
    let mut random = Lcg::new(11);
    let (mut edits, mut characters) = (0usize, 0usize);
    let mut report = String::new();
    for (i, (top, bottom)) in CAPTIONS.iter().enumerate() {
        let (label, template) = &templates[i % templates.len()];
        let font = &fonts[i % fonts.len()];
        let image = memes::caption(template, top, bottom, font);
        let quality = random.range(70.0, 95.0) as u8;
        let result = call(
            &mut runner.client,
            "ocr",
            &base64_payload(&memes::jpeg_bytes(&image, quality)),
        )
        .await
        .unwrap();
        let expected = format!("{top} {bottom}").to_uppercase();
        let read = result["text"].as_str().unwrap();
        let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<Vec<_>>();
        let distance = edit_distance(&squeeze(&expected), &squeeze(read));
        edits += distance;
        characters += squeeze(&expected).len();
        report.push_str(&format!(
            "{:.3} {label:<18} q{quality} {expected:?} → {read:?}\n",
            character_accuracy(&expected, read)
        ));
        assert_eq!(result["engine"], "ppocr");
        for line in result["lines"].as_array().unwrap() {
            let confidence = line["confidence"].as_f64().unwrap();
            assert!((0.5..=1.0).contains(&confidence), "{line}");
            let corners = line["box"].as_array().unwrap();
            assert_eq!(corners.len(), 4);
            for corner in corners {
                let (x, y) = (corner[0].as_f64().unwrap(), corner[1].as_f64().unwrap());
                assert!(x >= 0.0 && x < result["width"].as_f64().unwrap(), "{line}");
                assert!(y >= 0.0 && y < result["height"].as_f64().unwrap(), "{line}");
            }
        }
    }
    let accuracy = 1.0 - edits as f64 / characters as f64;
    println!(
        "{report}character accuracy {accuracy:.4} over {} memes, {characters} characters",
        CAPTIONS.len()
    );
    assert!(CAPTIONS.len() >= 20);
    assert!(
        accuracy >= 0.97,
        "character accuracy {accuracy:.4} < 0.97\n{report}"
    );
}

/// The ocrs engine: where its models were fetched (scripts/fetch-ocrs-models.sh, which
/// needs the internet) it reads the demo meme; where they were not, as in CI, choosing it
/// stops the runner with an error naming the missing file and the script.
#[tokio::test]
async fn the_ocrs_engine_reads_text_or_without_its_model_files_names_them() {
    let models = plugworker_testkit::memes::models_dir();
    if models.join("cache/ocrs/text-detection.rten").is_file()
        && models.join("cache/ocrs/text-recognition.rten").is_file()
    {
        let mut runner = start(&[("PLUGWORKER_OCR_ENGINE", "ocrs")]).await;
        let meme = std::fs::read(models.join("../scripts/demo/meme.jpg")).unwrap();
        let read = call(&mut runner.client, "ocr", &base64_payload(&meme))
            .await
            .unwrap();
        assert_eq!(read["engine"], "ocrs");
        let accuracy = character_accuracy(
            "WHEN THE JOB FINALLY REACHES THE RUNNER",
            read["text"].as_str().unwrap(),
        );
        assert!(accuracy > 0.9, "{read}");
        return;
    }
    let mut runner = plugworker_testkit::Process::spawn(
        &plugworker_testkit::bin_path("image-runner"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-register",
            "--insecure-plaintext",
            "--models-dir",
            models.to_str().unwrap(),
        ],
        &[
            ("PLUGWORKER_OCR_ENGINE", "ocrs"),
            ("PLUGWORKER_MEME_GALLERY_CACHE", "off"),
        ],
    );
    let status = runner.wait_exit(std::time::Duration::from_secs(30)).await;
    assert!(!status.success());
    let log = runner.log();
    assert!(log.contains("text-detection.rten"), "{log}");
    assert!(log.contains("fetch-ocrs-models.sh"), "{log}");
    assert!(log.contains("ocr"), "{log}");
}
