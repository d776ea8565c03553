//! `language_detection` on a real nlp-runner process over gRPC.

use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_testkit::{Process, bin_path, runner_client};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

async fn runner() -> (Process, RunnerClient<Channel>) {
    let (process, addresses) = Process::spawn_reporting(
        &bin_path("nlp-runner"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--no-register",
            "--insecure-plaintext",
        ],
        &[],
    )
    .await;
    let client = runner_client(addresses.grpc(), Duration::from_secs(15)).await;
    (process, client)
}

async fn detect(
    client: &mut RunnerClient<Channel>,
    text: &str,
) -> Result<serde_json::Value, tonic::Status> {
    let payload = serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap();
    // The runner may still be loading right after start: retry UNAVAILABLE briefly.
    for _ in 0..100 {
        match client
            .run(RunRequest {
                algorithm: "language_detection".into(),
                payload: payload.clone(),
            })
            .await
        {
            Err(status) if status.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return other.map(|r| serde_json::from_slice(&r.into_inner().result).unwrap()),
        }
    }
    panic!("runner never became available");
}

#[tokio::test]
async fn detects_english_french_german_spanish_and_japanese() {
    let (_runner, mut client) = runner().await;
    let cases = [
        (
            "The quick brown fox jumps over the lazy dog while the children watch from the window.",
            "en",
            "eng",
            "English",
        ),
        (
            "Le petit chat dort tranquillement sur le canapé pendant que la pluie tombe dehors.",
            "fr",
            "fra",
            "French",
        ),
        (
            "Der kleine Hund spielt jeden Morgen im Garten mit seinem roten Ball und ist glücklich.",
            "de",
            "deu",
            "German",
        ),
        (
            "El niño come una manzana roja en el parque mientras sus amigos juegan al fútbol.",
            "es",
            "spa",
            "Spanish",
        ),
        (
            "今日はとても良い天気ですね。公園で散歩をしましょう。",
            "ja",
            "jpn",
            "Japanese",
        ),
    ];
    for (text, code, iso639_3, name) in cases {
        let result = detect(&mut client, text).await.unwrap();
        assert_eq!(result["language"], code, "{text}: {result}");
        assert_eq!(result["iso639_3"], iso639_3);
        assert_eq!(result["name"], name);
        let confidence = result["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&confidence), "{confidence}");
        assert!(result["script"].is_string());
    }
}

#[tokio::test]
async fn empty_whitespace_wrong_type_and_oversized_text_are_clear_errors() {
    let (mut process, mut client) = runner().await;

    let status = detect(&mut client, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("/text"), "{}", status.message());

    let status = detect(&mut client, " \n\t  ").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("empty or only whitespace"),
        "{}",
        status.message()
    );

    let status = client
        .run(RunRequest {
            algorithm: "language_detection".into(),
            payload: br#"{"text": 42}"#.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("/text") && status.message().contains("string"),
        "{}",
        status.message()
    );

    let ten_megabytes = "word ".repeat(2 * 1024 * 1024);
    let status = detect(&mut client, &ten_megabytes).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("/text"), "{}", status.message());
    assert!(
        status.message().len() < 1024,
        "the error does not echo the text"
    );

    let status = detect(&mut client, "12345 !!! ???").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Still serving.
    let result = detect(
        &mut client,
        "This sentence is plainly written in the English language.",
    )
    .await
    .unwrap();
    assert_eq!(result["language"], "en");
    assert!(process.is_running());
}
