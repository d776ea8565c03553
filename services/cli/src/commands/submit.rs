//! `plugworker submit`: put one job on the jobs queue and print its message id.

use anyhow::{Context, bail};
use aws_sdk_sqs::error::DisplayErrorContext;
use base64::Engine;
use std::path::PathBuf;

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
    let output = client
        .send_message()
        .queue_url(&args.jobs_queue_url)
        .message_body(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot send the job: {}", DisplayErrorContext(e)))?;
    println!("{}", output.message_id().unwrap_or_default());
    Ok(())
}
