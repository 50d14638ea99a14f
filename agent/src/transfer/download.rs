//! One chunked download: request a range, write chunks at their offsets, check each
//! `VerifyRangeCRC`, verify the file's signature, then move it into place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_protocol::messages::{DownloadFileChunk, VerifyRangeCrc};
use cloudpillar_protocol::signing::{SignatureError, TrustStore};
use sha2::{Digest, Sha512};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::progress::{Partial, PartialError};
use super::{DownloadJob, ProgressSink};
use crate::engine::outcome::{StepOutcome, codes};
use crate::engine::report::LiveStep;
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

fn failed_io(e: PartialError) -> StepOutcome {
    StepOutcome::failed(codes::IO_ERROR, e.to_string())
}

fn live(job: &DownloadJob, partial: &Partial) -> LiveStep {
    let total = partial.progress.total;
    LiveStep {
        path: job.step.clone(),
        progress: total.filter(|t| *t > 0).map(|t| {
            u8::try_from(partial.progress.verified.saturating_mul(100) / t).unwrap_or(100)
        }),
        bytes: total.map(|t| (partial.progress.verified, t)),
        chunks: partial.chunk_counts(),
        text: Some(format!("downloading {}", job.source)),
    }
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
            () = cancel.cancelled() => {
                // F22: stop within one chunk, keep what is verified for a later resume.
                let text = "download cancelled; verified bytes kept";
                return StepOutcome::failed(codes::CANCELLED, text);
            }
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
            match finish(&ctx, &job, &mut partial) {
                Finish::Done(outcome) => return outcome,
                Finish::Again => ctx.requester.request(&file_id, 0).await,
            }
        }
    }
}

/// The partial file beside the destination.
pub fn partial_path(destination: &std::path::Path) -> PathBuf {
    let mut name = destination
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".cppart");
    destination.with_file_name(name)
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

enum Finish {
    Done(StepOutcome),
    Again,
}

fn give_up(partial: &Partial, why: &str) -> StepOutcome {
    let _ = std::fs::remove_file(partial.data_path());
    partial.discard_record();
    StepOutcome::failed(codes::INTEGRITY_MISMATCH, why)
}

fn finish(ctx: &DownloadContext, job: &DownloadJob, partial: &mut Partial) -> Finish {
    if let Some(sign) = &job.sign {
        match verify_file(&ctx.trust, partial.data_path(), sign) {
            Ok(()) => {}
            Err(Ok(error @ SignatureError::BadSignatureEncoding { .. })) => {
                let _ = std::fs::remove_file(partial.data_path());
                partial.discard_record();
                return Finish::Done(StepOutcome::failed(
                    error.code(),
                    format!("file sign refused: {error}"),
                ));
            }
            Err(Ok(error)) => {
                partial.progress.attempts += 1;
                let attempts = partial.progress.attempts;
                tracing::warn!(%error, attempts, "file signature does not verify");
                if partial.progress.attempts >= ctx.max_attempts {
                    return Finish::Done(give_up(partial, "file signature does not verify"));
                }
                return match partial.restart() {
                    Ok(()) => Finish::Again,
                    Err(e) => Finish::Done(failed_io(e)),
                };
            }
            Err(Err(e)) => {
                return Finish::Done(StepOutcome::failed(codes::IO_ERROR, e.to_string()));
            }
        }
    }
    let placed = std::fs::rename(partial.data_path(), &job.destination).and_then(|()| {
        crate::durable::sync_dir(
            job.destination
                .parent()
                .unwrap_or(std::path::Path::new("/")),
        )
    });
    if let Err(e) = placed {
        return Finish::Done(StepOutcome::failed(
            codes::IO_ERROR,
            format!("failed to place the file: {e}"),
        ));
    }
    partial.discard_record();
    Finish::Done(StepOutcome::succeeded(
        "FinishedTransit",
        "Finished streaming as the last chunk arrived.",
    ))
}

fn verify_file(
    trust: &TrustStore,
    path: &std::path::Path,
    sign: &str,
) -> Result<(), Result<SignatureError, std::io::Error>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(Err)?;
    let mut hasher = Sha512::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(Err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    trust.verify_digest(hasher, sign).map(|_| ()).map_err(Ok)
}
