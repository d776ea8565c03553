//! Images by reference on a real image-runner: the demo meme stored in a real S3
//! emulator (moto in server mode) is classified through `image_s3`, read with the
//! runner's own AWS configuration from the standard environment variables.

use crate::support;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use plugworker_rpc::runner::v1::ListAlgorithmsRequest;
use plugworker_testkit::ClosedPort;
use plugworker_testkit::sqs::Sqs;
use std::path::Path;
use support::{call, start};
use tonic::Code;

/// moto in server mode (the test kit's, which serves S3 beside SQS), with a bucket
/// holding the demo meme.
async fn moto_with_the_demo_meme(bucket: &str, key: &str) -> Sqs {
    let moto = Sqs::start().await;
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .endpoint_url(&moto.endpoint)
            .force_path_style(true)
            .build(),
    );
    client.create_bucket().bucket(bucket).send().await.unwrap();
    let meme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../scripts/demo/meme.jpg");
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(std::fs::read(&meme).unwrap()))
        .send()
        .await
        .unwrap();
    moto
}

#[tokio::test]
async fn the_demo_meme_is_classified_from_s3() {
    let moto = moto_with_the_demo_meme("plugworker-inputs", "memes/demo meme.jpg").await;
    // Only the standard AWS variables: the runner finds region, credentials and the
    // endpoint the way it would in a deployment.
    let mut env = plugworker_testkit::sqs::AWS_ENV.to_vec();
    env.push(("AWS_ENDPOINT_URL_S3", moto.endpoint.as_str()));
    env.push(("AWS_EC2_METADATA_DISABLED", "true"));
    let mut runner = start(&env).await;

    // The published schema offers the third source.
    let listing = runner
        .client
        .list_algorithms(ListAlgorithmsRequest {})
        .await
        .unwrap()
        .into_inner();
    for algorithm in &listing.algorithms {
        let schema: serde_json::Value = serde_json::from_str(&algorithm.input_schema).unwrap();
        assert!(
            schema["properties"]["image_s3"].is_object(),
            "{}: {schema}",
            algorithm.name
        );
        assert!(
            schema["oneOf"].as_array().is_some_and(
                |one_of| one_of.contains(&serde_json::json!({"required": ["image_s3"]}))
            ),
            "{}: {schema}",
            algorithm.name
        );
    }

    for reference in [
        serde_json::json!("s3://plugworker-inputs/memes/demo meme.jpg"),
        serde_json::json!({"bucket": "plugworker-inputs", "key": "memes/demo meme.jpg"}),
    ] {
        let result = call(
            &mut runner.client,
            "meme_classifier",
            &serde_json::json!({ "image_s3": reference }),
        )
        .await
        .unwrap_or_else(|status| panic!("{reference}: {status:?}"));
        assert_eq!(result["label"], "chelsea-the-cat", "{result}");
    }

    let status = call(
        &mut runner.client,
        "meme_classifier",
        &serde_json::json!({ "image_s3": "s3://plugworker-inputs/memes/absent.jpg" }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("s3://plugworker-inputs/memes/absent.jpg"),
        "{status:?}"
    );
    assert!(runner.process.is_running());
}

#[tokio::test]
async fn an_unreachable_s3_is_unavailable_for_the_controller_to_retry() {
    let closed_port = ClosedPort::new();
    let closed = closed_port.url();
    let mut env = plugworker_testkit::sqs::AWS_ENV.to_vec();
    env.push(("AWS_ENDPOINT_URL_S3", closed.as_str()));
    env.push(("AWS_EC2_METADATA_DISABLED", "true"));
    env.push(("AWS_MAX_ATTEMPTS", "1"));
    let mut runner = start(&env).await;
    let status = call(
        &mut runner.client,
        "meme_classifier",
        &serde_json::json!({ "image_s3": "s3://plugworker-inputs/meme.jpg" }),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("s3://plugworker-inputs/meme.jpg"),
        "{status:?}"
    );
    assert!(runner.process.is_running());
}
