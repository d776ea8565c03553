//! What the controller needs from a job queue and a result destination.
//!
//! SQS in production ([`crate::sqs`]); an in-process queue with the same delivery
//! semantics for `plugworker dev` and benchmarks ([`crate::memory`]). The controller's
//! rules (delete only after the result is out, DLQ for permanent errors, backoff for
//! transient ones) are written once, against these traits.

use async_trait::async_trait;
use plugworker_jobs::{ErrorInfo, JobResult};
use std::time::Duration;

/// One received message.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Stable across redeliveries.
    pub message_id: String,
    pub body: String,
    /// 1 for the first delivery.
    pub receive_count: u32,
    /// Opaque handle for acknowledging this delivery.
    pub receipt: String,
    /// W3C `traceparent` message attribute, if the producer set one.
    pub traceparent: Option<String>,
}

/// Errors from the queue or the result destination; always worth retrying later.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct QueueError {
    pub operation: &'static str,
    pub message: String,
}

impl QueueError {
    pub fn new(operation: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            operation,
            message: message.to_string(),
        }
    }
}

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Up to `max` messages (long polling: may wait a while, may return none).
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError>;
    /// Deletes the message: its result has been delivered.
    async fn complete(&self, delivery: &Delivery) -> Result<(), QueueError>;
    /// Makes the message visible again after `delay`.
    async fn retry_later(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError>;
    /// Keeps the message invisible for another `visibility` from now (a long run).
    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), QueueError>;
    /// Copies the message to the dead-letter queue with the error that put it there.
    async fn dead_letter(&self, delivery: &Delivery, error: &ErrorInfo) -> Result<(), QueueError>;
    /// After how many receives the queue itself dead-letters a message, if it does.
    fn max_receive_count(&self) -> Option<u32>;
    /// The visibility timeout of received messages.
    fn visibility_timeout(&self) -> Duration;
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
    /// Delivers a result; `Ok` means it is safely stored.
    async fn publish(&self, result: &JobResult) -> Result<(), QueueError>;
}
