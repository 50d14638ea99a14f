//! Retries with capped, jittered exponential backoff for throttled or failing hub calls.

use std::time::Duration;

use rand::RngExt;

/// How often and how patiently a hub call is retried on HTTP 429, 5xx or transport errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles with every further attempt.
    pub base_delay: Duration,
    /// Longest wait between two attempts, also for a hub's `Retry-After`.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Wait before attempt `attempt + 1` (`attempt` counts from 1), honouring a hub's
    /// `Retry-After` up to the ceiling.
    ///
    /// The exponential step is capped at `max_delay`, then a random share of up to half of
    /// it is taken off, so that many clients throttled together do not retry together.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let step = self
            .base_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        let jittered = step.mul_f64(1.0 - rand::rng().random_range(0.0..0.5));
        match retry_after {
            Some(hint) => hint.min(self.max_delay).max(jittered),
            None => jittered,
        }
    }
}

/// Whether an HTTP status is worth retrying: throttling or a server-side failure.
pub fn is_retryable_status(status: u16) -> bool {
    status == 429 || (500..600).contains(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_and_stays_under_the_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 30,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        };
        for attempt in 1..30 {
            let step = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(Duration::from_secs(2));
            let delay = policy.delay(attempt, None);
            assert!(delay <= step, "attempt {attempt}: {delay:?} > {step:?}");
            assert!(
                delay >= step / 2,
                "attempt {attempt}: {delay:?} < half of {step:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_ceiling() {
        let policy = RetryPolicy::default();
        assert!(policy.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(600))),
            policy.max_delay
        );
    }

    #[test]
    fn throttling_and_server_errors_are_retryable_client_errors_are_not() {
        assert!(is_retryable_status(429));
        assert!(is_retryable_status(503));
        assert!(!is_retryable_status(412));
        assert!(!is_retryable_status(404));
        assert!(!is_retryable_status(400));
    }
}
