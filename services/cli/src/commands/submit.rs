//! `plugworker submit`: put one job on the jobs queue and print its message id.

use anyhow::{Context, bail};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageAttributeValue;
use base64::Engine;
use std::path::PathBuf;
use tracing::Instrument;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["payload", "text", "image_url", "image"])))]
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
    /// Image file, sent inline: the payload {"image_base64": ...}.
    #[arg(long)]
    pub image: Option<PathBuf>,
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

pub async fn run(args: Args) -> anyhow::Result<()> {
    let body = job_body(&args)?;
    let client = args.sqs.client().await;
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
    let mut request = client
        .send_message()
        .queue_url(&args.jobs_queue_url)
        .message_body(body);
    for (name, value) in plugworker_telemetry::propagation::context_headers(&span) {
        let attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .context("trace context attribute")?;
        request = request.message_attributes(name, attribute);
    }
    let output = request
        .send()
        .instrument(span.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot send the job: {}", DisplayErrorContext(e)))?;
    let message_id = output.message_id().unwrap_or_default();
    span.record("messaging.message.id", message_id);
    println!("{message_id}");
    Ok(())
}
