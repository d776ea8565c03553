//! What the controller needs from a job queue and a result destination.
//!
//! SQS in production ([`crate::sqs`]); an in-process queue with the same delivery
//! semantics for `plugworker dev` and benchmarks ([`crate::memory`]). The controller's
//! rules (delete only after the result is out, DLQ for permanent errors, backoff for
//! transient ones) are written once, against these traits.

use async_trait::async_trait;
use plugworker_jobs::{ErrorInfo, JobResult};
use std::time::Duration;

/// Message attribute carrying, on a copy the controller re-queued, the message id of the
/// message the producer sent: results are keyed by it, whichever copy runs.
pub const ORIGINAL_MESSAGE_ID: &str = "plugworker_message_id";
/// Message attribute carrying, on a re-queued copy, what it carries forward ([`Carried`])
/// and the controller's signature over that, the message id and the body:
/// `attempts=N unpublished=M signature=KEY_ID:HMAC`. A producer can set any attribute, so
/// the controller believes only what it signed itself. One attribute, so a copy adds only
/// two to the producer's (SQS allows 10).
pub const COPY: &str = "plugworker_copy";
/// Every attribute the controller writes on a re-queued copy (and the one earlier versions
/// wrote): never carried over from what a producer sent.
pub const OWN_ATTRIBUTES: [&str; 3] = [ORIGINAL_MESSAGE_ID, COPY, "plugworker_attempts"];

/// What a re-queued copy carries forward from the message it replaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    /// Attempts made so far (interruptions are not attempts).
    pub attempts: u32,
    /// Results that could not be published so far.
    pub unpublished: u32,
}

/// A message attribute kept on re-queued and dead-lettered copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    /// `String`, `Number` (or `String.custom`...); binary attributes are not carried.
    pub data_type: String,
    pub value: String,
}

/// A message whose body came from S3 (claim-check, AWS's extended client format).
#[derive(Clone, Debug)]
pub struct Stored {
    pub pointer: plugworker_claim_check::Pointer,
    /// The body as it travelled on the queue (the pointer): re-queued and dead-lettered
    /// copies send it again, so they refer to the same object.
    pub wire_body: String,
}

/// One received message.
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    /// Stable across redeliveries and re-queued copies: the id the producer was given.
    pub message_id: String,
    pub body: String,
    /// Receives of this copy of the message (1 for the first).
    pub receive_count: u32,
    /// Attempts made on earlier copies, which the controller re-queued at shutdown.
    pub prior_attempts: u32,
    /// Results of earlier copies that could not be published.
    pub unpublished: u32,
    /// Opaque handle for acknowledging this delivery.
    pub receipt: String,
    /// W3C `traceparent` message attribute, if the producer set one.
    pub traceparent: Option<String>,
    /// FIFO queues: the message group. Jobs of one group run one at a time, in order, and
    /// their results and DLQ copies go to the same group.
    pub group_id: Option<String>,
    /// The producer's message attributes (other than the controller's own), carried on
    /// re-queued and dead-lettered copies.
    pub attributes: Vec<Attribute>,
    /// Set when the body was fetched from S3.
    pub stored: Option<Stored>,
    /// Set when the body could not be read (a claim-check pointer whose object cannot be
    /// fetched, is too large or is somewhere the controller does not read): the job fails
    /// with this error instead of running.
    pub unreadable: Option<ErrorInfo>,
}

impl Delivery {
    /// Which attempt this is, across re-queued copies (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.prior_attempts.saturating_add(self.receive_count)
    }
}

/// Errors from the queue or the result destination; always worth retrying later.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct QueueError {
    pub operation: &'static str,
    pub message: String,
    /// The receipt is no longer valid (SQS's `ReceiptHandleIsInvalid`,
    /// `MessageNotInflight`): the message was redelivered or deleted, so this delivery
    /// must not publish a result any more.
    pub stale_receipt: bool,
}

impl QueueError {
    pub fn new(operation: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            operation,
            message: plugworker_jobs::text::cap(&message.to_string(), 2000).into_owned(),
            stale_receipt: false,
        }
    }

    /// An error saying the delivery's receipt is no longer valid.
    pub fn stale_receipt(operation: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            stale_receipt: true,
            ..Self::new(operation, message)
        }
    }
}

/// Why a result was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The result itself cannot go on the queue: larger than it accepts. Sending it again
    /// will not help; a smaller result (an error saying so) may.
    #[error(
        "the result is {size} bytes, over the {max} bytes the results queue takes (its MaximumMessageSize less headroom for attributes); configure --payload-bucket to send large results through S3"
    )]
    TooLarge { size: usize, max: usize },
    /// The queue refused this result's content (not its size).
    #[error("the results queue refused the result: {0}")]
    Rejected(QueueError),
    /// The queue could not be reached or refused for a reason that can pass.
    #[error(transparent)]
    Unavailable(QueueError),
}

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Up to `max` messages (long polling: may wait a while, may return none).
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError>;
    /// Deletes the message: its result has been delivered.
    async fn complete(&self, delivery: &Delivery) -> Result<(), QueueError>;
    /// Makes the message visible again after `delay`. The next receive counts towards
    /// the redrive policy's `maxReceiveCount`.
    async fn retry_later(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError>;
    /// The delivery with its body, when that must be fetched first (a claim-check
    /// pointer); `None`: the body is the message's own. Called by the job's own task, with
    /// its visibility kept alive, so a slow fetch delays only this job. A body that cannot
    /// be read comes back with [`Delivery::unreadable`] set.
    async fn load(&self, delivery: &Delivery) -> Option<Delivery> {
        let _ = delivery;
        None
    }
    /// Puts the message back without spending one of its receives, carrying `carried`
    /// forward; it becomes visible after `delay`. On SQS standard queues a copy carrying
    /// the message id and `carried` (signed) is sent and the original deleted (if the copy
    /// cannot be sent, the original is released instead); on FIFO queues (where a copy
    /// would lose its place in its group) this is a release.
    async fn requeue(
        &self,
        delivery: &Delivery,
        carried: Carried,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let _ = carried;
        self.retry_later(delivery, delay).await
    }
    /// Keeps the message invisible for another `visibility` from now (a long run).
    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), QueueError>;
    /// Copies the message to the dead-letter queue with the error that put it there.
    /// `Ok(false)`: there is no dead-letter queue (`--allow-no-dlq`).
    async fn dead_letter(&self, delivery: &Delivery, error: &ErrorInfo)
    -> Result<bool, QueueError>;
    /// How many attempts a job gets before a transient failure is final: the redrive
    /// policy's `maxReceiveCount`.
    fn max_attempts(&self) -> u32;
    /// The visibility timeout of received messages.
    fn visibility_timeout(&self) -> Duration;
    /// Deletes the S3 object of a message whose body was stored there, after the message
    /// is deleted and nothing else (a DLQ copy) refers to it.
    async fn release_payload(&self, delivery: &Delivery) {
        let _ = delivery;
    }
    /// Approximate messages waiting and in flight, where the queue can tell.
    async fn depth(&self) -> Result<Option<QueueDepth>, QueueError> {
        Ok(None)
    }
}

/// Approximate queue depth (SQS's `ApproximateNumberOfMessages[NotVisible]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
}

#[async_trait]
pub trait ResultSink: Send + Sync + 'static {
    /// Delivers the final result of `delivery`; `Ok` means it is safely stored.
    async fn publish(&self, result: &JobResult, delivery: &Delivery) -> Result<(), PublishError>;
}
