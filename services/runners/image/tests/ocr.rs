//! `ocr` on a real image-runner: the text of rendered memes is read back.

mod support;

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
