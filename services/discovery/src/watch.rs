//! [`Watch`]: a Consul blocking-query loop, implemented as Consul's documentation asks.
//!
//! - Pass the last `X-Consul-Index` back; Consul holds the request until something changes
//!   or `wait` runs out, and answers with the same index on a timeout, which is not a change.
//! - An index of 0 is treated as 1 (Consul: "sanity check the index is greater than zero").
//! - If the index goes backwards (a Consul restart, a snapshot restore), reset to 0 so the
//!   next read starts afresh.
//! - After an error, back off exponentially with jitter before the next request, so many
//!   watchers do not hammer a recovering agent in lock-step.

use crate::client::{Error, QueryMeta, QueryOptions};
use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// Keeps the index and backoff state of one blocking query.
#[derive(Debug)]
pub struct Watch {
    index: u64,
    wait: Duration,
    consecutive_errors: u32,
    min_backoff: Duration,
    max_backoff: Duration,
}

impl Watch {
    /// A watch whose requests Consul may hold for up to `wait`.
    pub fn new(wait: Duration) -> Self {
        Self {
            index: 0,
            wait,
            consecutive_errors: 0,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }

    /// Overrides the error backoff bounds (defaults: 100 ms to 10 s).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// The index of the last result returned.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Waits for the next result that differs from the last one returned (the first call
    /// returns the current state at once). Returns the error of a failed request after
    /// sleeping the backoff it earned, so callers can log it and keep their last view.
    pub async fn next<T, F, Fut>(&mut self, mut query: F) -> Result<T, Error>
    where
        F: FnMut(QueryOptions) -> Fut,
        Fut: Future<Output = Result<(T, QueryMeta), Error>>,
    {
        loop {
            let options = QueryOptions {
                index: self.index,
                wait: Some(self.wait),
            };
            match query(options).await {
                Ok((value, meta)) => {
                    self.consecutive_errors = 0;
                    let index = meta.last_index.max(1);
                    if index == self.index {
                        continue; // the wait ran out with nothing new
                    }
                    self.index = if index < self.index {
                        tracing::debug!(
                            old = self.index,
                            new = index,
                            "Consul index went backwards; resetting"
                        );
                        0
                    } else {
                        index
                    };
                    return Ok(value);
                }
                Err(error) => {
                    self.consecutive_errors = self.consecutive_errors.saturating_add(1);
                    tokio::time::sleep(self.backoff()).await;
                    return Err(error);
                }
            }
        }
    }

    /// Full-jitter exponential backoff for the current error streak.
    fn backoff(&self) -> Duration {
        let exponent = self.consecutive_errors.saturating_sub(1).min(16);
        let ceiling = self
            .min_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff);
        let jittered = rand::rng().random_range(ceiling / 2..=ceiling);
        jittered.max(self.min_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn reply(index: u64, value: u32) -> Result<(u32, QueryMeta), Error> {
        Ok((
            value,
            QueryMeta {
                last_index: index,
                known_leader: true,
            },
        ))
    }

    #[tokio::test]
    async fn skips_timeouts_and_resets_when_the_index_goes_backwards() {
        let replies = RefCell::new(vec![reply(5, 1), reply(5, 1), reply(7, 2), reply(3, 3)]);
        let seen = RefCell::new(Vec::new());
        let mut watch = Watch::new(Duration::from_secs(1));
        let mut ask = |options: QueryOptions| {
            seen.borrow_mut().push(options.index);
            let next = replies.borrow_mut().remove(0);
            async move { next }
        };
        assert_eq!(watch.next(&mut ask).await.unwrap(), 1);
        assert_eq!(watch.next(&mut ask).await.unwrap(), 2); // the repeated index 5 was skipped
        assert_eq!(watch.next(&mut ask).await.unwrap(), 3);
        assert_eq!(watch.index(), 0, "a backwards index resets the watch");
        assert_eq!(*seen.borrow(), vec![0, 5, 5, 7]);
    }

    #[tokio::test]
    async fn zero_index_is_treated_as_one() {
        let mut watch = Watch::new(Duration::from_secs(1));
        let value = watch.next(|_| async { reply(0, 9) }).await.unwrap();
        assert_eq!(value, 9);
        assert_eq!(watch.index(), 1);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut watch = Watch::new(Duration::from_secs(1))
            .with_backoff(Duration::from_millis(100), Duration::from_secs(2));
        watch.consecutive_errors = 1;
        let first = watch.backoff();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(100));
        watch.consecutive_errors = 4;
        let fourth = watch.backoff();
        assert!(fourth >= Duration::from_millis(400) && fourth <= Duration::from_millis(800));
        watch.consecutive_errors = 30;
        let capped = watch.backoff();
        assert!(capped >= Duration::from_secs(1) && capped <= Duration::from_secs(2));
    }
}
