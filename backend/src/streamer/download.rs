//! Sending one requested range of a file to one device.
//!
//! The range is cut into CRC ranges of [`StreamerOptions::crc_range`] bytes. Each CRC range is
//! read from its container once, sent as `DownloadFileChunk` messages of at most
//! [`MAX_RAW_CHUNK`] raw bytes in offset order, then closed by a `VerifyRangeCRC` message.
//! Progress is recorded only after a `VerifyRangeCRC` is queued, so a restarted streamer
//! resends at most one CRC range plus what was in flight.
//!
//! Flow control: the device's C2D queue never holds more than `max_pending` of our messages
//! beyond what it already held. Before sending, the job reads the queue depth from the hub and
//! sends only into the room left; when the queue is full it polls until the device has taken
//! messages off. A hub that cannot tell its queue depth refuses sends past its own limit, and
//! the job then waits and retries the same message.

use std::sync::Arc;
use std::time::Duration;

use cloudpillar_protocol::crc::crc32;
use cloudpillar_protocol::messages::{
    C2dMessage, DownloadFileChunk, MAX_RAW_CHUNK, MESSAGE_TYPE_PROPERTY, VerifyRangeCrc,
};
use tokio::time::Instant;

use super::{Jobs, StreamerOptions};
use crate::blob::{BlobError, BlobStores, Container};
use crate::hub_link::{C2dSend, HubLink, HubLinkError};

/// File ids starting with this name a device's own upload.
pub const UPLOADS_PREFIX: &str = "uploads/";

/// Why a download stopped before its end.
#[derive(Debug, thiserror::Error)]
pub(super) enum Stopped {
    /// The device was deleted from the hub.
    #[error("device no longer exists")]
    DeviceGone,
    /// The device took no message off its queue for the stall timeout.
    #[error("device queue did not move for {0:?}")]
    Stalled(Duration),
    /// The file is not in its container (or its name is not a valid path).
    #[error("file not available")]
    NoFile(#[source] Box<BlobError>),
    /// The file id names another device's upload.
    #[error("file belongs to another device")]
    NotOwnUpload,
    /// A message could not be encoded (a file id over the protocol's limit).
    #[error("message refused by the protocol")]
    Encode(#[source] cloudpillar_protocol::messages::MessageError),
}

/// One range request being served.
#[derive(Debug)]
pub(super) struct Download {
    pub(super) hub: Arc<dyn HubLink>,
    pub(super) blobs: BlobStores,
    pub(super) options: StreamerOptions,
    pub(super) jobs: Jobs,
    pub(super) seq: u64,
    pub(super) device: String,
    pub(super) file_id: String,
    pub(super) from: u64,
    pub(super) to: Option<u64>,
}

impl Download {
    /// Sends the range and marks the job done, whatever the outcome.
    pub(super) async fn run(self) {
        match self.send_range().await {
            Ok(sent) => tracing::info!(
                device = %self.device, file = %self.file_id, seq = self.seq, bytes = sent,
                "range streamed"
            ),
            Err(reason) => tracing::warn!(
                device = %self.device, file = %self.file_id, seq = self.seq, %reason,
                "range request dropped"
            ),
        }
        self.jobs.finish(self.seq, &self.device, &self.file_id);
    }

    async fn send_range(&self) -> Result<u64, Stopped> {
        let (container, path) = self.source()?;
        let size = self.retry_blob(|| container.size(path)).await?;
        let end = self.to.map_or(size, |to| to.min(size));
        let chunk = self.options.chunk_size.clamp(1, MAX_RAW_CHUNK);
        let mut window = Window::new(self);
        let pace = Pace::new(self.options.rate_limit);
        let mut position = self.from;
        while position < end {
            // Read one CRC range, send its chunks, then its CRC.
            let range_end = end.min(position.saturating_add(self.options.crc_range.max(1)));
            let range = position..range_end;
            let data = self
                .retry_blob(|| container.read_range(path, range.clone()))
                .await?;
            let mut chunks = Vec::with_capacity(data.len().div_ceil(chunk));
            for (index, piece) in data.chunks(chunk).enumerate() {
                let offset = position + (index * chunk) as u64;
                let message = C2dMessage::DownloadFileChunk(DownloadFileChunk {
                    file_id: self.file_id.clone(),
                    offset,
                    data: piece.to_vec(),
                    total_size: Some(size),
                });
                chunks.push(outgoing(&message, format!("cp-{}-{offset}", self.seq))?);
            }
            window.send_all(&chunks).await?;
            pace.wait(range_end - self.from).await;
            let verify = C2dMessage::VerifyRangeCrc(VerifyRangeCrc {
                file_id: self.file_id.clone(),
                range_start: position,
                range_end,
                crc: crc32(&data),
            });
            let verify = outgoing(&verify, format!("cp-{}-crc-{range_end}", self.seq))?;
            window.send_all(&[verify]).await?;
            position = range_end;
            self.jobs.advance(self.seq, position);
        }
        Ok(end.saturating_sub(self.from))
    }

    /// The container and path a file id names: `uploads/{device}/...` is one of the
    /// requesting device's own uploads (a device reads back what it sent, e.g. for
    /// diagnostics); anything else is a path in the patches container.
    fn source(&self) -> Result<(&Container, &str), Stopped> {
        match self.file_id.strip_prefix(UPLOADS_PREFIX) {
            Some(path)
                if path
                    .strip_prefix(self.device.as_str())
                    .is_some_and(|r| r.starts_with('/')) =>
            {
                Ok((&self.blobs.uploads, path))
            }
            Some(_) => Err(Stopped::NotOwnUpload),
            None => Ok((&self.blobs.patches, &self.file_id)),
        }
    }

    /// Retries a blob read through outages; a missing file or bad path ends the job.
    async fn retry_blob<T, F, Fut>(&self, read: F) -> Result<T, Stopped>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, BlobError>>,
    {
        let mut delay = self.options.retry_first;
        loop {
            match read().await {
                Ok(value) => return Ok(value),
                Err(error @ (BlobError::NotFound { .. } | BlobError::InvalidPath { .. })) => {
                    return Err(Stopped::NoFile(Box::new(error)));
                }
                Err(error) => {
                    tracing::warn!(%error, ?delay, file = %self.file_id, "patch read failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.options.retry_ceiling);
                }
            }
        }
    }
}

/// Holds a download to its byte rate: after each CRC range, waits until the bytes sent so far
/// are within the limit since the download started.
struct Pace {
    started: Instant,
    bytes_per_sec: Option<u64>,
}

impl Pace {
    fn new(bytes_per_sec: Option<u64>) -> Self {
        Self {
            started: Instant::now(),
            bytes_per_sec: bytes_per_sec.filter(|rate| *rate > 0),
        }
    }

    async fn wait(&self, sent: u64) {
        if let Some(rate) = self.bytes_per_sec {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(self.started + due).await;
        }
    }
}

/// A protocol message as the hub takes it.
fn outgoing(message: &C2dMessage, message_id: String) -> Result<C2dSend, Stopped> {
    let body = message.encode().map_err(Stopped::Encode)?;
    let properties = [(
        MESSAGE_TYPE_PROPERTY.to_owned(),
        message.message_type().to_owned(),
    )]
    .into();
    Ok(C2dSend {
        body,
        properties,
        message_id,
    })
}

/// Room left in one device's C2D queue.
struct Window<'a> {
    job: &'a Download,
    room: usize,
    last_progress: Instant,
}

impl<'a> Window<'a> {
    fn new(job: &'a Download) -> Self {
        Self {
            job,
            room: 0,
            last_progress: Instant::now(),
        }
    }

    /// Queues `messages` in order, never more at once than the queue has room for, with up to
    /// `send_ahead` sends in flight. Every message is queued when this returns.
    ///
    /// Sends in flight start in order; the embedded hub commits them in that order, while over
    /// the REST API concurrent sends may land out of offset order within a CRC range (the
    /// `VerifyRangeCRC` always comes after all of them).
    async fn send_all(&mut self, messages: &[C2dSend]) -> Result<(), Stopped> {
        let mut sent = 0;
        while sent < messages.len() {
            if self.room == 0 {
                self.wait_for_room().await?;
            }
            let ahead = self.job.options.send_ahead.max(1);
            let batch = &messages[sent..messages.len().min(sent + self.room.min(ahead))];
            let results = futures::future::join_all(batch.iter().map(|m| self.send_one(m))).await;
            results.into_iter().collect::<Result<Vec<()>, Stopped>>()?;
            self.room -= batch.len();
            sent += batch.len();
            self.last_progress = Instant::now();
        }
        Ok(())
    }

    /// Queues one message, waiting out a full queue and retrying transient failures.
    async fn send_one(&self, message: &C2dSend) -> Result<(), Stopped> {
        let mut delay = self.job.options.retry_first;
        loop {
            match self
                .job
                .hub
                .send_c2d(&self.job.device, message.clone())
                .await
            {
                Ok(()) => return Ok(()),
                Err(HubLinkError::QueueFull { .. }) => {
                    self.check_stall()?;
                    tokio::time::sleep(self.job.options.poll_ceiling).await;
                }
                Err(HubLinkError::DeviceNotFound { .. }) => return Err(Stopped::DeviceGone),
                Err(error) => {
                    tracing::warn!(%error, ?delay, device = %self.job.device, "c2d send failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.job.options.retry_ceiling);
                }
            }
        }
    }
    /// Polls the queue depth until it is below `max_pending`.
    async fn wait_for_room(&mut self) -> Result<(), Stopped> {
        let max = self.job.options.max_pending.max(1);
        let mut poll = Duration::from_millis(1);
        loop {
            match self.job.hub.c2d_pending(&self.job.device).await {
                Ok(Some(pending)) if pending < max => {
                    self.room = max - pending;
                    return Ok(());
                }
                Ok(Some(_)) => self.check_stall()?,
                // The hub cannot tell: send until it refuses.
                Ok(None) => {
                    self.room = max;
                    return Ok(());
                }
                Err(HubLinkError::DeviceNotFound { .. }) => return Err(Stopped::DeviceGone),
                Err(error) => {
                    tracing::warn!(%error, device = %self.job.device, "queue depth unknown")
                }
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(self.job.options.poll_ceiling);
        }
    }

    fn check_stall(&self) -> Result<(), Stopped> {
        let waited = self.last_progress.elapsed();
        if waited >= self.job.options.stall_timeout {
            return Err(Stopped::Stalled(waited));
        }
        Ok(())
    }
}
