//! `plugworker results`: print results from the results queue (one JSON document per
//! line) and delete each once printed.

use aws_sdk_sqs::error::DisplayErrorContext;
use std::io::Write;

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
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = args.sqs.client().await;
    let mut printed = 0usize;
    let mut stdout = std::io::stdout();
    let mut stop = std::pin::pin!(super::shutdown_signal());
    loop {
        let receive = client
            .receive_message()
            .queue_url(&args.results_queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(if args.follow { 20 } else { 1 })
            .send();
        let output = tokio::select! {
            output = receive => output.map_err(|e| anyhow::anyhow!("cannot receive results: {}", DisplayErrorContext(e)))?,
            () = &mut stop => return Ok(()),
        };
        let messages = output.messages();
        if messages.is_empty() && !args.follow {
            return Ok(());
        }
        for message in messages {
            writeln!(stdout, "{}", message.body().unwrap_or_default())?;
            stdout.flush()?;
            client
                .delete_message()
                .queue_url(&args.results_queue_url)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot delete a printed result: {}", DisplayErrorContext(e))
                })?;
            printed += 1;
            if args.max.is_some_and(|max| printed >= max) {
                return Ok(());
            }
        }
    }
}
