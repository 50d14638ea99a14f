//! Capped exponential backoff with full jitter.

use std::time::Duration;

/// Reconnect and retry delays: `random(0, min(cap, base * 2^attempt))`, never above `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, jittered; the attempt counter grows.
    pub fn next_delay(&mut self) -> Duration {
        use rand::RngExt as _;
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis.max(1)))
    }

    /// Starts again from `base` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d <= c && d >= c / 2, "{d:?} within jitter of {c:?}");
                u64::try_from(c.as_millis()).expect("ms")
            })
            .collect();
        assert_eq!(&ceilings[..6], &[100, 200, 400, 800, 1600, 3200]);
        assert!(ceilings[6..].iter().all(|&c| c == 5000));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }
}
