//! Amazon SQS as the job queue and the results destination (`aws-sdk-sqs`).
//!
//! Deletes are batched (`DeleteMessageBatch`, up to 10 per call, flushed every 20 ms), and
//! each caller waits for, and learns, the outcome of its own delete.

use crate::queue::{Delivery, JobQueue, QueueDepth, QueueError, ResultSink};
use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName,
};
use plugworker_jobs::{ErrorInfo, JobResult};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// SQS's ceiling for a visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// Builds an SQS client from the standard AWS configuration chain, with an optional
/// endpoint override for local emulators.
pub async fn client(endpoint: Option<&str>, region: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_string()));
    }
    let shared = loader.load().await;
    let mut config = aws_sdk_sqs::config::Builder::from(&shared);
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

fn sdk_error(operation: &'static str, error: impl std::error::Error) -> QueueError {
    QueueError::new(operation, DisplayErrorContext(error))
}

fn seconds(duration: Duration) -> i32 {
    duration.min(MAX_VISIBILITY).as_secs() as i32
}

/// The jobs queue, with its dead-letter queue.
pub struct SqsJobQueue {
    client: Client,
    queue_url: String,
    dlq_url: String,
    wait: Duration,
    visibility: Duration,
    max_receive_count: Option<u32>,
    deletes: mpsc::Sender<(String, oneshot::Sender<Result<(), QueueError>>)>,
    batcher: tokio::task::JoinHandle<()>,
}

impl SqsJobQueue {
    /// Connects to the queue and reads its visibility timeout and redrive policy. The DLQ
    /// is `dlq_url` if given, else the redrive policy's target.
    pub async fn connect(
        client: Client,
        queue_url: String,
        dlq_url: Option<String>,
        wait: Duration,
        visibility_override: Option<Duration>,
    ) -> Result<Self, QueueError> {
        let attributes = client
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))?;
        let attributes = attributes.attributes().cloned().unwrap_or_default();
        let visibility = attributes
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(30));
        let redrive: Option<serde_json::Value> = attributes
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|p| serde_json::from_str(p).ok());
        let max_receive_count = redrive.as_ref().and_then(|p| match &p["maxReceiveCount"] {
            serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        });
        let dlq_url = match dlq_url {
            Some(url) => url,
            None => {
                let arn = redrive
                    .as_ref()
                    .and_then(|p| p["deadLetterTargetArn"].as_str())
                    .ok_or_else(|| {
                        QueueError::new(
                            "configuration",
                            "the jobs queue has no redrive policy; pass the dead-letter queue URL",
                        )
                    })?;
                let name = arn.rsplit(':').next().unwrap_or(arn);
                client
                    .get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .map_err(|e| sdk_error("GetQueueUrl", e))?
                    .queue_url()
                    .unwrap_or_default()
                    .to_string()
            }
        };
        let (deletes, receiver) = mpsc::channel(1024);
        let batcher = tokio::spawn(delete_batches(client.clone(), queue_url.clone(), receiver));
        Ok(Self {
            client,
            queue_url,
            dlq_url,
            wait,
            visibility: visibility_override.unwrap_or(visibility),
            max_receive_count,
            deletes,
            batcher,
        })
    }

    pub fn dlq_url(&self) -> &str {
        &self.dlq_url
    }
}

impl Drop for SqsJobQueue {
    fn drop(&mut self) {
        self.batcher.abort();
    }
}

#[async_trait]
impl JobQueue for SqsJobQueue {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(self.wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| sdk_error("ReceiveMessage", e))?;
        Ok(output
            .messages()
            .iter()
            .map(|m| Delivery {
                message_id: m.message_id().unwrap_or_default().to_string(),
                body: m.body().unwrap_or_default().to_string(),
                receive_count: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1),
                receipt: m.receipt_handle().unwrap_or_default().to_string(),
                traceparent: m
                    .message_attributes()
                    .and_then(|a| a.get("traceparent"))
                    .and_then(|v| v.string_value())
                    .map(str::to_owned),
            })
            .collect())
    }

    async fn complete(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let (reply, outcome) = oneshot::channel();
        self.deletes
            .send((delivery.receipt.clone(), reply))
            .await
            .map_err(|_| QueueError::new("DeleteMessage", "delete batcher stopped"))?;
        outcome
            .await
            .map_err(|_| QueueError::new("DeleteMessage", "delete batcher stopped"))?
    }

    async fn retry_later(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(&delivery.receipt)
            .visibility_timeout(seconds(delay))
            .send()
            .await
            .map_err(|e| sdk_error("ChangeMessageVisibility", e))?;
        Ok(())
    }

    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), QueueError> {
        self.retry_later(delivery, visibility).await
    }

    async fn dead_letter(&self, delivery: &Delivery, error: &ErrorInfo) -> Result<(), QueueError> {
        let attribute = |value: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(if value.is_empty() { "-" } else { value })
                .build()
                .map_err(|e| QueueError::new("SendMessage", e))
        };
        let message: String = error.message.chars().take(1000).collect();
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(&delivery.body)
            .message_attributes("plugworker_error_code", attribute(&error.code)?)
            .message_attributes("plugworker_error_message", attribute(&message)?)
            .message_attributes(
                "plugworker_original_message_id",
                attribute(&delivery.message_id)?,
            )
            .send()
            .await
            .map_err(|e| sdk_error("SendMessage (dead-letter queue)", e))?;
        Ok(())
    }

    fn max_receive_count(&self) -> Option<u32> {
        self.max_receive_count
    }

    fn visibility_timeout(&self) -> Duration {
        self.visibility
    }

    async fn depth(&self) -> Result<Option<QueueDepth>, QueueError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))?;
        let get = |name: QueueAttributeName| {
            output
                .attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Some(QueueDepth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        }))
    }
}

type PendingDelete = (String, oneshot::Sender<Result<(), QueueError>>);

async fn delete_batches(
    client: Client,
    queue_url: String,
    mut receiver: mpsc::Receiver<PendingDelete>,
) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        while batch.len() < 10 {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(next)) => batch.push(next),
                _ => break,
            }
        }
        let entries: Vec<_> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, (receipt, _))| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .ok()
            })
            .collect();
        let result = client
            .delete_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(output) => {
                let failed: std::collections::HashMap<String, String> = output
                    .failed()
                    .iter()
                    .map(|f| {
                        (
                            f.id().to_string(),
                            f.message().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
                for (i, (_, reply)) in batch.into_iter().enumerate() {
                    let outcome = match failed.get(&i.to_string()) {
                        Some(message) => Err(QueueError::new("DeleteMessageBatch", message)),
                        None => Ok(()),
                    };
                    let _ = reply.send(outcome);
                }
            }
            Err(error) => {
                let message = DisplayErrorContext(error).to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(QueueError::new("DeleteMessageBatch", &message)));
                }
            }
        }
    }
}

/// The results queue.
pub struct SqsResults {
    client: Client,
    queue_url: String,
}

impl SqsResults {
    pub fn new(client: Client, queue_url: String) -> Self {
        Self { client, queue_url }
    }
}

#[async_trait]
impl ResultSink for SqsResults {
    async fn publish(&self, result: &JobResult) -> Result<(), QueueError> {
        let body =
            serde_json::to_string(result).map_err(|e| QueueError::new("serialise result", e))?;
        let attribute = |value: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| QueueError::new("SendMessage", e))
        };
        let status = match result.status {
            plugworker_jobs::Status::Ok => "ok",
            plugworker_jobs::Status::Error => "error",
        };
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .message_attributes("status", attribute(status)?)
            .message_attributes("message_id", attribute(&result.message_id)?);
        if let Some(algorithm) = result.algorithm.as_deref().filter(|a| !a.is_empty()) {
            request = request.message_attributes("algorithm", attribute(algorithm)?);
        }
        request
            .send()
            .await
            .map_err(|e| sdk_error("SendMessage (results queue)", e))?;
        Ok(())
    }
}
