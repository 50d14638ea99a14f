//! The maximum delivery count of C2D messages: how many times each queued message went out,
//! and the removal of a message that went out the maximum number of times without being
//! acknowledged, as Azure IoT Hub dead-letters it.
//!
//! Counts live in memory only. A hub restart starts them from zero, so a message a device
//! never acknowledges can go out the maximum number of times again after each restart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::{Core, lock};
use crate::error::HubError;

/// Publishes of queued C2D messages by device and queue sequence number, and how many
/// messages were dead-lettered since the hub started.
#[derive(Debug, Default)]
pub(crate) struct DeliveryCounts {
    by_device: Mutex<HashMap<String, HashMap<u64, u32>>>,
    dead_lettered: AtomicU64,
}

/// Whether a queued message may go out once more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Publish it: it has not reached the maximum.
    Deliver,
    /// It went out this many times, the maximum, without being acknowledged.
    Exhausted(u32),
}

impl DeliveryCounts {
    /// Counts one more delivery of message `seq`, unless it went out `max` times already.
    fn attempt(&self, device: &str, seq: u64, max: u32) -> Attempt {
        let mut by_device = lock(&self.by_device);
        let count = by_device
            .entry(device.to_owned())
            .or_default()
            .entry(seq)
            .or_insert(0);
        if *count >= max {
            return Attempt::Exhausted(*count);
        }
        *count += 1;
        Attempt::Deliver
    }

    /// Forgets the count of message `seq`: it was completed, expired or dead-lettered.
    fn forget(&self, device: &str, seq: u64) {
        self.retain(device, |queued| queued != seq);
    }

    /// Forgets every count of a device whose queue was purged.
    fn forget_device(&self, device: &str) {
        lock(&self.by_device).remove(device);
    }

    /// Keeps the counts of the messages `keep` accepts and drops the device's entry once it
    /// holds none.
    fn retain(&self, device: &str, mut keep: impl FnMut(u64) -> bool) {
        let mut by_device = lock(&self.by_device);
        if let Some(counts) = by_device.get_mut(device) {
            counts.retain(|&seq, _| keep(seq));
            if counts.is_empty() {
                by_device.remove(device);
            }
        }
    }
}

impl Core {
    /// Counts a delivery of queued message `seq` before it is published, or tells that it
    /// already went out the maximum number of times.
    pub(crate) fn c2d_attempt(&self, id: &str, seq: u64) -> Attempt {
        let max = self.config.c2d_max_delivery_count.get();
        self.deliveries.attempt(id, seq, max)
    }

    /// Forgets the delivery count of a message that left the queue or expired.
    pub(crate) fn c2d_forget(&self, id: &str, seq: u64) {
        self.deliveries.forget(id, seq);
    }

    /// Forgets the delivery counts of a device whose queue was purged.
    pub(crate) fn c2d_forget_device(&self, id: &str) {
        self.deliveries.forget_device(id);
    }

    /// Drops the delivery counts of a device's messages that are no longer queued; `queued`
    /// holds the sequence numbers of its whole unexpired queue. Keeps the counts bounded by
    /// the queues however messages leave them.
    pub(crate) fn c2d_prune(&self, id: &str, queued: &[u64]) {
        self.deliveries.retain(id, |seq| queued.contains(&seq));
    }

    /// Removes a message that went out `deliveries` times, the maximum, without being
    /// acknowledged. The device never sees it again.
    pub(crate) async fn c2d_dead_letter(
        &self,
        id: &str,
        seq: u64,
        message_id: &str,
        deliveries: u32,
    ) -> Result<(), HubError> {
        if self.c2d_complete(id, seq).await? {
            self.deliveries
                .dead_lettered
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                device = id,
                seq,
                message_id,
                deliveries,
                "C2D message dead-lettered: delivered the maximum number of times unacknowledged"
            );
        }
        Ok(())
    }

    /// C2D messages dead-lettered since the hub started.
    pub fn c2d_dead_lettered(&self) -> u64 {
        self.deliveries.dead_lettered.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_goes_out_at_most_the_maximum_times() {
        let counts = DeliveryCounts::default();
        assert_eq!(counts.attempt("d1", 7, 2), Attempt::Deliver);
        assert_eq!(counts.attempt("d1", 7, 2), Attempt::Deliver);
        assert_eq!(counts.attempt("d1", 7, 2), Attempt::Exhausted(2));
        assert_eq!(counts.attempt("d1", 7, 2), Attempt::Exhausted(2));
        assert_eq!(
            counts.attempt("d1", 8, 2),
            Attempt::Deliver,
            "counted apart"
        );
        assert_eq!(
            counts.attempt("d2", 7, 2),
            Attempt::Deliver,
            "counted apart"
        );
    }

    #[test]
    fn counts_are_forgotten_with_their_message_device_or_queue() {
        let counts = DeliveryCounts::default();
        for seq in [1, 2, 3] {
            counts.attempt("d1", seq, 1);
        }
        counts.attempt("d2", 1, 1);

        counts.forget("d1", 1);
        assert_eq!(counts.attempt("d1", 1, 1), Attempt::Deliver);
        counts.retain("d1", |seq| seq == 3);
        assert_eq!(counts.attempt("d1", 2, 1), Attempt::Deliver);
        assert_eq!(counts.attempt("d1", 3, 1), Attempt::Exhausted(1));

        counts.retain("d1", |_| false);
        counts.forget_device("d2");
        assert!(lock(&counts.by_device).is_empty(), "nothing left behind");
    }
}
