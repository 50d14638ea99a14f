//! Downloads in progress and what the streamer's checkpoint records about them.

use cloudpillar_protocol::causes::ErrorChain;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use backon::Retryable;
use cloudpillar_protocol::messages::StreamRangeRequest;
use serde::{Deserialize, Serialize};
use tokio::task::AbortHandle;

use super::StreamerOptions;
use crate::backoff;
use crate::checkpoint::{Checkpoint, CheckpointStore, Progress};
use crate::partition::Partition;

/// What the checkpoint keeps about a range request at or after its `next` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum JobProgress {
    /// Being sent: every byte before `next` is queued on the hub, CRC included.
    Running {
        /// Device id.
        device: String,
        /// File id (path in the patches container).
        file_id: String,
        /// First byte not yet queued.
        next: u64,
    },
    /// Finished, replaced by a newer request, or dropped.
    Done,
}

impl Progress for JobProgress {
    /// A running download goes with its device; a finished one is kept by every replica, as
    /// only the replica owning the event's device ever looks it up.
    fn belongs_to(&self, partition: Partition) -> bool {
        match self {
            Self::Running { device, .. } => partition.owns(device),
            Self::Done => true,
        }
    }
}

/// How to start a request met in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// A previous run finished it.
    AlreadyDone,
    /// Send from this byte on.
    From(u64),
}

#[derive(Debug, Default)]
struct Inner {
    /// Every event before this one has been read and dispatched.
    read_next: u64,
    progress: BTreeMap<u64, JobProgress>,
    /// Running request per (device, file).
    active: HashMap<(String, String), u64>,
    handles: HashMap<u64, AbortHandle>,
    /// Progress saved by a previous run, consumed as its events are read again.
    resume: BTreeMap<u64, JobProgress>,
}

/// Shared between the event loop, the download tasks and the checkpoint saver.
#[derive(Debug, Clone)]
pub(super) struct Jobs {
    inner: Arc<Mutex<Inner>>,
}

impl Jobs {
    /// State for a run starting from `saved`.
    pub(super) fn resume(saved: &Checkpoint<JobProgress>) -> Self {
        let inner = Inner {
            read_next: saved.next,
            progress: saved.progress.clone(),
            resume: saved.progress.clone(),
            ..Inner::default()
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers the request of event `seq`, replacing an unfinished request for the same
    /// device and file.
    pub(super) fn start(&self, seq: u64, device: &str, request: &StreamRangeRequest) -> Start {
        let mut inner = self.lock();
        let mut from = request.from;
        match inner.resume.remove(&seq) {
            Some(JobProgress::Done) => return Start::AlreadyDone,
            Some(JobProgress::Running { next, .. }) => from = next.max(request.from),
            None => {}
        }
        let key = (device.to_owned(), request.file_id.clone());
        if let Some(old) = inner.active.insert(key, seq).filter(|&old| old != seq) {
            if let Some(handle) = inner.handles.remove(&old) {
                handle.abort();
            }
            inner.progress.insert(old, JobProgress::Done);
            tracing::info!(device, file = %request.file_id, old, seq, "range request replaced");
        }
        let running = JobProgress::Running {
            device: device.to_owned(),
            file_id: request.file_id.clone(),
            next: from,
        };
        inner.progress.insert(seq, running);
        Start::From(from)
    }

    /// Keeps the task of event `seq` so a newer request can stop it.
    pub(super) fn attach(&self, seq: u64, handle: AbortHandle) {
        let mut inner = self.lock();
        if matches!(inner.progress.get(&seq), Some(JobProgress::Running { .. })) {
            inner.handles.insert(seq, handle);
        }
    }

    /// Records that every byte before `next` is queued.
    pub(super) fn advance(&self, seq: u64, next: u64) {
        if let Some(JobProgress::Running { next: done, .. }) = self.lock().progress.get_mut(&seq) {
            *done = next;
        }
    }

    /// Marks the request of event `seq` done.
    pub(super) fn finish(&self, seq: u64, device: &str, file_id: &str) {
        let mut inner = self.lock();
        inner.progress.insert(seq, JobProgress::Done);
        inner.handles.remove(&seq);
        let key = (device.to_owned(), file_id.to_owned());
        if inner.active.get(&key) == Some(&seq) {
            inner.active.remove(&key);
        }
    }

    /// Records that every event before `next` has been read and dispatched.
    pub(super) fn read_up_to(&self, next: u64) {
        let mut inner = self.lock();
        inner.read_next = inner.read_next.max(next);
    }

    /// The checkpoint as of now: the first event whose work is unfinished, and what is known
    /// about requests from there on. Finished entries before that point are forgotten.
    pub(super) fn checkpoint(&self) -> Checkpoint<JobProgress> {
        let mut inner = self.lock();
        let first_running = inner
            .progress
            .iter()
            .find(|(_, progress)| matches!(progress, JobProgress::Running { .. }))
            .map(|(&seq, _)| seq);
        let next = first_running.map_or(inner.read_next, |seq| seq.min(inner.read_next));
        inner.progress = inner.progress.split_off(&next);
        Checkpoint {
            next,
            progress: inner.progress.clone(),
        }
    }

    /// Saves the checkpoint whenever it changed, every `checkpoint_every`.
    pub(super) async fn save_every(self, store: CheckpointStore, options: StreamerOptions) {
        let retry = backoff::forever(options.retry_first, options.retry_ceiling);
        let mut saved: Option<Checkpoint<JobProgress>> = None;
        loop {
            tokio::time::sleep(options.checkpoint_every).await;
            let now = self.checkpoint();
            if saved.as_ref() == Some(&now) {
                continue;
            }
            (|| store.save(&now))
                .retry(retry)
                .notify(|error, delay| tracing::warn!(error = %ErrorChain(error), ?delay, "checkpoint not saved"))
                .await
                .ok();
            tracing::debug!(
                next = now.next,
                open = now.progress.len(),
                "streamer checkpoint saved"
            );
            saved = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(file: &str, from: u64) -> StreamRangeRequest {
        StreamRangeRequest {
            file_id: file.into(),
            from,
            to: None,
        }
    }

    #[test]
    fn checkpoint_stays_at_the_oldest_unfinished_request() {
        let jobs = Jobs::resume(&Checkpoint::default());
        assert_eq!(jobs.start(3, "d1", &request("a", 0)), Start::From(0));
        assert_eq!(jobs.start(5, "d2", &request("b", 0)), Start::From(0));
        jobs.read_up_to(9);
        jobs.advance(3, 4096);
        jobs.finish(5, "d2", "b");
        let saved = jobs.checkpoint();
        assert_eq!(saved.next, 3);
        assert_eq!(saved.progress.get(&5), Some(&JobProgress::Done));

        // A restart resumes 3 from its progress and skips 5.
        let again = Jobs::resume(&saved);
        assert_eq!(again.start(3, "d1", &request("a", 0)), Start::From(4096));
        assert_eq!(again.start(5, "d2", &request("b", 0)), Start::AlreadyDone);

        jobs.finish(3, "d1", "a");
        let saved = jobs.checkpoint();
        assert_eq!(saved.next, 9);
        assert!(saved.progress.is_empty());
    }

    #[test]
    fn newer_request_for_the_same_file_replaces_the_older() {
        let jobs = Jobs::resume(&Checkpoint::default());
        jobs.start(3, "d1", &request("a", 0));
        jobs.start(7, "d1", &request("a", 1000));
        jobs.read_up_to(8);
        let saved = jobs.checkpoint();
        assert_eq!(saved.next, 7);
        assert_eq!(
            saved
                .progress
                .get(&7)
                .map(|p| matches!(p, JobProgress::Running { next: 1000, .. })),
            Some(true)
        );
    }
}
