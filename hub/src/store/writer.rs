//! Group commit: one thread applies queued write closures in batches, one fsync per batch.
//!
//! Invariant: a closure's result is handed back only after the transaction holding its writes
//! has committed durably, so an acknowledged write survives `kill -9`. A closure that refuses
//! (returns `Err`) must do so before it writes anything, because its batch still commits.
//! The one exception is a write queued with [`Writer::write_relaxed`], whose loss in a crash
//! only repeats work (the removal of a delivered C2D message, which is then delivered again):
//! a batch of nothing but such writes commits without fsync and becomes durable with the next
//! durable batch.
//!
//! Closures run in the order they were queued, so writes of one device (whose connection
//! queues them in arrival order) apply in that order. Twins are read and changed through the
//! batch ([`Batch::twin`]), which keeps them decoded between batches and encodes each changed
//! twin once per batch.

use std::sync::Arc;
use std::sync::mpsc;

use redb::{Database, Durability, ReadableTable, WriteTransaction};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::error::{HubError, StoreError};
use crate::events::{Committed, EventBus, HubEvent, encode_twin_change};

use super::twin_cache::TwinCache;
use super::{COUNTERS, EVENTS, decode, encode, table_err};
use crate::twins::StoredTwin;

/// Counter of the last assigned event sequence number.
const EVENT_SEQ: &str = "event_seq";

/// Largest number of closures packed into one transaction.
const MAX_BATCH: usize = 4096;

type Apply = Box<dyn FnOnce(&mut Batch<'_>) -> Box<dyn FnOnce(bool) + Send> + Send>;

/// A queued write and whether its result must wait for fsync.
struct Job {
    apply: Apply,
    durable: bool,
}

/// One write transaction being filled, and the events its closures appended.
pub struct Batch<'a> {
    /// The transaction.
    pub txn: &'a WriteTransaction,
    events: Vec<Committed>,
    /// Last event sequence number handed out in this batch; stored once, at commit.
    last_seq: Option<u64>,
    twins: &'a mut TwinCache,
}

impl Batch<'_> {
    /// The stored twin of `id`, to read or change in place. After changing it, call
    /// [`Batch::twin_changed`]; the twin is written when the batch commits.
    pub fn twin(&mut self, id: &str) -> Result<Option<&mut StoredTwin>, HubError> {
        Ok(self.twins.get_mut(self.txn, id)?)
    }

    /// Notes that the twin of `id` obtained from [`Batch::twin`] changed.
    pub fn twin_changed(&mut self, id: &str) {
        self.twins.changed(id);
    }

    /// Stores `twin` as the twin of `id`, replacing any.
    pub fn put_twin(&mut self, id: &str, twin: StoredTwin) {
        self.twins.put(id, twin);
    }

    /// Deletes the twin of `id`; true when it existed.
    pub fn delete_twin(&mut self, id: &str) -> Result<bool, HubError> {
        Ok(self.twins.delete(self.txn, id)?)
    }

    /// Appends an event to the log and returns its sequence number. It reaches subscribers
    /// only if the batch commits.
    pub fn append_event(&mut self, mut event: HubEvent) -> Result<u64, HubError> {
        let seq = self.next_seq()?;
        event.sequence_number = seq;
        self.insert_event(seq, &encode(&event))?;
        self.events.push(Committed::Built(Box::new(event)));
        Ok(seq)
    }

    /// Appends the twin change notification `HubEvent::twin_change(hub, device, op, body)`,
    /// encoded straight from its parts; returns its sequence number.
    pub fn append_twin_change(
        &mut self,
        hub: &str,
        device: &str,
        op: &str,
        body: &Value,
    ) -> Result<u64, HubError> {
        let seq = self.next_seq()?;
        let bytes = encode_twin_change(seq, hub, device, op, body, chrono::Utc::now());
        self.insert_event(seq, &bytes)?;
        self.events.push(Committed::Encoded(bytes));
        Ok(seq)
    }

    /// Takes the next event sequence number.
    fn next_seq(&mut self) -> Result<u64, HubError> {
        let last = match self.last_seq {
            Some(last) => last,
            None => {
                let t = self
                    .txn
                    .open_table(COUNTERS)
                    .map_err(|source| table_err(COUNTERS, source))?;
                let stored = t.get(EVENT_SEQ).map_err(StoreError::from)?;
                stored.map(|v| v.value()).unwrap_or(0)
            }
        };
        self.last_seq = Some(last + 1);
        Ok(last + 1)
    }

    fn insert_event(&self, seq: u64, bytes: &[u8]) -> Result<(), HubError> {
        let mut t = self
            .txn
            .open_table(EVENTS)
            .map_err(|source| table_err(EVENTS, source))?;
        t.insert(seq, bytes).map_err(StoreError::from)?;
        Ok(())
    }

    /// Stores the event counter once for the whole batch.
    fn store_counter(&self) -> Result<(), StoreError> {
        if let Some(last) = self.last_seq {
            let mut t = self
                .txn
                .open_table(COUNTERS)
                .map_err(|source| table_err(COUNTERS, source))?;
            t.insert(EVENT_SEQ, last)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("events", &self.events.len())
            .finish()
    }
}

/// Retention of the event log.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Oldest event age kept, in milliseconds.
    pub max_age_ms: u64,
    /// Most events kept.
    pub max_count: u64,
}

/// Handle to the writer thread.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `db`.
    pub(crate) fn start(db: Arc<Database>, bus: EventBus, retention: Retention) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("hub-store-writer".into())
            .spawn(move || run(&db, &rx, &bus, retention))
            .map(|_| ())
            .unwrap_or_else(|error| tracing::error!(%error, "store writer thread did not start"));
        Self { tx }
    }

    /// Runs `op` inside the next write transaction and returns its result once that
    /// transaction has committed durably.
    pub async fn write<T, F>(&self, op: F) -> Result<T, HubError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, HubError> + Send + 'static,
    {
        self.submit(op)?.wait().await
    }

    /// Like [`Writer::write`] for a write whose loss in a crash only repeats work: when its
    /// batch holds nothing else, the batch commits without fsync.
    pub async fn write_relaxed<T, F>(&self, op: F) -> Result<T, HubError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, HubError> + Send + 'static,
    {
        self.queue(op, false)?.wait().await
    }

    /// Queues `op` for the next write transaction right away (so writes submitted one after
    /// another apply in that order) and returns a handle to await its durable result.
    pub fn submit<T, F>(&self, op: F) -> Result<Pending<T>, HubError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, HubError> + Send + 'static,
    {
        self.queue(op, true)
    }

    fn queue<T, F>(&self, op: F, durable: bool) -> Result<Pending<T>, HubError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, HubError> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<Result<T, HubError>>();
        let apply: Apply = Box::new(move |batch| {
            let result = op(batch);
            Box::new(move |committed: bool| {
                let result = match result {
                    Ok(_) if !committed => Err(HubError::Store(StoreError::WriterGone)),
                    other => other,
                };
                let _ = done_tx.send(result);
            })
        });
        let job = Job { apply, durable };
        self.tx.send(job).map_err(|_| StoreError::WriterGone)?;
        Ok(Pending(done_rx))
    }
}

/// A queued write whose result arrives once its transaction has committed.
#[derive(Debug)]
pub struct Pending<T>(oneshot::Receiver<Result<T, HubError>>);

impl<T> Pending<T> {
    /// Waits for the write's durable result.
    pub async fn wait(self) -> Result<T, HubError> {
        self.0
            .await
            .map_err(|_| HubError::Store(StoreError::WriterGone))?
    }
}

fn run(db: &Database, rx: &mpsc::Receiver<Job>, bus: &EventBus, retention: Retention) {
    let mut batches = 0u64;
    let mut twins = TwinCache::default();
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        batches += 1;
        let retention = (batches % 256 == 1).then_some(retention);
        commit_batch(db, jobs, bus, retention, &mut twins);
    }
    tracing::debug!("store writer stopped");
}

fn commit_batch(
    db: &Database,
    jobs: Vec<Job>,
    bus: &EventBus,
    retention: Option<Retention>,
    twins: &mut TwinCache,
) {
    let mut txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(error) => {
            tracing::error!(%error, "store batch could not start");
            return;
        }
    };
    if jobs.iter().all(|job| !job.durable)
        && let Err(error) = txn.set_durability(Durability::None)
    {
        tracing::debug!(%error, "relaxed batch commits durably");
    }
    twins.begin();
    let mut batch = Batch {
        txn: &txn,
        events: Vec::new(),
        last_seq: None,
        twins,
    };
    let completions: Vec<_> = jobs
        .into_iter()
        .map(|job| (job.apply)(&mut batch))
        .collect();
    let finished = batch.twins.flush(&txn).and_then(|()| batch.store_counter());
    if let Err(error) = finished {
        // Without its twins or the counter the batch must not commit: fail every job in it.
        tracing::error!(%error, "batch writes not stored; batch abandoned");
        batch.twins.end(false);
        drop(txn);
        for done in completions {
            done(false);
        }
        return;
    }
    let events = std::mem::take(&mut batch.events);
    let last_seq = batch.last_seq;
    if let Some(retention) = retention
        && let Err(error) = prune_events(&txn, retention)
    {
        tracing::warn!(%error, "event log pruning failed");
    }
    let committed = match txn.commit() {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, batch = completions.len(), "store batch commit failed");
            false
        }
    };
    twins.end(committed);
    if committed && let Some(last) = last_seq {
        bus.publish(events, last);
    }
    for done in completions {
        done(committed);
    }
}

/// Drops events past the retention count or age, oldest first.
fn prune_events(txn: &WriteTransaction, retention: Retention) -> Result<(), StoreError> {
    let mut t = txn
        .open_table(EVENTS)
        .map_err(|source| table_err(EVENTS, source))?;
    let newest = match t.last()? {
        Some((k, _)) => k.value(),
        None => return Ok(()),
    };
    let min_seq_by_count = newest.saturating_sub(retention.max_count);
    let cutoff_ms = crate::events::now_ms().saturating_sub(retention.max_age_ms);
    let mut drop_below = min_seq_by_count;
    for row in t.range(min_seq_by_count..)? {
        let (k, v) = row?;
        let event: HubEvent = decode(&k.value().to_string(), v.value())?;
        if event.enqueued_ms >= cutoff_ms {
            break;
        }
        drop_below = k.value() + 1;
    }
    t.retain_in(..drop_below, |_, _| false)?;
    Ok(())
}
