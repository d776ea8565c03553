//! Exponential backoff with a cap and jitter.

use rand::Rng;
use std::time::Duration;

/// How long to wait before the `attempt`-th retry: `min × 2^(attempt-1)`, capped at
/// `max`, of which a random fraction (up to `jitter`) is taken off.
///
/// Why each part:
///
/// - **Exponential**: a dependency that failed once may be briefly busy; one that keeps
///   failing is down or overloaded, and retrying it at a steady rate only adds load
///   where there is already too much. Doubling keeps the first retries quick and the
///   later ones rare.
/// - **Capped**: without a ceiling, a long outage pushes the next try hours out, and the
///   caller stays idle long after the dependency is back. `max` bounds the time between
///   the recovery and the first retry that sees it.
/// - **Jittered**: many clients that failed at the same moment (every runner when Consul
///   restarts, every job of a batch when a runner dies) would otherwise retry at the same
///   moments too, in waves that knock the recovering dependency over again. Taking a
///   random part off each delay spreads them out. Jitter only ever shortens the delay,
///   so `max` really is the longest wait.
///
/// ```
/// # use plugworker_lifecycle::Backoff;
/// # use std::time::Duration;
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
/// let first = backoff.delay(1); // between 50 and 100 ms
/// assert!(first <= Duration::from_millis(100) && first >= Duration::from_millis(50));
/// assert!(backoff.delay(40) <= Duration::from_secs(10));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The ceiling of the first retry's delay.
    pub min: Duration,
    /// The longest delay, whatever the attempt.
    pub max: Duration,
    /// The largest fraction of a delay taken off at random, from 0 (none: every client
    /// waits exactly the same) to 1 ("full jitter": anywhere between zero and the
    /// ceiling).
    pub jitter: f64,
}

impl Backoff {
    /// Half of each delay is random ([`DEFAULT_JITTER`](Self::DEFAULT_JITTER)): enough to
    /// spread clients apart while keeping every delay at least half its ceiling.
    pub const DEFAULT_JITTER: f64 = 0.5;

    /// From `min` (the first retry's ceiling) doubling up to `max`, with the default
    /// jitter. A `max` below `min` is taken as `min`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            jitter: Self::DEFAULT_JITTER,
        }
    }

    /// The same backoff with another jitter fraction (clamped to 0..=1).
    pub const fn with_jitter(self, jitter: f64) -> Self {
        Self { jitter, ..self }
    }

    /// The same backoff with another cap.
    pub const fn with_max(self, max: Duration) -> Self {
        Self { max, ..self }
    }

    /// The delay before the longest it may be: `min × 2^(attempt-1)` capped at `max`.
    /// Attempts count from 1 (the first retry); 0 is taken as 1.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^30 × any useful `min` is past any useful `max`; the bound keeps the shift
        // defined and `saturating_mul` keeps the product from overflowing.
        let exponent = attempt.saturating_sub(1).min(30);
        self.min
            .saturating_mul(1u32 << exponent)
            .min(self.max.max(self.min))
    }

    /// The delay before the `attempt`-th retry (counting from 1), jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.jittered(attempt, rand::rng().random::<f64>())
    }

    /// The delay for a given draw `random` in `0..1`: the ceiling, less up to `jitter` of
    /// it.
    fn jittered(&self, attempt: u32, random: f64) -> Duration {
        let jitter = self.jitter.clamp(0.0, 1.0);
        self.ceiling(attempt)
            .mul_f64(1.0 - jitter * random.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_from_min_and_stops_at_max() {
        let backoff = Backoff::new(100 * MS, 2000 * MS);
        let ceilings: Vec<_> = (0..=7).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [100, 100, 200, 400, 800, 1600, 2000, 2000].map(|ms| ms * MS)
        );
        assert_eq!(
            backoff.ceiling(u32::MAX),
            2000 * MS,
            "no overflow, still capped"
        );
        let inverted = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(
            inverted.ceiling(9),
            Duration::from_secs(5),
            "max below min is min"
        );
    }

    #[test]
    fn jitter_only_shortens_and_by_at_most_its_fraction() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(backoff.jittered(3, 0.0), Duration::from_secs(4));
        assert_eq!(
            backoff.jittered(3, 1.0),
            Duration::from_secs(2),
            "half off at most"
        );
        let full = backoff.with_jitter(1.0);
        assert_eq!(full.jittered(3, 1.0), Duration::ZERO);
        let none = backoff.with_jitter(0.0);
        assert_eq!(none.delay(3), Duration::from_secs(4), "no jitter: exact");
        for attempt in 1..20 {
            let delay = backoff.delay(attempt);
            let ceiling = backoff.ceiling(attempt);
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{attempt}: {delay:?}"
            );
        }
    }

    #[test]
    fn clients_that_failed_together_do_not_retry_together() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: std::collections::HashSet<_> = (0..100).map(|_| backoff.delay(4)).collect();
        // 100 draws from a continuous range: equal values would mean no jitter at all.
        assert!(delays.len() > 90, "{} distinct delays of 100", delays.len());
    }
}
