//! The streamer: serves file range requests with C2D chunks and assembles uploaded files.
//!
//! Message flow for one device (all messages carry the protocol's `messageType` property):
//!
//! 1. D2C `StreamRange {fileId, from, to?}`: `fileId` is the file's path in the patches
//!    container, or `uploads/{device}/{path}` for one of the requesting device's own uploads.
//!    The streamer answers with `DownloadFileChunk {fileId, offset, data, totalSize}` messages
//!    in offset order and a `VerifyRangeCRC {fileId, rangeStart, rangeEnd, crc}` after
//!    every CRC range (see [`download`]). A newer request for the same device and file replaces
//!    an unfinished one.
//! 2. D2C `UploadFileChunk {fileId, uploadId?, offset, data, last?}`: staged at its offset; the
//!    file is committed to `uploads/{device}/{fileId}` once every byte up to the `last` chunk's
//!    end has arrived, and a `logs` record linking the blob is written when a history database
//!    is set. Chunks of an upload already stored are dropped; a new `uploadId` replaces the file
//!    (see [`crate::blob::UploadAssembler`]).
//! 3. D2C `SignFile {fileId: "uploads/{device}/{path}"}`: one of the device's own uploads is
//!    signed by the key holder and answered with `FileSigned` or `SignFileFailed` (see [`sign`]).
//!
//! Replicas split devices by [`Partition`]. Each keeps a checkpoint: the first event not yet
//! completely handled, plus the progress of downloads still running and the downloads already
//! finished past that point, so a restart neither loses nor repeats a range (it resends at most
//! one CRC range plus what was queued since the last save).

mod download;
mod jobs;
mod sign;
mod window;

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use cloudpillar_protocol::causes::{ErrorChain, with_causes};
use cloudpillar_protocol::messages::{D2cMessage, StreamRangeRequest, UploadFileChunk};
use mongodb::bson::{DateTime, doc};
use tokio::task::JoinSet;

use crate::backoff;
use crate::blob::{BlobStores, CommittedUpload, UploadAssembler, UploadChunk, UploadProgress};
use crate::checkpoint::CheckpointStore;
use crate::hub_link::{Event, HubLink, SOURCE_TELEMETRY};
use crate::keys::KeyHolder;
use crate::messages::{D2cKind, classify};
use crate::partition::Partition;
use crate::writer::history::{History, LOGS};
use download::Download;
pub use download::UPLOADS_PREFIX;
pub use jobs::JobProgress;
use jobs::{Jobs, Start};
pub use sign::{InProcessSigner, SIGN_TIMEOUT, UploadSigner};
use window::SendSlots;

/// Tuning of the streamer.
#[derive(Debug, Clone)]
pub struct StreamerOptions {
    /// Most events read at once.
    pub batch: usize,
    /// Long-poll wait when no event is there.
    pub wait: Duration,
    /// Raw bytes per `DownloadFileChunk` (capped at the protocol's limit).
    pub chunk_size: usize,
    /// Bytes covered by one `VerifyRangeCRC`.
    pub crc_range: u64,
    /// Most of our messages waiting in one device's queue (the hub allows 50 in all).
    pub max_pending: usize,
    /// Most sends to one device in flight at once.
    pub send_ahead: usize,
    /// Most sends in flight across all downloads; downloads take turns for them.
    pub send_slots: usize,
    /// Longest pause between queue-depth polls while a device's queue is full.
    pub poll_ceiling: Duration,
    /// A download whose device takes nothing off its queue for this long is dropped; the
    /// device asks again when it is back.
    pub stall_timeout: Duration,
    /// How often the checkpoint is saved while work goes on.
    pub checkpoint_every: Duration,
    /// First retry delay after a failure.
    pub retry_first: Duration,
    /// Longest retry delay.
    pub retry_ceiling: Duration,
    /// Most bytes per second one download sends, when limited.
    pub rate_limit: Option<u64>,
    /// Longest time a `SignFile` request waits for the upload it names to be committed.
    pub sign_upload_wait: Duration,
}

impl Default for StreamerOptions {
    fn default() -> Self {
        Self {
            batch: 500,
            wait: Duration::from_secs(10),
            chunk_size: cloudpillar_protocol::messages::MAX_RAW_CHUNK,
            crc_range: 16 * cloudpillar_protocol::messages::MAX_RAW_CHUNK as u64,
            max_pending: 40,
            send_ahead: 8,
            send_slots: 32,
            poll_ceiling: Duration::from_millis(50),
            stall_timeout: Duration::from_secs(600),
            checkpoint_every: Duration::from_millis(500),
            retry_first: Duration::from_millis(100),
            retry_ceiling: Duration::from_secs(30),
            rate_limit: None,
            sign_upload_wait: Duration::from_secs(30),
        }
    }
}

/// One streamer replica.
#[derive(Debug, Clone)]
pub struct Streamer {
    hub: Arc<dyn HubLink>,
    blobs: BlobStores,
    history: Option<History>,
    partition: Partition,
    options: StreamerOptions,
    assembler: Arc<UploadAssembler>,
    signer: Option<Arc<dyn UploadSigner>>,
    awaiting: sign::AwaitingUpload,
    slots: SendSlots,
}

impl Streamer {
    /// A streamer for `partition`; `history`, when set, receives a `logs` record per
    /// committed upload.
    pub fn new(
        hub: Arc<dyn HubLink>,
        blobs: BlobStores,
        history: Option<History>,
        partition: Partition,
        options: StreamerOptions,
    ) -> Self {
        let assembler = Arc::new(UploadAssembler::new(
            blobs.uploads.clone(),
            blobs.state.clone(),
        ));
        let slots = SendSlots::new(options.send_slots);
        Self {
            hub,
            blobs,
            history,
            partition,
            options,
            assembler,
            signer: None,
            awaiting: sign::AwaitingUpload::default(),
            slots,
        }
    }

    /// Signs devices' own uploads on request (`SignFile`) with `holder`; without a signer such
    /// requests are answered with `SignFileFailed`.
    pub fn with_key_holder(self, holder: KeyHolder) -> Self {
        let signer = InProcessSigner::new(holder, self.blobs.uploads.clone());
        self.with_signer(Arc::new(signer))
    }

    /// Signs devices' own uploads on request with `signer`.
    pub fn with_signer(mut self, signer: Arc<dyn UploadSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The checkpoint this replica keeps in the state container.
    pub fn checkpoints(&self) -> CheckpointStore {
        CheckpointStore::new(self.blobs.state.clone(), "streamer", self.partition)
    }

    /// Runs until the future is dropped, which also stops every transfer it started. Work
    /// after the saved checkpoint is redone by the next run.
    pub async fn run(self) {
        let retry = backoff::forever(self.options.retry_first, self.options.retry_ceiling);
        let checkpoints = self.checkpoints();
        let saved = (|| checkpoints.load())
            .retry(retry)
            .notify(|error, delay| tracing::warn!(error = %ErrorChain(error), ?delay, "streamer checkpoint unreadable"))
            .await
            .unwrap_or_default();
        tracing::info!(partition = %self.partition, from = saved.next, "streamer started");
        let jobs = Jobs::resume(&saved);
        let mut tasks = JoinSet::new();
        tasks.spawn(jobs.clone().save_every(checkpoints, self.options.clone()));

        let mut next = saved.next;
        loop {
            let read = || {
                self.hub
                    .read_events(next, self.options.batch, self.options.wait)
            };
            let Ok(page) = read
                .retry(retry)
                .notify(|error, delay| tracing::warn!(error = %ErrorChain(error), ?delay, next, "event read failed"))
                .await
            else {
                continue;
            };
            for event in &page.events {
                if event.source == SOURCE_TELEMETRY
                    && classify(event) == D2cKind::Streamer
                    && self.partition.owns(&event.device_id)
                {
                    self.handle(event, &jobs, &mut tasks).await;
                }
            }
            next = page.next_sequence_number.max(next);
            jobs.read_up_to(next);
            while tasks.try_join_next().is_some() {}
        }
    }

    async fn handle(&self, event: &Event, jobs: &Jobs, tasks: &mut JoinSet<()>) {
        let seq = event.sequence_number;
        let device = event.device_id.as_str();
        match D2cMessage::decode(&event.body_bytes()) {
            Ok(D2cMessage::StreamRangeRequest(request)) => {
                self.start_download(seq, device, request, jobs, tasks);
            }
            Ok(D2cMessage::UploadFileChunk(chunk)) => self.accept_chunk(event, chunk).await,
            Ok(D2cMessage::SignFile(request)) => self.sign_upload(event, request, tasks).await,
            Err(error) => {
                let error = ErrorChain(&error);
                tracing::warn!(%error, device, seq, "transfer message refused");
            }
        }
    }

    fn start_download(
        &self,
        seq: u64,
        device: &str,
        request: StreamRangeRequest,
        jobs: &Jobs,
        tasks: &mut JoinSet<()>,
    ) {
        let from = match jobs.start(seq, device, &request) {
            Start::AlreadyDone => return,
            Start::From(from) => from,
        };
        let download = Download {
            hub: self.hub.clone(),
            blobs: self.blobs.clone(),
            options: self.options.clone(),
            jobs: jobs.clone(),
            slots: self.slots.clone(),
            seq,
            device: device.to_owned(),
            file_id: request.file_id,
            from,
            to: request.to,
        };
        let handle = tasks.spawn(download.run());
        jobs.attach(seq, handle);
    }

    /// Stages one uploaded chunk; retries through blob and database outages, so the event
    /// counts as handled only once its bytes (and, for the final chunk, the link) are stored.
    async fn accept_chunk(&self, event: &Event, chunk: UploadFileChunk) {
        let device = event.device_id.as_str();
        let retry = backoff::forever(self.options.retry_first, self.options.retry_ceiling);
        let size = chunk.last.then(|| chunk.offset + chunk.data.len() as u64);
        let staged = UploadChunk {
            device,
            file_id: &chunk.file_id,
            upload_id: chunk.upload_id.as_deref(),
            offset: chunk.offset,
            data: bytes::Bytes::from(chunk.data),
            size,
            seq: event.sequence_number,
            time_ms: event.enqueued_ms,
        };
        let progress = (|| self.assembler.accept(staged.clone()))
            .retry(retry)
            .when(|error| !error.is_permanent())
            .notify(
                |error, delay| tracing::warn!(error = %ErrorChain(error), ?delay, device, "upload chunk not stored"),
            )
            .await;
        match progress {
            Ok(UploadProgress::Committed(upload)) => {
                self.link_upload(device, &chunk.file_id, &upload).await;
                self.upload_committed(device, &upload.path).await;
            }
            Ok(UploadProgress::Staged { .. }) => {}
            Ok(UploadProgress::Superseded) => tracing::debug!(
                device, file = %chunk.file_id, offset = chunk.offset,
                "chunk of a replaced upload dropped"
            ),
            Err(error) => tracing::warn!(
                error = %with_causes(&error), device, file = %chunk.file_id, "upload refused"
            ),
        }
    }

    /// Records where a committed upload is, so people find what a device sent: one record per
    /// upload, named by the event that completed it (written again unchanged after a replay);
    /// the newest record of a device and file id describes the stored file.
    async fn link_upload(&self, device: &str, file_id: &str, upload: &CommittedUpload) {
        let Some(history) = &self.history else { return };
        let mut record = doc! {
            "_id": format!("upload:{device}:{file_id}:{}", upload.seq),
            "deviceId": device,
            "time": DateTime::from_millis(i64::try_from(upload.time_ms).unwrap_or(i64::MAX)),
            "seq": i64::try_from(upload.seq).unwrap_or(i64::MAX),
            "kind": "upload",
            "fileId": file_id,
            "blob": { "container": self.blobs.uploads.name(), "path": &upload.path },
            "size": i64::try_from(upload.size).unwrap_or(i64::MAX),
        };
        if let Some(id) = &upload.upload_id {
            record.insert("uploadId", id);
        }
        let retry = backoff::forever(self.options.retry_first, self.options.retry_ceiling);
        (|| history.insert(LOGS, std::slice::from_ref(&record)))
            .retry(retry)
            .notify(|error, delay| tracing::warn!(error = %ErrorChain(error), ?delay, "upload link not written"))
            .await
            .ok();
    }
}
