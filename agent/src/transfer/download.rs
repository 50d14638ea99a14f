//! One chunked download: request a range, write chunks at their offsets, check each
//! `VerifyRangeCRC`, verify the file's signature, then move it into place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_protocol::messages::{DownloadFileChunk, VerifyRangeCrc};
use cloudpillar_protocol::signing::TrustStore;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use super::finish::partial_path;
use super::finish::{Finish, cancelled, failed_io, finish, give_up, live};
use super::progress::{Partial, PartialError};
use super::{DownloadJob, ProgressSink};
use crate::engine::outcome::{StepOutcome, codes};
use crate::state::{Device, DeviceState};

/// A C2D message for a running download; `done` fires once its effect is on disk.
#[derive(Debug)]
pub enum ChunkEvent {
    /// File bytes.
    Chunk(DownloadFileChunk, oneshot::Sender<()>),
    /// A range checksum.
    Verify(VerifyRangeCrc, oneshot::Sender<()>),
}

/// Asks the streamer for the bytes of `file_id` from `from`.
#[async_trait::async_trait]
pub trait RangeRequester: Send + Sync + std::fmt::Debug {
    /// Sends a StreamRange request.
    async fn request(&self, file_id: &str, from: u64);
}

/// What a download needs besides its job.
#[derive(Debug)]
pub struct DownloadContext {
    /// Where progress records live.
    pub record: PathBuf,
    /// Trusted file signers.
    pub trust: TrustStore,
    /// Integrity attempts before failing (F12).
    pub max_attempts: u32,
    /// Seconds without traffic before the range is asked for again.
    pub stall: Duration,
    /// Device state, to re-request after BUSY.
    pub device: Arc<Device>,
    /// Sends range requests.
    pub requester: Arc<dyn RangeRequester>,
}

/// Runs the download until it succeeds, fails or is cancelled.
pub async fn run(
    ctx: DownloadContext,
    job: DownloadJob,
    mut events: mpsc::Receiver<ChunkEvent>,
    progress: ProgressSink,
    cancel: CancellationToken,
) -> StepOutcome {
    let file_id = job.source.clone();
    let data_path = partial_path(&job.destination);
    let mut partial = match Partial::open(&ctx.record, &data_path, &file_id) {
        Ok(p) => p,
        Err(e) => return failed_io(e),
    };
    progress(live(&job, &partial));
    tracing::info!(
        file_id,
        from = partial.progress.verified,
        "requesting the file from its verified length"
    );
    ctx.requester
        .request(&file_id, partial.progress.verified)
        .await;
    let mut states = ctx.device.subscribe();
    let mut reported_at = partial.progress.verified;

    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return cancelled(),
            changed = states.changed() => {
                if changed.is_ok() && *states.borrow_and_update() != DeviceState::Busy {
                    ctx.requester.request(&file_id, partial.progress.verified).await;
                }
                continue;
            }
            () = tokio::time::sleep(ctx.stall) => {
                if !ctx.device.is_busy() {
                    let from = partial.progress.verified;
                    tracing::info!(file_id, from, "download stalled; asking again");
                    ctx.requester.request(&file_id, partial.progress.verified).await;
                }
                continue;
            }
            event = events.recv() => match event {
                Some(event) => event,
                None => return StepOutcome::failed(codes::CANCELLED, "transfer service stopped"),
            },
        };
        match event {
            ChunkEvent::Chunk(chunk, done) => {
                let end = chunk.offset + chunk.data.len() as u64;
                if let Some(total) = chunk.total_size {
                    partial.progress.total = Some(total);
                }
                if chunk.offset > partial.written {
                    tracing::debug!(offset = chunk.offset, "chunk beyond a gap ignored");
                } else if end > partial.progress.verified
                    && let Err(e) = partial.write_chunk(chunk.offset, &chunk.data)
                {
                    return failed_io(e);
                }
                let _ = done.send(());
            }
            ChunkEvent::Verify(range, done) => {
                let result = check_range(&mut partial, &range);
                let _ = done.send(());
                match result {
                    Ok(true) => {}
                    Ok(false) => {
                        partial.progress.attempts += 1;
                        tracing::warn!(
                            file_id,
                            attempts = partial.progress.attempts,
                            "range CRC mismatch"
                        );
                        if partial.progress.attempts >= ctx.max_attempts {
                            return give_up(&partial, "range CRC mismatch on every attempt");
                        }
                        if let Err(e) = partial.rewind_to_verified() {
                            return failed_io(e);
                        }
                        ctx.requester
                            .request(&file_id, partial.progress.verified)
                            .await;
                    }
                    Err(e) => return failed_io(e),
                }
            }
        }
        if partial.progress.verified != reported_at {
            reported_at = partial.progress.verified;
            progress(live(&job, &partial));
        }
        if partial
            .progress
            .total
            .is_some_and(|t| partial.progress.verified >= t)
        {
            match finish(&ctx.trust, ctx.max_attempts, &job, &mut partial) {
                Finish::Done(outcome) => return outcome,
                Finish::Again => ctx.requester.request(&file_id, 0).await,
            }
        }
    }
}

fn check_range(partial: &mut Partial, range: &VerifyRangeCrc) -> Result<bool, PartialError> {
    if range.range_end > partial.written || range.range_start > partial.progress.verified {
        // Not all of it is here (or it skips unverified bytes): nothing to judge yet.
        return Ok(true);
    }
    if range.range_end <= partial.progress.verified {
        return Ok(true);
    }
    let crc = partial.crc_of(range.range_start, range.range_end)?;
    if crc == range.crc {
        partial.verify_to(range.range_end)?;
        Ok(true)
    } else {
        Ok(false)
    }
}
