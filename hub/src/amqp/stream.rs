//! One receiver of one partition: events from the start position on, then live ones.

use std::sync::Arc;

use fe2o3_amqp::Sender;

use super::address::{PartitionAddress, StartAt, partition_of};
use super::message::to_message;
use crate::core::Core;
use crate::error::StoreError;
use crate::events::HubEvent;

/// Events read from the log per step.
const PAGE: usize = 256;

/// Sends the partition's events to `sender` until the client detaches or the hub stops.
pub async fn run(core: Arc<Core>, mut sender: Sender, address: PartitionAddress, start: StartAt) {
    let partition = address.partition;
    let count = core.config.partition_count;
    let mut last = core.bus.last_sequence();
    let (mut next, after_ms) = match start {
        StartAt::Earliest => (1, None),
        StartAt::Latest => (*last.borrow() + 1, None),
        StartAt::Sequence(n) => (n, None),
        StartAt::EnqueuedAfter(ms) => (1, Some(ms)),
    };
    tracing::debug!(partition, next, "partition receiver attached");
    loop {
        // Wait until the log holds an event at `next` (or the client goes away).
        if *last.borrow_and_update() < next {
            tokio::select! {
                changed = last.changed() => if changed.is_err() { break },
                error = sender.on_detach() => {
                    tracing::debug!(partition, %error, "partition receiver detached");
                    return;
                }
            }
            continue;
        }
        let events: Vec<HubEvent> = match read(&core, next) {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(%error, partition, "event log not readable; closing the link");
                break;
            }
        };
        let Some(newest) = events.last().map(|e| e.sequence_number) else {
            // Everything up to `last` was dropped by retention while we waited.
            next = *last.borrow() + 1;
            continue;
        };
        next = newest + 1;
        for event in events {
            if partition_of(&event.device_id, count) != partition
                || after_ms.is_some_and(|ms| event.enqueued_ms <= ms)
            {
                continue;
            }
            if let Err(error) = sender.send(to_message(&event)).await {
                tracing::debug!(partition, %error, "partition receiver gone");
                return;
            }
        }
    }
    let _ = sender.close().await;
}

fn read(core: &Core, from: u64) -> Result<Vec<HubEvent>, StoreError> {
    core.store.events_from(from, PAGE)
}
