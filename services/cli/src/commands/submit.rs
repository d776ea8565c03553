//! `plugworker submit`: put one job on the jobs queue and print its message id.
//!
//! A job too large for the queue (a big `--image`) goes through S3 when a payload bucket is
//! configured: the message carries a pointer in the format of AWS's SQS Extended Client
//! Library (docs/claim-check.md), which the controller and AWS's extended clients resolve.

use anyhow::{Context, bail};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine;
use plugworker_claim_check as claim_check;
use std::collections::HashMap;
use std::path::PathBuf;
use tracing::Instrument;

/// The limit assumed when the queue's own cannot be read: SQS's default before 2025 and
/// the threshold of AWS's Python extended client, so a job that fits it fits any queue
/// left at its default.
const FALLBACK_MAX_MESSAGE_SIZE: usize = 262_144;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["payload", "text", "image_url", "image"])))]
// A producer deletes nothing after use: that is the consumer's setting.
#[command(mut_arg("keep_payloads", |arg| arg.hide(true)))]
pub struct Args {
    /// URL of the jobs queue.
    #[arg(long, env = "PLUGWORKER_JOBS_QUEUE_URL")]
    pub jobs_queue_url: String,
    #[command(flatten)]
    pub sqs: plugworker_controller::SqsArgs,
    /// Algorithm to run.
    #[arg(long)]
    pub algorithm: String,
    /// Your id for the job, echoed in its result.
    #[arg(long)]
    pub id: Option<String>,
    /// The algorithm's input as JSON.
    #[arg(long)]
    pub payload: Option<String>,
    /// Text input: the payload {"text": TEXT}.
    #[arg(long)]
    pub text: Option<String>,
    /// Image by URL: the payload {"image_url": URL}.
    #[arg(long)]
    pub image_url: Option<String>,
    /// Image file, sent inline: the payload {"image_base64": ...} (through S3 when it is too
    /// large for the queue and a payload bucket is set).
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub payload_storage: claim_check::PayloadArgs,
}

/// The job document for these arguments.
pub fn job_body(args: &Args) -> anyhow::Result<String> {
    let payload: serde_json::Value = if let Some(payload) = &args.payload {
        serde_json::from_str(payload).context("--payload is not valid JSON")?
    } else if let Some(text) = &args.text {
        serde_json::json!({ "text": text })
    } else if let Some(url) = &args.image_url {
        serde_json::json!({ "image_url": url })
    } else if let Some(path) = &args.image {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::json!({ "image_base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
    } else {
        bail!("one of --payload, --text, --image-url or --image is required")
    };
    let mut job = serde_json::json!({ "algorithm": args.algorithm, "payload": payload });
    if let Some(id) = &args.id {
        job["id"] = serde_json::Value::String(id.clone());
    }
    Ok(job.to_string())
}

/// The jobs queue's limit and the threshold derived from it (or given).
struct Limit {
    threshold: usize,
    /// The queue's MaximumMessageSize, when it could be read.
    max_message_size: Option<usize>,
}

async fn limit(args: &Args, client: &aws_sdk_sqs::Client) -> Limit {
    let max_message_size =
        match claim_check::queue_max_message_size(client, &args.jobs_queue_url).await {
            Ok(max) => Some(max),
            Err(error) => {
                tracing::warn!(
                    %error,
                    assumed = FALLBACK_MAX_MESSAGE_SIZE,
                    "cannot read the jobs queue's MaximumMessageSize; assuming the default"
                );
                None
            }
        };
    let max = max_message_size.unwrap_or(FALLBACK_MAX_MESSAGE_SIZE);
    let threshold = match (
        args.payload_storage.payload_threshold,
        args.payload_storage
            .payload_bucket
            .as_deref()
            .filter(|b| !b.is_empty()),
    ) {
        (Some(threshold), _) => threshold,
        // With a bucket, a job near the limit goes through S3 rather than risk it.
        (None, Some(_)) => claim_check::threshold_for_max_message_size(max),
        // Without one, anything the queue takes is sent as it is.
        (None, None) => max,
    };
    Limit {
        threshold,
        max_message_size,
    }
}

/// What to tell the user about a job too large to send without a payload bucket.
fn too_large(size: usize, limit: &Limit) -> anyhow::Error {
    let source = if limit.max_message_size == Some(limit.threshold) {
        " (its MaximumMessageSize)"
    } else {
        ""
    };
    anyhow::anyhow!(
        "the job is {size} bytes (body and attributes), {} bytes over the jobs queue's limit of {} bytes{source}; set --payload-bucket or PLUGWORKER_PAYLOAD_BUCKET to send it through S3",
        size - limit.threshold,
        limit.threshold,
    )
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let body = job_body(&args)?;
    let client = args.sqs.client().await;
    let limit = limit(&args, &client).await;
    let storage = args
        .payload_storage
        .claim_check(args.sqs.region.as_deref(), limit.threshold)
        .await;
    // The PRODUCER span: the root of the job's trace. Its context rides along as the
    // `traceparent` (and `tracestate`) message attributes.
    let span = tracing::info_span!(
        "send job",
        otel.kind = "producer",
        messaging.system = "aws_sqs",
        messaging.operation.type = "send",
        messaging.destination.name = %args.jobs_queue_url,
        messaging.message.id = tracing::field::Empty,
        plugworker.algorithm = %args.algorithm,
        plugworker.job_id = args.id.as_deref().unwrap_or_default(),
    );
    let mut attributes = HashMap::new();
    for (name, value) in plugworker_telemetry::propagation::context_headers(&span) {
        let attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .context("trace context attribute")?;
        attributes.insert(name, attribute);
    }
    let outgoing = match storage
        .offload(body, &attributes)
        .instrument(span.clone())
        .await
    {
        Ok(outgoing) => outgoing,
        Err(claim_check::Error::TooLarge { size, .. }) => return Err(too_large(size, &limit)),
        Err(error) => return Err(error).context("cannot store the job's body in S3"),
    };
    if let Some(pointer) = &outgoing.pointer {
        tracing::info!(%pointer, "the job is larger than the queue takes; its body is stored in S3");
    }
    let mut request = outgoing.apply(client.send_message().queue_url(&args.jobs_queue_url));
    for (name, value) in attributes {
        request = request.message_attributes(name, value);
    }
    let output = match request.send().instrument(span.clone()).await {
        Ok(output) => output,
        Err(error) => {
            if let Some(pointer) = &outgoing.pointer {
                // Nothing will ever refer to the stored body: do not leave it behind.
                if let Err(error) = storage.discard(pointer).await {
                    tracing::warn!(%error, "cannot delete the stored body of the unsent job");
                }
            }
            bail!("cannot send the job: {}", DisplayErrorContext(error));
        }
    };
    let message_id = output.message_id().unwrap_or_default();
    span.record("messaging.message.id", message_id);
    println!("{message_id}");
    Ok(())
}
