//! The durable device-to-cloud queue.
//!
//! Every message is a file in `<state_dir>/outbox/` before the sender goes on, so what was
//! queued survives a restart and an outage. The queue holds at most `limit` messages: when
//! it is full the oldest droppable message (a log chunk) makes room and is counted; when
//! nothing can be dropped the sender waits.
//!
//! A dropped upload chunk leaves a hole in its upload: its file id, offset, length and
//! `last` flag go to the outbox's hole record (see [`HoleBook`]) before the chunk's file is
//! removed, so the uploader sends those bytes again (see [`Outbox::holes`]), after a restart
//! too. The
//! backend commits an upload only once every byte up to its `last` chunk has come, so an
//! upload with a hole is never complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cloudpillar_protocol::encoding::{decode_base64_strict, encode_base64};
use cloudpillar_protocol::messages::D2cMessage;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::Outgoing;
pub use super::holes::Hole;
use super::holes::HoleBook;
use crate::durable;

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    properties: Vec<(String, String)>,
    payload: String,
    droppable: bool,
}

#[derive(Debug)]
struct Inner {
    next: u64,
    /// Sequence number → droppable.
    entries: BTreeMap<u64, bool>,
    holes: HoleBook,
}

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A message could not be stored.
    #[error("failed to store a queued message")]
    Store(#[from] durable::DurableError),
    /// The directory could not be read.
    #[error("failed to read the outbox {dir}")]
    List {
        /// Directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The queue.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    limit: usize,
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Outbox {
    /// Opens the queue in `state_dir`, keeping what an earlier run left.
    pub fn open(state_dir: &Path, limit: usize) -> Result<Self, OutboxError> {
        let dir = state_dir.join("outbox");
        crate::state_dir::create_private_dir(&dir).map_err(|source| OutboxError::List {
            dir: dir.clone(),
            source,
        })?;
        let mut inner = Inner {
            next: 0,
            entries: BTreeMap::new(),
            holes: HoleBook::open(&dir)?,
        };
        let listing = std::fs::read_dir(&dir).map_err(|source| OutboxError::List {
            dir: dir.clone(),
            source,
        })?;
        for entry in listing.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let droppable = durable::read_json::<Stored>(&entry.path())
                .ok()
                .flatten()
                .is_some_and(|s| s.droppable);
            inner.entries.insert(seq, droppable);
            inner.next = inner.next.max(seq + 1);
        }
        Ok(Self {
            dir,
            limit: limit.max(1),
            inner: Mutex::new(inner),
            changed: Notify::new(),
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    /// Stores `message`; waits while the queue is full of messages that may not be dropped.
    pub async fn push(&self, message: Outgoing, droppable: bool) -> Result<(), OutboxError> {
        loop {
            let notified = self.changed.notified();
            if self.try_push(&message, droppable)? {
                self.changed.notify_waiters();
                return Ok(());
            }
            notified.await;
        }
    }

    fn try_push(&self, message: &Outgoing, droppable: bool) -> Result<bool, OutboxError> {
        let Ok(mut inner) = self.inner.lock() else {
            return Ok(false);
        };
        if inner.entries.len() >= self.limit {
            let oldest_droppable = inner.entries.iter().find(|(_, d)| **d).map(|(s, _)| *s);
            let Some(victim) = oldest_droppable else {
                return Ok(false);
            };
            // The hole is on disk before the chunk is gone: a crash in between sends it twice
            // at worst, which the backend takes as bytes it already has.
            let chunk = self.chunk_of(victim, inner.holes.count() + 1);
            let dropped = inner.holes.dropped(chunk.clone())?;
            match &chunk {
                Some((file_id, hole)) => tracing::warn!(dropped, %file_id, offset = hole.offset,
                    "outbox full; oldest log chunk dropped, to be sent again"),
                None => tracing::warn!(dropped, "outbox full; oldest log chunk dropped"),
            }
            inner.entries.remove(&victim);
            let _ = std::fs::remove_file(self.path(victim));
        }
        let seq = inner.next;
        let stored = Stored {
            properties: message.properties.clone(),
            payload: encode_base64(&message.payload),
            droppable,
        };
        durable::write_json(&self.path(seq), &stored)?;
        inner.next += 1;
        inner.entries.insert(seq, droppable);
        Ok(true)
    }

    /// The upload chunk stored as `seq`, as a hole made by drop number `drop`.
    fn chunk_of(&self, seq: u64, drop: u64) -> Option<(String, Hole)> {
        let stored: Stored = durable::read_json(&self.path(seq)).ok().flatten()?;
        let payload = decode_base64_strict("payload", &stored.payload).ok()?;
        match D2cMessage::decode(&payload).ok()? {
            D2cMessage::UploadFileChunk(chunk) => Some((
                chunk.file_id,
                Hole {
                    offset: chunk.offset,
                    len: chunk.data.len() as u64,
                    last: chunk.last,
                    drop,
                },
            )),
            _ => None,
        }
    }

    /// The open holes of upload `file_id`, lowest offset first.
    pub fn holes(&self, file_id: &str) -> Vec<Hole> {
        (self.inner.lock().ok())
            .map(|i| i.holes.holes(file_id))
            .unwrap_or_default()
    }

    /// Closes `hole` of `file_id` once its bytes are queued again (or, for an upload that
    /// will never be finished, when they no longer matter).
    pub fn fill(&self, file_id: &str, hole: Hole) -> Result<(), OutboxError> {
        let Ok(mut inner) = self.inner.lock() else {
            return Ok(());
        };
        Ok(inner.holes.fill(file_id, hole)?)
    }

    /// Whether a message can be queued without dropping one.
    pub fn has_room(&self) -> bool {
        self.len() < self.limit
    }

    /// The oldest message, if any.
    pub fn peek(&self) -> Option<(u64, Outgoing)> {
        let seq = *self.inner.lock().ok()?.entries.keys().next()?;
        let stored: Stored = durable::read_json(&self.path(seq)).ok().flatten()?;
        let payload = decode_base64_strict("payload", &stored.payload).ok()?;
        let droppable = stored.droppable;
        Some((
            seq,
            Outgoing {
                properties: stored.properties,
                payload,
                droppable,
            },
        ))
    }

    /// Removes a message handed to the MQTT client.
    pub fn remove(&self, seq: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.entries.remove(&seq);
        }
        let _ = std::fs::remove_file(self.path(seq));
        self.changed.notify_waiters();
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.entries.len()).unwrap_or(0)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Log chunks dropped because the queue was full (since the state directory was made).
    pub fn dropped(&self) -> u64 {
        self.inner.lock().map(|i| i.holes.count()).unwrap_or(0)
    }

    /// Waits until a message is pushed or removed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The sequence number the next pushed message gets: every message queued so far is
    /// below it.
    pub fn next_seq(&self) -> u64 {
        self.inner.lock().map(|i| i.next).unwrap_or(0)
    }

    /// Waits until no message below `mark` (a [`Self::next_seq`] taken earlier) is left, i.e.
    /// all of them were handed to the MQTT client (or dropped as old log chunks).
    pub async fn handed_over(&self, mark: u64) {
        loop {
            // Registered before the check, so a removal in between still wakes us.
            let notified = self.changed.notified();
            let oldest = self
                .inner
                .lock()
                .ok()
                .and_then(|i| i.entries.keys().next().copied());
            if oldest.is_none_or(|seq| seq >= mark) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u8) -> Outgoing {
        Outgoing {
            properties: vec![("n".into(), n.to_string())],
            payload: vec![n],
            droppable: false,
        }
    }

    #[tokio::test]
    async fn queued_messages_survive_a_restart_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let outbox = Outbox::open(dir.path(), 10).expect("open");
            for n in 0..3 {
                outbox.push(msg(n), false).await.expect("push");
            }
        }
        let outbox = Outbox::open(dir.path(), 10).expect("reopen");
        assert_eq!(outbox.len(), 3);
        let (seq, first) = outbox.peek().expect("first");
        assert_eq!(first.payload, vec![0]);
        outbox.remove(seq);
        assert_eq!(outbox.peek().expect("second").1.payload, vec![1]);
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_log_chunk_and_counts_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(dir.path(), 3).expect("open");
        outbox.push(msg(0), false).await.expect("request");
        outbox.push(msg(1), true).await.expect("log 1");
        outbox.push(msg(2), true).await.expect("log 2");
        outbox
            .push(msg(3), true)
            .await
            .expect("log 3 replaces log 1");
        assert_eq!(outbox.dropped(), 1);
        let mut payloads = vec![];
        while let Some((seq, m)) = outbox.peek() {
            payloads.push(m.payload[0]);
            outbox.remove(seq);
        }
        assert_eq!(payloads, [0, 2, 3]);
    }

    fn chunk(offset: u64, last: bool) -> Outgoing {
        let message =
            D2cMessage::UploadFileChunk(cloudpillar_protocol::messages::UploadFileChunk {
                file_id: "abc-app.log".into(),
                upload_id: None,
                offset,
                data: vec![7; 10],
                last,
            });
        Outgoing {
            properties: vec![],
            payload: message.encode().expect("encode"),
            droppable: true,
        }
    }

    #[tokio::test]
    async fn a_dropped_upload_chunk_leaves_a_hole_that_survives_a_restart_until_filled() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let outbox = Outbox::open(dir.path(), 2).expect("open");
            for (n, offset) in [0u64, 10, 20].into_iter().enumerate() {
                outbox
                    .push(chunk(offset, n == 2), true)
                    .await
                    .expect("push");
            }
            assert!(!outbox.has_room());
        }
        let outbox = Outbox::open(dir.path(), 2).expect("reopen");
        assert_eq!(outbox.dropped(), 1);
        let holes = outbox.holes("abc-app.log");
        let expected = Hole {
            offset: 0,
            len: 10,
            last: false,
            drop: 1,
        };
        assert_eq!(holes, [expected]);
        assert!(outbox.holes("other").is_empty());

        // A hole dropped again after it was taken is a new one: filling the old one keeps it.
        while let Some((seq, _)) = outbox.peek() {
            outbox.remove(seq);
        }
        outbox.push(chunk(0, false), true).await.expect("again");
        outbox.push(chunk(30, false), true).await.expect("next");
        outbox
            .push(chunk(40, false), true)
            .await
            .expect("drops the re-sent chunk");
        outbox.fill("abc-app.log", expected).expect("fill");
        let left = outbox.holes("abc-app.log");
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!((left[0].offset, left[0].drop), (0, 2));
        outbox.fill("abc-app.log", left[0]).expect("fill");
        let outbox = Outbox::open(dir.path(), 2).expect("reopen");
        assert!(outbox.holes("abc-app.log").is_empty());
        assert_eq!(outbox.dropped(), 2);
    }

    #[tokio::test]
    async fn handed_over_waits_for_earlier_messages_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = std::sync::Arc::new(Outbox::open(dir.path(), 10).expect("open"));
        outbox.push(msg(0), false).await.expect("first");
        let mark = outbox.next_seq();
        outbox.push(msg(1), false).await.expect("second");
        let waiting = {
            let outbox = std::sync::Arc::clone(&outbox);
            tokio::spawn(async move { outbox.handed_over(mark).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the first message is still queued");
        let (seq, _) = outbox.peek().expect("first");
        outbox.remove(seq);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("returns once the first message is handed over")
            .expect("join");
        assert_eq!(outbox.len(), 1, "the later message does not count");
    }

    #[tokio::test]
    async fn a_queue_full_of_requests_makes_the_sender_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = std::sync::Arc::new(Outbox::open(dir.path(), 1).expect("open"));
        outbox.push(msg(0), false).await.expect("first");
        let waiting = {
            let outbox = std::sync::Arc::clone(&outbox);
            tokio::spawn(async move { outbox.push(msg(1), false).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        let (seq, _) = outbox.peek().expect("first");
        outbox.remove(seq);
        waiting.await.expect("join").expect("second");
        assert_eq!(outbox.peek().expect("second").1.payload, vec![1]);
        assert_eq!(outbox.dropped(), 0);
    }
}
