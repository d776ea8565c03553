//! An in-process job queue with SQS's delivery semantics (visibility timeout, receive
//! counts, redrive to a dead-letter list after `max_receive_count`), and a channel as the
//! result destination. It backs `plugworker dev` (jobs from a file, no AWS) and the
//! controller benchmark, so both exercise the exact controller code SQS does.

use crate::queue::{Carried, Delivery, JobQueue, PublishError, QueueError, ResultSink};
use async_trait::async_trait;
use plugworker_jobs::{ErrorInfo, JobResult};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

struct Message {
    body: String,
    receives: u32,
    /// Attempts made before the last re-queue (which resets `receives`, as a new SQS
    /// copy would).
    prior_attempts: u32,
    /// Results that could not be published before the last re-queue.
    unpublished: u32,
    visible_at: Instant,
    receipt: String,
}

/// A message that ended in the dead-letter list, with the error that put it there
/// (`None` when the queue's redrive moved it after too many receives).
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: String,
    pub error: Option<ErrorInfo>,
}

pub struct MemoryQueue {
    /// By sequence number, so receives go oldest first and acknowledgements are O(log n).
    messages: Mutex<BTreeMap<u64, Message>>,
    dead: Mutex<Vec<DeadLetter>>,
    changed: Notify,
    wait: Duration,
    visibility: Duration,
    max_receive_count: u32,
    next_id: Mutex<u64>,
}

impl MemoryQueue {
    pub fn new(wait: Duration, visibility: Duration, max_receive_count: u32) -> Self {
        Self {
            messages: Mutex::new(BTreeMap::new()),
            dead: Mutex::new(Vec::new()),
            changed: Notify::new(),
            wait,
            visibility,
            max_receive_count,
            next_id: Mutex::new(0),
        }
    }

    /// Enqueues a message body; returns its message id.
    pub fn send(&self, body: impl Into<String>) -> String {
        let seq = {
            let mut next = lock(&self.next_id);
            *next += 1;
            *next
        };
        lock(&self.messages).insert(
            seq,
            Message {
                body: body.into(),
                receives: 0,
                prior_attempts: 0,
                unpublished: 0,
                visible_at: Instant::now(),
                receipt: String::new(),
            },
        );
        self.changed.notify_waiters();
        message_id(seq)
    }

    /// Messages not yet deleted (visible or in flight).
    pub fn len(&self) -> usize {
        lock(&self.messages).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        lock(&self.dead).clone()
    }

    fn take_visible(&self, max: usize) -> Vec<Delivery> {
        let now = Instant::now();
        let mut messages = lock(&self.messages);
        let mut deliveries = Vec::new();
        let mut redriven = Vec::new();
        for (seq, message) in messages.iter_mut() {
            if deliveries.len() >= max {
                break;
            }
            if message.visible_at > now {
                continue;
            }
            if message.receives >= self.max_receive_count {
                redriven.push(*seq);
                continue;
            }
            message.receives += 1;
            message.visible_at = now + self.visibility;
            message.receipt = format!("{seq}#{}", message.receives);
            deliveries.push(Delivery {
                message_id: message_id(*seq),
                body: message.body.clone(),
                receive_count: message.receives,
                prior_attempts: message.prior_attempts,
                unpublished: message.unpublished,
                receipt: message.receipt.clone(),
                ..Delivery::default()
            });
        }
        for seq in redriven {
            if let Some(message) = messages.remove(&seq) {
                lock(&self.dead).push(DeadLetter {
                    message_id: message_id(seq),
                    body: message.body,
                    error: None,
                });
            }
        }
        deliveries
    }

    /// Runs `f` on the message if `delivery` is its current receipt.
    fn with_current<T>(
        &self,
        delivery: &Delivery,
        f: impl FnOnce(&mut BTreeMap<u64, Message>, u64) -> T,
    ) -> Option<T> {
        let seq: u64 = delivery.receipt.split('#').next()?.parse().ok()?;
        let mut messages = lock(&self.messages);
        if messages.get(&seq)?.receipt != delivery.receipt {
            return None;
        }
        Some(f(&mut messages, seq))
    }
}

fn message_id(seq: u64) -> String {
    format!("local-{seq:06}")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn stale(operation: &'static str) -> QueueError {
    QueueError::stale_receipt(
        operation,
        "the receipt is no longer current (the message was redelivered or deleted)",
    )
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + self.wait;
        loop {
            let notified = self.changed.notified();
            let deliveries = self.take_visible(max.max(1));
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            let next_visible = lock(&self.messages).values().map(|m| m.visible_at).min();
            let wake = next_visible.map_or(deadline, |t| t.min(deadline));
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn complete(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.with_current(delivery, |messages, seq| {
            messages.remove(&seq);
        })
        .ok_or_else(|| stale("DeleteMessage"))?;
        self.changed.notify_waiters();
        Ok(())
    }

    async fn retry_later(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        self.with_current(delivery, |messages, seq| {
            if let Some(message) = messages.get_mut(&seq) {
                message.visible_at = Instant::now() + delay;
            }
        })
        .ok_or_else(|| stale("ChangeMessageVisibility"))?;
        self.changed.notify_waiters();
        Ok(())
    }

    async fn requeue(
        &self,
        delivery: &Delivery,
        carried: Carried,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.with_current(delivery, |messages, seq| {
            if let Some(message) = messages.get_mut(&seq) {
                // As a fresh SQS copy carrying the attempts: its receives start over.
                message.prior_attempts = carried.attempts;
                message.unpublished = carried.unpublished;
                message.receives = 0;
                message.receipt = String::new();
                message.visible_at = Instant::now() + delay;
            }
        })
        .ok_or_else(|| stale("SendMessage (re-queue)"))?;
        self.changed.notify_waiters();
        Ok(())
    }

    async fn extend(&self, delivery: &Delivery, visibility: Duration) -> Result<(), QueueError> {
        self.retry_later(delivery, visibility).await
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        error: &ErrorInfo,
    ) -> Result<bool, QueueError> {
        lock(&self.dead).push(DeadLetter {
            message_id: delivery.message_id.clone(),
            body: delivery.body.clone(),
            error: Some(error.clone()),
        });
        Ok(true)
    }

    fn max_attempts(&self) -> u32 {
        self.max_receive_count
    }

    fn visibility_timeout(&self) -> Duration {
        self.visibility
    }
}

/// Results go into a channel.
pub struct ChannelSink(pub mpsc::UnboundedSender<JobResult>);

#[async_trait]
impl ResultSink for ChannelSink {
    async fn publish(&self, result: &JobResult, _: &Delivery) -> Result<(), PublishError> {
        self.0.send(result.clone()).map_err(|_| {
            PublishError::Unavailable(QueueError::new("publish", "the result reader is gone"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redelivers_after_the_visibility_timeout_and_redrives_after_max_receives() {
        let queue = MemoryQueue::new(Duration::from_millis(200), Duration::from_millis(50), 2);
        let id = queue.send("job");
        let first = queue.receive(10).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].receive_count, 1);
        let second = queue.receive(10).await.unwrap();
        assert_eq!(
            second[0].receive_count, 2,
            "redelivered after the visibility timeout"
        );
        assert!(
            queue.complete(&first[0]).await.is_err(),
            "an old receipt is stale"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(queue.receive(10).await.unwrap().is_empty());
        assert_eq!(queue.dead_letters()[0].message_id, id);
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn completed_messages_are_gone() {
        let queue = MemoryQueue::new(Duration::from_millis(50), Duration::from_secs(30), 5);
        queue.send("a");
        let delivery = queue.receive(1).await.unwrap().remove(0);
        queue.complete(&delivery).await.unwrap();
        assert!(queue.is_empty());
        assert!(queue.receive(1).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_requeued_message_keeps_its_id_and_attempts_and_spends_no_receive() {
        let queue = MemoryQueue::new(Duration::from_millis(50), Duration::from_secs(30), 2);
        let id = queue.send("a");
        for _ in 0..5 {
            let delivery = queue.receive(1).await.unwrap().remove(0);
            assert_eq!(delivery.message_id, id);
            assert_eq!(delivery.attempt(), 1, "interruptions are not attempts");
            queue
                .requeue(&delivery, Carried::default(), Duration::ZERO)
                .await
                .unwrap();
        }
        assert!(queue.dead_letters().is_empty());
        let delivery = queue.receive(1).await.unwrap().remove(0);
        let carried = Carried {
            attempts: 1,
            unpublished: 3,
        };
        queue
            .requeue(&delivery, carried, Duration::ZERO)
            .await
            .unwrap();
        let copy = queue.receive(1).await.unwrap().remove(0);
        assert_eq!((copy.attempt(), copy.unpublished), (2, 3));
    }
}
