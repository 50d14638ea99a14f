//! The writer: stores twin changes, state transitions and D2C records in MongoDB.
//!
//! It reads the hub's event stream from its checkpoint, turns each event of its partition into
//! a record ([`records`]), inserts the batch and only then saves the checkpoint past it. While
//! MongoDB is away each collection's part of the batch is retried with capped, jittered backoff
//! and the checkpoint stays where it is, so nothing is skipped (a record the database refuses
//! for itself is set aside in [`history::REFUSED`] with its reason); records keep ids derived from
//! their events, so a batch written twice (after a crash between insert and checkpoint) is
//! stored once.

pub mod history;
pub mod records;

use cloudpillar_protocol::causes::ErrorChain;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use mongodb::bson::Document;

use crate::backoff;
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::hub_link::{EventPage, HubLink};
use crate::partition::Partition;
use history::{History, LOGS, TELEMETRY, VERSIONS};

/// Tuning of the writer loop.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Most events read (and written) at once.
    pub batch: usize,
    /// Long-poll wait when no event is there.
    pub wait: Duration,
    /// First retry delay after a failure.
    pub retry_first: Duration,
    /// Longest retry delay.
    pub retry_ceiling: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            batch: 1000,
            wait: Duration::from_secs(10),
            retry_first: Duration::from_millis(100),
            retry_ceiling: Duration::from_secs(30),
        }
    }
}

/// One writer replica.
#[derive(Debug)]
pub struct Writer {
    hub: Arc<dyn HubLink>,
    history: History,
    checkpoints: CheckpointStore,
    partition: Partition,
    options: WriterOptions,
}

impl Writer {
    /// A writer for `partition`, keeping its position in `checkpoints`.
    pub fn new(
        hub: Arc<dyn HubLink>,
        history: History,
        checkpoints: CheckpointStore,
        partition: Partition,
        options: WriterOptions,
    ) -> Self {
        Self {
            hub,
            history,
            checkpoints,
            partition,
            options,
        }
    }

    /// Runs until the future is dropped. Dropping it at any point loses nothing: work after
    /// the saved checkpoint is redone by the next run.
    pub async fn run(self) {
        let retry = self.retry();
        (|| self.history.ensure_indexes())
            .retry(retry)
            .notify(|error, delay| tracing::warn!(error = %ErrorChain(error), ?delay, "history indexes not ready"))
            .await
            .ok();
        let mut checkpoint: Checkpoint<()> = (|| self.checkpoints.load())
            .retry(retry)
            .notify(|error, delay| tracing::warn!(error = %ErrorChain(error), ?delay, "writer checkpoint unreadable"))
            .await
            .unwrap_or_default();
        tracing::info!(partition = %self.partition, from = checkpoint.next, "writer started");

        // Three steps overlap: the current page is written, the next one read, and the
        // checkpoint saved past the page written before. The checkpoint moves past a page only
        // once its records are stored; a restart redoes at most the page after it, whose
        // records are then stored once (their ids derive from the events).
        let mut page = self.read(checkpoint.next).await;
        let mut stored_up_to = checkpoint.next;
        loop {
            let next = page.next_sequence_number.max(stored_up_to);
            let save = async {
                if stored_up_to != checkpoint.next {
                    checkpoint.next = stored_up_to;
                    self.save(&checkpoint).await;
                }
            };
            let ((), following, ()) = tokio::join!(self.store(&page), self.read(next), save);
            stored_up_to = next;
            page = following;
        }
    }

    /// Saves the checkpoint, retrying through blob store outages.
    async fn save(&self, checkpoint: &Checkpoint<()>) {
        let retry = self.retry();
        (|| self.checkpoints.save(checkpoint))
            .retry(retry)
            .notify(|error, delay| tracing::warn!(error = %ErrorChain(error), ?delay, "checkpoint not saved"))
            .await
            .ok();
    }

    /// One page of events from `from`, retried through hub outages.
    async fn read(&self, from: u64) -> EventPage {
        let retry = self.retry();
        let read = || {
            self.hub
                .read_events(from, self.options.batch, self.options.wait)
        };
        read.retry(retry)
            .notify(|error, delay| tracing::warn!(error = %ErrorChain(error), ?delay, from, "event read failed"))
            .await
            .unwrap_or(EventPage {
                events: Vec::new(),
                next_sequence_number: from,
            })
    }

    /// Stores the records of one page, retrying through database outages until they are in:
    /// this returns only once every record is stored.
    async fn store(&self, page: &EventPage) {
        let batches = self.records(page);
        let inserts = batches
            .iter()
            .filter(|(_, records)| !records.is_empty())
            .map(|(collection, records)| self.insert(collection, records));
        futures::future::join_all(inserts).await;
        if let (Some(first), Some(last)) = (page.events.first(), page.events.last()) {
            let (from, to) = (first.sequence_number, last.sequence_number);
            tracing::debug!(from, to, "history written");
        }
    }

    /// Records of this partition's events, per collection, in stream order.
    fn records(&self, page: &EventPage) -> [(&'static str, Vec<Document>); 3] {
        let mut batches = [
            (VERSIONS, Vec::new()),
            (LOGS, Vec::new()),
            (TELEMETRY, Vec::new()),
        ];
        let owned = page
            .events
            .iter()
            .filter(|e| self.partition.owns(&e.device_id));
        for record in owned.filter_map(records::record_for) {
            if let Some((_, batch)) = batches
                .iter_mut()
                .find(|(name, _)| *name == record.collection)
            {
                batch.push(record.document);
            }
        }
        batches
    }

    /// Inserts one collection's records of a page until they are stored. Each collection is
    /// retried on its own, so one that is already stored is not sent again: FerretDB stores a
    /// group of 100 records holding a duplicate one record per transaction.
    async fn insert(&self, collection: &'static str, records: &[Document]) {
        let mut delays = self.retry().build();
        while let Err(error) = self.history.insert(collection, records).await {
            let delay = delays.next().unwrap_or(self.options.retry_ceiling);
            tracing::warn!(error = %ErrorChain(&error), ?delay, collection, "history write failed");
            tokio::time::sleep(delay).await;
        }
    }

    /// Capped, jittered backoff without an attempt limit.
    fn retry(&self) -> ExponentialBuilder {
        backoff::forever(self.options.retry_first, self.options.retry_ceiling)
    }
}
