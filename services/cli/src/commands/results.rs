//! `plugworker results`: print results from the results queue and delete each once
//! printed: a table on a terminal, one JSON document per line otherwise (`--format`).
//!
//! A result too large for the queue arrives as a pointer to S3 in the format of AWS's SQS
//! Extended Client Library (docs/claim-check.md): its body is fetched and printed, and the
//! object deleted after the message (unless `--keep-payloads`).

use crate::output::{Format, ResultWriter, terminal_width};
use anyhow::bail;
use aws_sdk_sqs::error::DisplayErrorContext;
use plugworker_claim_check as claim_check;
use std::io::IsTerminal;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// URL of the results queue.
    #[arg(long, env = "PLUGWORKER_RESULTS_QUEUE_URL")]
    pub results_queue_url: String,
    #[command(flatten)]
    pub sqs: plugworker_controller::SqsArgs,
    /// Keep waiting for new results (until interrupted) instead of stopping when the
    /// queue is empty.
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many results.
    #[arg(long)]
    pub max: Option<usize>,
    /// Keep the S3 objects of results that came through S3 (default: delete each once its
    /// result is printed and deleted). S3 endpoint: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL.
    #[arg(long, env = "PLUGWORKER_KEEP_PAYLOADS")]
    pub keep_payloads: bool,
    /// `table` (job, algorithm, status, ms, one-line result; then a tally), `json` (each
    /// result document as it is on the queue, one per line), or `auto`: the table on a
    /// terminal, JSON when piped.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.sqs.client().await;
    // Reading needs no bucket of our own: a pointer names its bucket.
    let storage = claim_check::ClaimCheck::new(
        claim_check::s3_client(None, args.sqs.region.as_deref()).await,
        claim_check::ClaimCheckConfig {
            bucket: None,
            threshold: claim_check::SQS_MAXIMUM_MESSAGE_SIZE,
            key_prefix: claim_check::DEFAULT_KEY_PREFIX.to_string(),
            delete_after_use: !args.keep_payloads,
        },
    );
    let mut printed = 0usize;
    let mut unreadable = 0usize;
    let stdout = std::io::stdout();
    let table = args.format.is_table(stdout.is_terminal());
    let mut writer = ResultWriter::new(stdout, table.then(terminal_width));
    let mut stop = std::pin::pin!(super::shutdown_signal());
    let finished = |writer: ResultWriter<std::io::Stdout>, unreadable: usize| {
        writer.finish()?;
        if unreadable > 0 {
            bail!("{unreadable} result(s) could not be read and were left on the queue");
        }
        Ok(())
    };
    loop {
        let receive = client
            .receive_message()
            .queue_url(&args.results_queue_url)
            // No more than are still wanted: a received message that is not printed would
            // stay invisible until its visibility timeout.
            .max_number_of_messages(args.max.map_or(10, |max| (max - printed).clamp(1, 10)) as i32)
            .message_attribute_names("All")
            .wait_time_seconds(if args.follow { 20 } else { 1 })
            .send();
        let output = tokio::select! {
            output = receive => output.map_err(|e| anyhow::anyhow!("cannot receive results: {}", DisplayErrorContext(e)))?,
            () = &mut stop => return finished(writer, unreadable),
        };
        let messages = output.messages();
        if messages.is_empty() && !args.follow {
            return finished(writer, unreadable);
        }
        for message in messages {
            let attributes = message.message_attributes().cloned().unwrap_or_default();
            let result = match storage
                .resolve(message.body().unwrap_or_default(), &attributes)
                .await
            {
                Ok(result) => result,
                Err(error) => {
                    // Left on the queue: it reappears after the visibility timeout, and
                    // the results queue's own policy decides its fate.
                    tracing::error!(
                        message_id = message.message_id().unwrap_or_default(),
                        %error,
                        "cannot read a result; it stays on the queue"
                    );
                    unreadable += 1;
                    continue;
                }
            };
            writer.body(&result.body)?;
            client
                .delete_message()
                .queue_url(&args.results_queue_url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot delete a printed result: {}", DisplayErrorContext(e))
                })?;
            // After the message: were the message delete to fail, the result would come
            // back and still need its body.
            if let Some(pointer) = &result.pointer
                && let Err(error) = storage.release(pointer).await
            {
                tracing::warn!(%error, "cannot delete a printed result's body from S3; the bucket's lifecycle rule will");
            }
            printed += 1;
            if args.max.is_some_and(|max| printed >= max) {
                return finished(writer, unreadable);
            }
        }
    }
}
