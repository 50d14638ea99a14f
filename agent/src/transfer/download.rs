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

/// Range checksums kept while their chunks are still coming.
const MAX_WAITING_RANGES: usize = 64;

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
    // Range checksums that arrived before all of their chunks.
    let mut waiting: Vec<VerifyRangeCrc> = Vec::new();

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
                if let Some(total) = chunk.total_size {
                    if let Err(why) = still_fits(total, partial.progress.verified) {
                        let _ = done.send(());
                        return give_up(&partial, &why);
                    }
                    partial.progress.total = Some(total);
                    // Bytes that came past the end before the size was known are not the file.
                    if let Err(e) = partial.cut_to(total) {
                        return failed_io(e);
                    }
                }
                if let Err(e) = write_chunk(&mut partial, &chunk) {
                    return failed_io(e);
                }
                let _ = done.send(());
            }
            ChunkEvent::Verify(range, done) => {
                // Judged below once its bytes are all here; a lost one only means the range is
                // asked for again after a stall.
                let _ = done.send(());
                if waiting.len() == MAX_WAITING_RANGES {
                    waiting.remove(0);
                }
                waiting.push(range);
            }
        }
        if let Err(outcome) = settle(&ctx, &job, &mut partial, &mut waiting).await {
            return outcome;
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

/// Refuses a file now smaller than the bytes already verified of it: the name holds another
/// file, so resuming cannot work (the streamer answers such a request with one empty chunk).
fn still_fits(total: u64, verified: u64) -> Result<(), String> {
    if total < verified {
        return Err(format!(
            "the file on the server has {total} bytes, fewer than the {verified} already \
             verified here: it was replaced under the same name"
        ));
    }
    Ok(())
}

/// Writes the part of `chunk` past the verified length, at its offset: chunks may come in
/// any order, and verified bytes are never written again. A chunk that ends past the
/// announced size is ignored.
fn write_chunk(partial: &mut Partial, chunk: &DownloadFileChunk) -> Result<(), PartialError> {
    let end = chunk.offset + chunk.data.len() as u64;
    if let Some(total) = partial.progress.total.filter(|total| end > *total) {
        tracing::warn!(
            offset = chunk.offset,
            end,
            total,
            "chunk past the end of the file ignored"
        );
        return Ok(());
    }
    let verified = partial.progress.verified;
    if end <= verified {
        return Ok(());
    }
    let skip = usize::try_from(verified.saturating_sub(chunk.offset)).unwrap_or(usize::MAX);
    partial.write_chunk(chunk.offset.max(verified), &chunk.data[skip..])
}

/// Judges every waiting range checksum whose bytes are all on disk and start within the
/// verified length, in whatever order chunks and checksums came. On a mismatch the unverified
/// bytes are dropped and asked for again, and after `max_attempts` the download fails (F12):
/// `Err` ends it.
async fn settle(
    ctx: &DownloadContext,
    job: &DownloadJob,
    partial: &mut Partial,
    waiting: &mut Vec<VerifyRangeCrc>,
) -> Result<(), StepOutcome> {
    loop {
        let verified = partial.progress.verified;
        let total = partial.progress.total;
        // A check that reaches past the announced size cannot be of this file.
        waiting.retain(|range| {
            range.range_end > verified && total.is_none_or(|total| range.range_end <= total)
        });
        let Some(at) = waiting.iter().position(|range| {
            range.range_start <= verified && partial.holds(range.range_start, range.range_end)
        }) else {
            return Ok(());
        };
        let range = waiting.swap_remove(at);
        if check_range(partial, &range).map_err(failed_io)? {
            continue;
        }
        partial.progress.attempts += 1;
        tracing::warn!(
            file_id = job.source,
            attempts = partial.progress.attempts,
            "range CRC mismatch"
        );
        if partial.progress.attempts >= ctx.max_attempts {
            return Err(give_up(partial, "range CRC mismatch on every attempt"));
        }
        partial.rewind_to_verified().map_err(failed_io)?;
        waiting.clear();
        ctx.requester
            .request(&job.source, partial.progress.verified)
            .await;
        return Ok(());
    }
}

/// Compares the CRC of a range whose bytes are all on disk and marks it verified when it
/// matches.
fn check_range(partial: &mut Partial, range: &VerifyRangeCrc) -> Result<bool, PartialError> {
    let crc = partial.crc_of(range.range_start, range.range_end)?;
    if crc == range.crc {
        partial.verify_to(range.range_end)?;
        Ok(true)
    } else {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use cloudpillar_protocol::crc::crc32;

    use super::*;
    use crate::reported::Reported;
    use crate::state::StateStore;

    const FILE: &str = "patches/out-of-order.bin";
    const CHUNK: usize = 48 * 1024;

    /// Remembers the ranges the download asked for; nothing answers them.
    #[derive(Debug, Default)]
    struct Asked(Mutex<Vec<u64>>);

    #[async_trait::async_trait]
    impl RangeRequester for Asked {
        async fn request(&self, _file_id: &str, from: u64) {
            self.0.lock().expect("asked").push(from);
        }
    }

    fn content() -> Vec<u8> {
        (0..2 * CHUNK + 30_000)
            .map(|i| u8::try_from(i * 7 % 251).expect("byte"))
            .collect()
    }

    fn chunk(data: &[u8], index: usize) -> ChunkEvent {
        let start = index * CHUNK;
        let end = (start + CHUNK).min(data.len());
        let chunk = DownloadFileChunk {
            file_id: FILE.to_owned(),
            offset: start as u64,
            data: data[start..end].to_vec(),
            total_size: Some(data.len() as u64),
        };
        ChunkEvent::Chunk(chunk, oneshot::channel().0)
    }

    fn verify(data: &[u8], crc: u32) -> ChunkEvent {
        let range = VerifyRangeCrc {
            file_id: FILE.to_owned(),
            range_start: 0,
            range_end: data.len() as u64,
            crc,
        };
        ChunkEvent::Verify(range, oneshot::channel().0)
    }

    /// Runs a download fed `events` in that order; its outcome within a few seconds, the
    /// ranges it asked for and the file it left.
    async fn download(events: Vec<ChunkEvent>) -> (Option<StepOutcome>, Vec<u64>, Vec<u8>) {
        let dir = tempfile::tempdir().expect("dir");
        let store = StateStore::open(dir.path()).expect("state");
        let device = Device::new(store, Arc::new(Reported::open(dir.path())));
        let asked = Arc::new(Asked::default());
        let ctx = DownloadContext {
            record: dir.path().join("record.json"),
            trust: TrustStore::default(),
            max_attempts: 3,
            stall: Duration::from_secs(60),
            device: Arc::new(device),
            requester: asked.clone(),
        };
        let job = DownloadJob {
            step: "install/download".into(),
            recipe_id: "r1".into(),
            source: FILE.into(),
            destination: dir.path().join("out.bin"),
            sign: None,
            rewind: None,
            protocol: "iotmqtt".into(),
        };
        let (tx, rx) = mpsc::channel(16);
        for event in events {
            tx.send(event).await.expect("queued");
        }
        let progress: ProgressSink = Arc::new(|_| {});
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            run(ctx, job, rx, progress, CancellationToken::new()),
        )
        .await
        .ok();
        let written = std::fs::read(dir.path().join("out.bin")).unwrap_or_default();
        let asked = asked.0.lock().expect("asked").clone();
        (outcome, asked, written)
    }

    #[tokio::test]
    async fn chunks_of_a_range_may_come_in_any_order() {
        let data = content();
        let crc = crc32(&data);
        for order in [[1, 0, 2], [2, 1, 0], [0, 2, 1]] {
            let mut events: Vec<ChunkEvent> = order.iter().map(|&i| chunk(&data, i)).collect();
            events.push(verify(&data, crc));
            let (outcome, asked, written) = download(events).await;
            let outcome = outcome.unwrap_or_else(|| panic!("order {order:?}: no outcome"));
            assert!(outcome.is_success(), "order {order:?}: {outcome:?}");
            assert_eq!(asked, [0], "order {order:?}: asked only once");
            assert!(written == data, "order {order:?}: file differs");
        }
    }

    #[tokio::test]
    async fn a_range_checksum_before_its_chunks_is_judged_once_they_are_all_here() {
        let data = content();
        let events = vec![
            verify(&data, crc32(&data)),
            chunk(&data, 2),
            chunk(&data, 0),
            chunk(&data, 1),
        ];
        let (outcome, _, written) = download(events).await;
        assert!(outcome.expect("outcome").is_success());
        assert!(written == data, "file differs");
    }

    #[tokio::test]
    async fn a_wrong_checksum_over_out_of_order_chunks_asks_again_from_the_verified_length() {
        let data = content();
        let events = vec![
            chunk(&data, 1),
            chunk(&data, 0),
            chunk(&data, 2),
            verify(&data, crc32(&data) ^ 1),
        ];
        let (outcome, asked, _) = download(events).await;
        assert!(outcome.is_none(), "still waiting for the bytes again");
        assert_eq!(asked, [0, 0], "asked again from byte 0 after the mismatch");
    }

    #[tokio::test]
    async fn bytes_past_the_end_that_came_before_the_size_was_known_are_dropped() {
        let data = content();
        let stray = DownloadFileChunk {
            file_id: FILE.to_owned(),
            offset: data.len() as u64,
            data: vec![0xAA; 1_000],
            total_size: None,
        };
        let mut events = vec![ChunkEvent::Chunk(stray, oneshot::channel().0)];
        events.extend([chunk(&data, 0), chunk(&data, 1), chunk(&data, 2)]);
        events.push(verify(&data, crc32(&data)));
        let (outcome, _, written) = download(events).await;
        assert!(outcome.expect("outcome").is_success());
        assert_eq!(written.len(), data.len(), "nothing past the announced size");
        assert!(written == data, "file differs");
    }

    #[tokio::test]
    async fn a_chunk_past_the_announced_size_is_ignored() {
        let data = content();
        let mut events = vec![chunk(&data, 0), chunk(&data, 1), chunk(&data, 2)];
        let stray = DownloadFileChunk {
            file_id: FILE.to_owned(),
            offset: data.len() as u64,
            data: vec![0xAA; 10],
            total_size: Some(data.len() as u64),
        };
        events.insert(1, ChunkEvent::Chunk(stray, oneshot::channel().0));
        events.push(verify(&data, crc32(&data)));
        let (outcome, _, written) = download(events).await;
        assert!(outcome.expect("outcome").is_success());
        assert!(written == data, "file differs");
    }

    #[tokio::test]
    async fn a_file_now_smaller_than_the_verified_bytes_fails_the_step_with_both_sizes() {
        let data = content();
        let verified = 2 * CHUNK;
        let range = VerifyRangeCrc {
            file_id: FILE.to_owned(),
            range_start: 0,
            range_end: verified as u64,
            crc: crc32(&data[..verified]),
        };
        // The streamer's answer to a request past the end of a 1000 byte file.
        let end = DownloadFileChunk {
            file_id: FILE.to_owned(),
            offset: 1000,
            data: Vec::new(),
            total_size: Some(1000),
        };
        let events = vec![
            chunk(&data, 0),
            chunk(&data, 1),
            ChunkEvent::Verify(range, oneshot::channel().0),
            ChunkEvent::Chunk(end, oneshot::channel().0),
        ];
        let (outcome, _, written) = download(events).await;
        let outcome = outcome.expect("failed at once, not after a timeout");
        assert!(!outcome.is_success());
        assert_eq!(outcome.code, codes::INTEGRITY_MISMATCH);
        assert!(
            outcome.text.contains("1000 bytes") && outcome.text.contains(&verified.to_string()),
            "{}",
            outcome.text
        );
        assert!(written.is_empty(), "nothing placed");
    }
}
