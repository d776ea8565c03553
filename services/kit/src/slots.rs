//! Bounded concurrency for runs: at most `max_running` at once, at most `max_waiting`
//! queued behind them; anything beyond is refused with `RESOURCE_EXHAUSTED` instead of
//! piling up memory. Draining waits for every slot to come back.
//!
//! A slot is held by the run *and* by every blocking task the run starts
//! ([`RunContext::blocking`](crate::RunContext::blocking)). A deadline answers the caller
//! on time and drops the run's future, but a blocking thread cannot be stopped: if the
//! slot went back with the answer, the next run would start beside work that is still
//! decoding or inferring, and a burst of deadlines would multiply peak memory. So the
//! slot goes back only when the last piece of the run's work has ended.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// One held run slot; clones share it, and it is returned when the last clone drops.
#[derive(Clone)]
pub(crate) struct Slot(Arc<Held>);

struct Held {
    _permit: OwnedSemaphorePermit,
    /// Blocking tasks of the run still holding the slot.
    blocking: AtomicUsize,
    /// When the caller stopped waiting for the run (deadline or cancellation) while
    /// blocking work still held the slot.
    abandoned: OnceLock<(Instant, &'static str)>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        Self(Arc::new(Held {
            _permit: permit,
            blocking: AtomicUsize::new(0),
            abandoned: OnceLock::new(),
        }))
    }

    /// A share of the slot for one blocking task of the run, held until the task ends.
    pub fn blocking_share(&self) -> BlockingShare {
        self.0.blocking.fetch_add(1, Ordering::AcqRel);
        BlockingShare(self.clone())
    }

    /// Records that the caller stopped waiting for the run; if blocking work still holds
    /// the slot, its end will be logged.
    fn abandon(&self, algorithm: &'static str) {
        if self.0.blocking.load(Ordering::Acquire) > 0 {
            let _ = self.0.abandoned.set((Instant::now(), algorithm));
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("blocking", &self.0.blocking.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((answered, algorithm)) = self.abandoned.get() {
            // Worth seeing: every such run kept a slot busy after its caller gave up.
            tracing::warn!(
                algorithm,
                overran_ms = answered.elapsed().as_millis() as u64,
                "blocking work ended after its run's deadline; run slot released"
            );
        }
    }
}

/// A blocking task's share of its run's slot.
pub(crate) struct BlockingShare(Slot);

impl Drop for BlockingShare {
    fn drop(&mut self) {
        self.0.0.blocking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The run's own hold on its slot. Unless [`finish`](Self::finish)ed, its drop (a
/// deadline answered, or the caller cancelling the call, which drops the run's future)
/// marks the run abandoned.
pub(crate) struct RunHold {
    slot: Slot,
    algorithm: &'static str,
    finished: bool,
}

impl RunHold {
    pub fn new(slot: Slot, algorithm: &'static str) -> Self {
        Self {
            slot,
            algorithm,
            finished: false,
        }
    }

    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for RunHold {
    fn drop(&mut self) {
        if !self.finished {
            self.slot.abandon(self.algorithm);
        }
    }
}

pub(crate) struct RunSlots {
    semaphore: Arc<Semaphore>,
    max_running: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl RunSlots {
    pub fn new(max_running: usize, max_waiting: usize) -> Self {
        let max_running = max_running.max(1);
        Self {
            semaphore: Arc::new(Semaphore::new(max_running)),
            max_running,
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A slot, waiting for one if the queue has room, until `deadline` at the latest.
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<Slot, Status> {
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Ok(Slot::new(permit));
        }
        // Boxed: the wait's state (a timer, a place in the semaphore's queue) would
        // otherwise be part of every run's future, which is moved a few times per call,
        // also for the runs that never wait.
        Box::pin(self.wait(deadline)).await
    }

    /// The slow path of [`acquire`](Self::acquire): no slot was free.
    async fn wait(&self, deadline: Option<Instant>) -> Result<Slot, Status> {
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave_queue = scopeguard(|| {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        });
        if queued >= self.max_waiting {
            return Err(Status::resource_exhausted(format!(
                "runner is busy: {} runs in progress and {} queued",
                self.max_running, self.max_waiting
            )));
        }
        let acquire = self.semaphore.clone().acquire_owned();
        let permit = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), acquire)
                .await
                .map_err(|_| {
                    Status::deadline_exceeded("deadline passed while waiting for a run slot")
                })?,
            None => acquire.await,
        };
        permit
            .map(Slot::new)
            .map_err(|_| Status::unavailable("runner is shutting down"))
    }

    /// Waits until every slot is free (all runs finished), for at most `grace`.
    /// Returns whether it drained in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all = self.max_running as u32;
        match tokio::time::timeout(grace, self.semaphore.acquire_many(all)).await {
            Ok(Ok(permits)) => {
                permits.forget();
                self.semaphore.close();
                true
            }
            _ => false,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.max_running - self.semaphore.available_permits()
    }
}

/// Runs `f` when dropped (on every exit path of the waiting code).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_the_queue_and_drains() {
        let slots = Arc::new(RunSlots::new(1, 1));
        let first = slots.acquire(None).await.unwrap();
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(None).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = slots.acquire(None).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let late = slots
            .acquire(Some(Instant::now() + Duration::from_millis(20)))
            .await;
        assert_eq!(
            late.unwrap_err().code(),
            tonic::Code::ResourceExhausted,
            "queue still full"
        );
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(slots.in_flight(), 0);
        assert!(slots.drain(Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn waiting_respects_the_deadline() {
        let slots = RunSlots::new(1, 4);
        let _held = slots.acquire(None).await.unwrap();
        let error = slots
            .acquire(Some(Instant::now() + Duration::from_millis(30)))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::DeadlineExceeded);
        assert!(
            !slots.drain(Duration::from_millis(30)).await,
            "a held slot blocks draining"
        );
    }

    #[tokio::test]
    async fn a_slot_is_returned_when_its_last_holder_ends() {
        let slots = RunSlots::new(1, 0);
        let slot = slots.acquire(None).await.unwrap();
        let held_by_work = slot.blocking_share();
        drop(RunHold::new(slot, "test"));
        assert_eq!(slots.in_flight(), 1, "the work's clone still holds it");
        let refused = slots.acquire(None).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        drop(held_by_work);
        assert_eq!(slots.in_flight(), 0);
        drop(slots.acquire(None).await.unwrap());
    }
}
