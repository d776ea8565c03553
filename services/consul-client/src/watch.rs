//! [`Watch`]: a Consul blocking-query loop, implemented as Consul's documentation asks
//! ("Blocking Queries: Implementation Details").
//!
//! - Pass the last `X-Consul-Index` back; Consul holds the request until something changes
//!   or `wait` runs out, and answers with the same index on a timeout, which is not a change.
//! - Sanity-check the index: one of 0 is treated as 1, so the next request really blocks.
//! - If the index goes backwards (a Consul restart, a snapshot restore), reset to 0 so the
//!   next read starts afresh.
//! - Rate-limit the loop with a token bucket: a few requests go out at once, then at most
//!   one per interval. In the happy case (changes seconds apart, or a request held for the
//!   whole `wait`) nothing waits; an agent or proxy that answers at once with the same
//!   index, or a view that churns, degrades to polling instead of a busy loop.
//! - After an error, back off exponentially with jitter before the next request, so many
//!   watchers do not hammer a recovering agent in lock-step ([`Backoff`]).

use crate::client::{Error, QueryMeta, QueryOptions};
use plugworker_lifecycle::Backoff;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Requests a watch may send at once before the rate limit applies.
pub const DEFAULT_BURST: u32 = 4;
/// Sustained request rate of a watch whose answers come back at once: one per interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Delay after a failed request: from 100 ms up to 10 s.
const ERROR_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// Keeps the index, rate limit and backoff state of one blocking query.
#[derive(Debug)]
pub struct Watch {
    index: u64,
    wait: Duration,
    consecutive_errors: u32,
    limit: RateLimit,
}

impl Watch {
    /// A watch whose requests Consul may hold for up to `wait`.
    pub fn new(wait: Duration) -> Self {
        Self {
            index: 0,
            wait,
            consecutive_errors: 0,
            limit: RateLimit::new(DEFAULT_BURST, DEFAULT_INTERVAL),
        }
    }

    /// Overrides the rate limit: `burst` requests at once, then one per `interval`
    /// (defaults: [`DEFAULT_BURST`], [`DEFAULT_INTERVAL`]). A zero interval disables it.
    pub fn with_rate_limit(mut self, burst: u32, interval: Duration) -> Self {
        self.limit = RateLimit::new(burst, interval);
        self
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
            self.limit.acquire().await;
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
                    tokio::time::sleep(ERROR_BACKOFF.delay(self.consecutive_errors)).await;
                    return Err(error);
                }
            }
        }
    }
}

/// A token bucket: `burst` tokens, one more every `interval`; a request takes one.
#[derive(Debug)]
struct RateLimit {
    burst: f64,
    interval: Duration,
    tokens: f64,
    updated: Instant,
}

impl RateLimit {
    fn new(burst: u32, interval: Duration) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            burst,
            interval,
            tokens: burst,
            updated: Instant::now(),
        }
    }

    async fn acquire(&mut self) {
        if self.interval.is_zero() {
            return;
        }
        self.refill();
        if self.tokens < 1.0 {
            let wait = self.interval.mul_f64(1.0 - self.tokens);
            tracing::debug!(
                ?wait,
                "Consul answers come back faster than the watch rate limit; waiting"
            );
            tokio::time::sleep(wait).await;
            self.refill();
        }
        self.tokens = (self.tokens - 1.0).max(0.0);
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.updated).as_secs_f64() / self.interval.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.burst);
        self.updated = now;
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
        assert_eq!(watch.index, 0, "a backwards index resets the watch");
        assert_eq!(*seen.borrow(), vec![0, 5, 5, 7]);
    }

    #[tokio::test]
    async fn zero_index_is_treated_as_one() {
        let mut watch = Watch::new(Duration::from_secs(1));
        let value = watch.next(|_| async { reply(0, 9) }).await.unwrap();
        assert_eq!(value, 9);
        assert_eq!(watch.index, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_index_at_once_degrades_to_polling_not_a_busy_loop() {
        // An agent (or proxy) that answers every blocking query at once with the same index.
        let requests = std::cell::Cell::new(0u32);
        let mut watch = Watch::new(Duration::from_secs(300));
        let ask = |_: QueryOptions| {
            requests.set(requests.get() + 1);
            async { reply(42, 1) }
        };
        assert_eq!(watch.next(ask).await.unwrap(), 1);
        // The clock is paused: it jumps over every rate-limit sleep, so this measures the
        // loop's request count over 60 s of Consul time without taking 60 s.
        let window = Duration::from_secs(60);
        let outcome = tokio::time::timeout(window, watch.next(ask)).await;
        assert!(outcome.is_err(), "nothing changed, so nothing is returned");
        let sent = requests.get();
        let most =
            DEFAULT_BURST + (window.as_secs_f64() / DEFAULT_INTERVAL.as_secs_f64()) as u32 + 1;
        assert!(
            (60..=most).contains(&sent),
            "{sent} requests in {window:?}: expected about one per {DEFAULT_INTERVAL:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changes_within_the_burst_are_not_delayed() {
        let start = Instant::now();
        let mut watch = Watch::new(Duration::from_secs(300));
        for expected in 1..=DEFAULT_BURST {
            // Each answer carries a new index: a change.
            let index = u64::from(expected);
            let value = watch.next(|_| async move { reply(index, expected) }).await;
            assert_eq!(value.unwrap(), expected);
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "the happy path never waits"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_is_returned_after_its_backoff_and_a_success_resets_it() {
        let mut watch = Watch::new(Duration::from_secs(300));
        let failing = || async {
            Err::<(u32, QueryMeta), _>(Error::InvalidAddress {
                address: "x".into(),
                reason: "test".into(),
            })
        };
        for attempt in 1..=3 {
            let start = Instant::now();
            assert!(watch.next(|_| failing()).await.is_err());
            let waited = start.elapsed();
            let ceiling = ERROR_BACKOFF.ceiling(attempt);
            assert!(
                waited <= ceiling && waited >= ceiling / 2,
                "error {attempt}: waited {waited:?}, ceiling {ceiling:?}"
            );
        }
        assert_eq!(watch.next(|_| async { reply(1, 7) }).await.unwrap(), 7);
        assert_eq!(watch.consecutive_errors, 0, "a success ends the streak");
    }
}
