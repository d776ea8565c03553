//! The image-runner end to end: registered in the embedded Consul-compatible registry
//! with exactly its algorithms as tags, found by tag, and called over gRPC at the
//! address it registered.

use crate::support;

use plugworker_consul_client::QueryOptions;
use plugworker_testkit::memes::{self, models_dir};
use plugworker_testkit::{Process, bin_path, eventually, runner_client};
use std::time::Duration;
use support::{base64_payload, call};

#[tokio::test]
async fn image_runner_registers_its_two_algorithms_as_tags_and_serves_both_over_grpc() {
    let (registry, consul) = support::registry().await;
    let models = models_dir();
    let (_runner, addresses) = Process::spawn_reporting(
        &bin_path("image-runner"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--consul-address",
            &registry.url(),
            "--check-interval",
            "1s",
            // The test calls the runner with a plaintext gRPC client.
            "--insecure-plaintext",
            "--models-dir",
            models.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let address = addresses.grpc();

    let (services, _) = eventually(
        Duration::from_secs(30),
        "image-runner in the catalog",
        || async {
            let (services, index) = consul
                .catalog_services(QueryOptions::default())
                .await
                .ok()?;
            services
                .contains_key("image-runner")
                .then_some((services, index))
        },
    )
    .await;
    assert_eq!(services["image-runner"], vec!["meme_classifier", "ocr"]);

    // Found the way the controller finds runners: passing instances with the tag.
    for tag in ["meme_classifier", "ocr"] {
        let entries = eventually(
            Duration::from_secs(60),
            "a passing instance for the tag",
            || async {
                let (entries, _) = consul
                    .health_service("image-runner", &[tag], true, QueryOptions::default())
                    .await
                    .ok()?;
                (!entries.is_empty()).then_some(entries)
            },
        )
        .await;
        assert_eq!(entries.len(), 1);
        let registered = format!("{}:{}", entries[0].service.address, entries[0].service.port);
        assert_eq!(registered, address);
    }

    let mut client = runner_client(address, Duration::from_secs(10)).await;
    let meme = std::fs::read(models.join("../scripts/demo/meme.jpg")).unwrap();
    let classified = call(&mut client, "meme_classifier", &base64_payload(&meme))
        .await
        .unwrap();
    assert_eq!(classified["label"], "chelsea-the-cat", "{classified}");
    let read = call(&mut client, "ocr", &base64_payload(&meme))
        .await
        .unwrap();
    assert!(
        memes::character_accuracy(
            "WHEN THE JOB FINALLY REACHES THE RUNNER",
            read["text"].as_str().unwrap()
        ) > 0.95,
        "{read}"
    );
}
