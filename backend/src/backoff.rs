//! Retry policy shared by the services: exponential backoff with jitter and a ceiling.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Retry delays starting at `first`, doubling, each with random jitter, never above `ceiling`,
/// with no limit on attempts: the services wait out an outage instead of giving up.
pub fn forever(first: Duration, ceiling: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(ceiling)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}
