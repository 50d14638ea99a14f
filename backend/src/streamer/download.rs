//! Sending one requested range of a file to one device.
//!
//! The range is cut into CRC ranges of [`StreamerOptions::crc_range`] bytes. Each CRC range is
//! read from its container once, sent as `DownloadFileChunk` messages of at most
//! [`MAX_RAW_CHUNK`] raw bytes in offset order, then closed by a `VerifyRangeCRC` message.
//! Progress is recorded only after a `VerifyRangeCRC` is queued, so a restarted streamer
//! resends at most one CRC range plus what was in flight. The next CRC range is read while
//! the current one is sent. Flow control and fair sharing are in [`super::window`].

use cloudpillar_protocol::causes::ErrorChain;
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_protocol::crc::crc32;
use cloudpillar_protocol::messages::{
    C2dMessage, DownloadFileChunk, MAX_RAW_CHUNK, MESSAGE_TYPE_PROPERTY, VerifyRangeCrc,
};
use tokio::time::Instant;

use super::window::{SendSlots, Window};
use super::{Jobs, StreamerOptions};
use crate::blob::{BlobError, BlobStores, Container};
use crate::hub_link::{C2dSend, HubLink};

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
    pub(super) slots: SendSlots,
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
        if self.from >= end {
            // Nothing to send: one empty chunk carrying the size answers at once, so a device
            // asking from its end finishes and one asking past it fails without a timeout.
            let empty = C2dMessage::DownloadFileChunk(DownloadFileChunk {
                file_id: self.file_id.clone(),
                offset: self.from.min(size),
                data: Vec::new(),
                total_size: Some(size),
            });
            let message_id = format!("cp-{}-empty-{}", self.seq, self.from);
            Window::new(self)
                .send_all([outgoing(&empty, message_id)])
                .await?;
            return Ok(0);
        }
        let step = self.options.crc_range.max(1);
        let read = |start: u64| {
            let range = start..end.min(start.saturating_add(step));
            async move {
                let data = self
                    .retry_blob(|| container.read_range(path, range.clone()))
                    .await?;
                Ok::<_, Stopped>((range, data))
            }
        };
        let mut window = Window::new(self);
        let pace = Pace::new(self.options.rate_limit);
        let mut current = Some(read(self.from).await?);
        while let Some((range, data)) = current.take() {
            // Send this CRC range's chunks while the next range is read.
            let upcoming = (range.end < end).then(|| read(range.end));
            let chunks = self.chunks(range.start, &data, size);
            let (sent, next) = tokio::join!(
                window.send_all(chunks),
                futures::future::OptionFuture::from(upcoming)
            );
            sent?;
            pace.wait(range.end - self.from).await;
            // Its CRC only once every chunk of the range is queued.
            let verify = C2dMessage::VerifyRangeCrc(VerifyRangeCrc {
                file_id: self.file_id.clone(),
                range_start: range.start,
                range_end: range.end,
                crc: crc32(&data),
            });
            let verify = outgoing(&verify, format!("cp-{}-crc-{}", self.seq, range.end));
            window.send_all([verify]).await?;
            self.jobs.advance(self.seq, range.end);
            current = next.transpose()?;
        }
        Ok(end.saturating_sub(self.from))
    }

    /// The `DownloadFileChunk` messages of the CRC range at `start`, encoded one at a time as
    /// the window takes them, so at most the sends in flight are held encoded.
    fn chunks<'d>(
        &'d self,
        start: u64,
        data: &'d [u8],
        size: u64,
    ) -> impl Iterator<Item = Result<C2dSend, Stopped>> + 'd {
        let chunk = self.options.chunk_size.clamp(1, MAX_RAW_CHUNK);
        data.chunks(chunk).enumerate().map(move |(index, piece)| {
            let offset = start + (index * chunk) as u64;
            let message = C2dMessage::DownloadFileChunk(DownloadFileChunk {
                file_id: self.file_id.clone(),
                offset,
                data: piece.to_vec(),
                total_size: Some(size),
            });
            outgoing(&message, format!("cp-{}-{offset}", self.seq))
        })
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
                    tracing::warn!(error = %ErrorChain(&error), ?delay, file = %self.file_id, "patch read failed");
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
