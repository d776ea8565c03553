//! Bounded concurrency for runs: at most `max_running` at once, at most `max_waiting`
//! queued behind them; anything beyond is refused with `RESOURCE_EXHAUSTED` instead of
//! piling up memory. Draining waits for every slot to come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

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
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<OwnedSemaphorePermit, Status> {
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
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
        permit.map_err(|_| Status::unavailable("runner is shutting down"))
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
}
