//! Resource bounds of a real image-runner under deadlines: callers that give up on large
//! images are answered on time, but the image each one started decoding keeps its run
//! slot until it is done, so peak memory stays that of `--max-concurrent-runs` images.

use crate::support;

use plugworker_rpc::runner::v1::RunRequest;
use plugworker_testkit::memes;
use std::time::{Duration, Instant};
use support::{base64_payload, call, start_with, templates};
use tonic::{Code, Request};

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn six_40_megapixel_images_with_short_deadlines_do_not_multiply_peak_memory() {
    // 40 MP, within the default pixel cap; a smooth pattern keeps the PNG small.
    let (width, height) = (8000u32, 5000u32);
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x / 32) as u8, (y / 20) as u8, ((x + y) / 64) as u8])
    });
    let png = memes::png_bytes(&image);
    drop(image);
    let payload = serde_json::to_vec(&base64_payload(&png)).unwrap();
    println!("40 MP PNG: {} KiB", png.len() / 1024);

    let mut runner = start_with(&["--max-concurrent-runs", "1"], &[]).await;
    let small = base64_payload(&memes::jpeg_bytes(&templates()[0].1, 80));
    call(&mut runner.client, "meme_classifier", &small)
        .await
        .unwrap();

    // One 40 MP image, to the end: the peak one image costs.
    let started = Instant::now();
    let result = call(
        &mut runner.client,
        "meme_classifier",
        &serde_json::from_slice(&payload).unwrap(),
    )
    .await
    .unwrap();
    let one_image = started.elapsed();
    assert_eq!(result["width"], width, "{result}");
    let (peak_one, _) = plugworker_testkit::rss(runner.process.pid());

    // Six callers, one after the other, each giving up well before its image could be
    // decoded. Had each answer freed the slot, each would start a decode beside the
    // earlier ones still running. The runner answers a tenth of the deadline early (at
    // least 3 ms): with the 40 MP decode at ~0.4 s in the dev profile, a tenth of it made
    // that 5 ms, which a busy machine can miss, so that the caller's own timer fires
    // first. A third of it, 100 ms at least, leaves the runner 10 ms or more.
    let deadline = (one_image / 3).clamp(Duration::from_millis(100), Duration::from_millis(300));
    for caller in 0..6 {
        let mut request = Request::new(RunRequest {
            algorithm: "meme_classifier".into(),
            payload: payload.clone(),
        });
        request.metadata_mut().insert(
            "grpc-timeout",
            format!("{}m", deadline.as_millis()).parse().unwrap(),
        );
        let sent = Instant::now();
        let status = runner.client.run(request).await.unwrap_err();
        println!("caller {caller}: {:?}: {status:?}", sent.elapsed());
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "caller {caller}: {status:?}"
        );
        assert!(
            sent.elapsed() < deadline + Duration::from_secs(2),
            "caller {caller} answered after {:?}",
            sent.elapsed()
        );
    }
    // The next caller without a deadline runs once the abandoned work is done.
    call(&mut runner.client, "meme_classifier", &small)
        .await
        .unwrap();
    let (peak_six, _) = plugworker_testkit::rss(runner.process.pid());
    println!(
        "image-runner: one 40 MP image in {one_image:?}, peak RSS {} MiB; after six callers giving up at {deadline:?}: {} MiB",
        peak_one / MIB,
        peak_six / MIB
    );
    // A decoded 40 MP RGB image alone is 114 MiB: a second decode beside the first
    // would show.
    assert!(
        peak_six < peak_one + 100 * MIB,
        "peak RSS grew from {} MiB to {} MiB",
        peak_one / MIB,
        peak_six / MIB
    );
    // The abandoned work was there, and said when it ended.
    assert!(
        runner
            .process
            .log()
            .contains("blocking work ended after its run's deadline"),
        "{}",
        runner.process.log()
    );
    assert!(runner.process.is_running());
}
