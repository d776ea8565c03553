//! `ocr` on captions drawn over busy backgrounds — rendered star fields, a noise texture,
//! the gallery's Hubble deep field photo, and the cameraman's backdrop enlarged (where
//! detection at rapidocr's 736 px found "C000", "0000" and "2000") — on a real
//! image-runner. Stars and specks look like "0", "O" or "C" to a text detector; the
//! result must hold the captions and nothing else.

use crate::support;

use plugworker_testkit::memes::{self, character_accuracy, substring_distance};
use support::{CAPTIONS, base64_payload, call, start, templates};

/// Characters of `text` other than whitespace.
fn squeeze(text: &str) -> Vec<char> {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

#[tokio::test]
async fn captions_over_star_fields_and_noise_are_read_without_spurious_lines() {
    let fonts = memes::fonts();
    let templates = templates();
    let template = |name: &str| {
        templates
            .iter()
            .find(|(label, _)| label == name)
            .unwrap_or_else(|| panic!("the gallery has {name}"))
            .1
            .clone()
    };
    let (hubble, cameraman) = (template("hubble-deep-field"), template("cameraman"));
    // (background name, image): sizes vary so captions land at different scales.
    let mut backgrounds = Vec::new();
    for (seed, (width, height)) in [(512, 512), (500, 333), (640, 400)].into_iter().enumerate() {
        let seed = seed as u64 + 1;
        backgrounds.push((
            format!("stars {width}x{height}"),
            memes::star_field(width, height, seed),
        ));
        backgrounds.push((
            format!("noise {width}x{height}"),
            memes::noise_texture(width, height, seed),
        ));
    }
    backgrounds.push(("hubble".to_string(), hubble.clone()));
    backgrounds.push(("hubble ×1.5".to_string(), memes::scale(&hubble, 1.5)));
    backgrounds.push(("cameraman ×1.5".to_string(), memes::scale(&cameraman, 1.5)));
    // Started once the inputs exist: the runner closes a connection whose first call does
    // not come within its --header-read-timeout.
    let mut runner = start(&[]).await;

    let (mut spurious, mut report) = (Vec::new(), String::new());
    let (mut accuracy_sum, mut count) = (0.0, 0);
    for (i, (background, image)) in backgrounds.iter().enumerate() {
        let (top, bottom) = CAPTIONS[(i * 5) % CAPTIONS.len()];
        let meme = memes::caption(image, top, bottom, &fonts[i % fonts.len()]);
        let result = call(
            &mut runner.client,
            "ocr",
            &base64_payload(&memes::jpeg_bytes(&meme, 85)),
        )
        .await
        .unwrap();
        let expected = format!("{top} {bottom}").to_uppercase();
        let read = result["text"].as_str().unwrap();
        let accuracy = character_accuracy(&expected, read);
        accuracy_sum += accuracy;
        count += 1;
        report.push_str(&format!(
            "{accuracy:.3} {background:<14} {expected:?} → {read:?}\n"
        ));
        // A line belongs to the captions when it is, give or take a misread character in
        // five, a piece of them.
        for line in result["lines"].as_array().unwrap() {
            let text = squeeze(line["text"].as_str().unwrap());
            let distance = substring_distance(&squeeze(&expected), &text);
            if distance * 5 > text.len().max(1) {
                spurious.push(format!("{background}: {line}"));
            }
        }
    }
    let mean = accuracy_sum / count as f64;
    println!("{report}mean character accuracy {mean:.4}");
    assert!(
        spurious.is_empty(),
        "lines that are not part of the captions:\n{}\n{report}",
        spurious.join("\n")
    );
    // Filtering must not cost the captions themselves.
    assert!(mean >= 0.95, "mean character accuracy {mean:.4}\n{report}");
}
