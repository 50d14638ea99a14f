//! Periodic uploads: files matching a pattern are streamed as D2C `UploadFileChunk`
//! messages, and every content of a file is an upload of its own.
//!
//! An upload is named after the recipe, the step, the file and the file's size and mtime
//! when the upload started, so a later recipe or a rewritten file never lands on an earlier
//! upload. A file that grows continues its upload with only the new bytes, as long as it
//! still starts with the bytes sent (checked by SHA-256); any other change starts a new
//! upload from byte 0. What was sent is persisted about once a second and after each round
//! (see `upload_record`), so an interrupted upload continues about where it stopped, under
//! the same name.

use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cloudpillar_protocol::messages::{D2cMessage, UploadFileChunk};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::upload::{matching_files, open_regular, upload_file_id};
use super::upload_record::{UploadRecord, blocking};
use crate::config::{Config, ZoneAction};
use crate::link::Link;
use crate::link::outbox::Hole;
use crate::zones::Zones;

/// A file whose mtime is at least this old is trusted not to change without a new mtime
/// (file system timestamps are coarser than the writes they stamp).
const SETTLED: Duration = Duration::from_secs(2);

/// What a periodic upload needs.
#[derive(Debug)]
pub struct UploadContext {
    /// Configuration (chunk size, strict mode).
    pub config: Arc<Config>,
    /// Zones for strict mode.
    pub zones: Arc<Zones>,
    /// The link to send on.
    pub link: Arc<Link>,
    /// Record of the uploads per file.
    pub record: PathBuf,
    /// `changeSpec.id|action path` of the step: part of every upload's name.
    pub scope: String,
}

/// The upload of one file's current content, as persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileUpload {
    /// Transfer id of the current upload.
    pub id: String,
    /// Uploads of this file the step started, the current one included.
    pub uploads: u32,
    /// Bytes of the current upload handed to the link.
    pub sent: u64,
    /// SHA-256 (hex) of those bytes: the file continues this upload only while it starts
    /// with them.
    pub digest: String,
    /// The file as last read, once its mtime had settled: while it is unchanged, nothing
    /// is read again.
    pub seen: Option<Seen>,
}

/// Size, mtime and inode of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Length in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode number.
    pub inode: u64,
}

impl Seen {
    fn of(meta: &Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }

    fn settled(self) -> bool {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
            .unwrap_or_default();
        now - self.mtime_ns >= i128::try_from(SETTLED.as_nanos()).unwrap_or(i128::MAX)
    }
}

/// Uploads every `interval_secs` until cancelled.
pub async fn run_periodic(
    ctx: UploadContext,
    pattern: PathBuf,
    interval_secs: u64,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(interval_secs.max(1)));
    let mut record = UploadRecord::load(ctx.record.clone()).await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        ctx.link.device.wait_not_busy().await;
        record.prune().await;
        let listed = pattern.clone();
        let files = blocking(move || Ok(matching_files(&listed))).await;
        for file in files.unwrap_or_default() {
            if cancel.is_cancelled() {
                break;
            }
            let key = file.display().to_string();
            let mut upload = record.get(&key);
            let result = upload_round(&ctx, &file, &mut upload, &mut record, &cancel).await;
            if let Err(error) = result {
                let file = file.display();
                tracing::warn!(%error, %file, "upload failed; retrying next round");
            }
        }
        if let Err(error) = record.flush().await {
            tracing::warn!(%error, "upload record not saved; sent chunks may be sent again");
        }
    }
    let _ = record.flush().await;
}

/// The open file of a round, with the digest of what was read of it.
struct Reading {
    reader: File,
    hasher: Sha256,
    buf: Vec<u8>,
}

/// Sends what `file` has beyond `upload.sent`, or the whole file as a new upload when it no
/// longer starts with the bytes sent; progress goes to `record` after every chunk. File
/// reads run off the async threads.
async fn upload_round(
    ctx: &UploadContext,
    file: &Path,
    upload: &mut FileUpload,
    record: &mut UploadRecord,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    let key = file.display().to_string();
    let path = file.to_owned();
    let (reader, seen) = blocking(move || {
        let reader = open_regular(&path)?;
        let seen = Seen::of(&reader.metadata()?);
        Ok((reader, seen))
    })
    .await?;
    // Chunks the full queue dropped are holes to send again (see `link::outbox`).
    let holes = ctx.link.outbox.holes(&upload.id);
    if upload.seen == Some(seen) && holes.is_empty() {
        return Ok(());
    }
    if crate::mode::strict(&ctx.config)
        && let Err(denial) = ctx.zones.check(ZoneAction::Upload, file, seen.size)
    {
        tracing::warn!(file = %file.display(), reason = %denial, "upload denied");
        ctx.link.reported.set(
            "lastUploadDenial",
            json!({ "file": file.display().to_string(), "ResultText": denial.to_string() }),
        );
        return Ok(());
    }

    // Whether the file can have changed since `seen` without a new mtime (see `SETTLED`).
    let settled = seen.settled();
    upload.seen = None;
    let (sent, digest) = (upload.sent, upload.digest.clone());
    let (mut reading, continues) = blocking(move || {
        let mut reader = reader;
        let mut hasher = Sha256::new();
        let continues =
            sent > 0 && sent <= seen.size && hash_prefix(&mut reader, &mut hasher, sent)? == digest;
        if !continues {
            hasher = Sha256::new();
            reader.seek(SeekFrom::Start(0))?;
        }
        let buf = Vec::new();
        Ok((
            Reading {
                reader,
                hasher,
                buf,
            },
            continues,
        ))
    })
    .await?;
    if continues {
        reading = resend_holes(ctx, &upload.id, upload.sent, reading, holes).await?;
    } else if seen.size > 0 {
        // The earlier upload stays unfinished: its holes no longer matter.
        for hole in holes {
            ctx.link
                .outbox
                .fill(&upload.id, hole)
                .map_err(std::io::Error::other)?;
        }
        let uploads = upload.uploads + 1;
        let start = format!("{}|{uploads}|{}|{}", ctx.scope, seen.size, seen.mtime_ns);
        *upload = FileUpload {
            id: upload_file_id(file, &start),
            uploads,
            ..FileUpload::default()
        };
    }

    let chunk = ctx.config.transfer.upload_chunk_bytes;
    while upload.sent < seen.size && !cancel.is_cancelled() {
        let offset = upload.sent;
        let want = usize::try_from((seen.size - offset).min(chunk as u64)).unwrap_or(chunk);
        let last = offset + want as u64 >= seen.size;
        let holds;
        (reading, holds) = blocking(move || read_chunk(reading, want, last, seen, settled)).await?;
        // The last chunk completes the upload on the backend: never for bytes read from a
        // file rewritten while it was read, which would be content the file never had.
        if !holds {
            tracing::warn!(file = %file.display(), id = %upload.id,
                "file changed while it was read; it starts again as a new upload");
            return Ok(());
        }
        let message = D2cMessage::UploadFileChunk(UploadFileChunk {
            // `upload.id` is new for every upload of the file, so it names the upload.
            file_id: upload.id.clone(),
            upload_id: None,
            offset,
            data: reading.buf.clone(),
            last,
        });
        // A chunk that could not be queued is not sent: the next round sends it again.
        super::hub::try_send(&ctx.link, &message, true)
            .await
            .map_err(std::io::Error::other)?;
        upload.sent += want as u64;
        upload.digest = hex::encode(reading.hasher.clone().finalize());
        record
            .update(&key, upload)
            .await
            .map_err(std::io::Error::other)?;
    }
    if upload.sent == seen.size && seen.settled() {
        upload.seen = Some(seen);
        record
            .update(&key, upload)
            .await
            .map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// Queues again the chunks of upload `id` that the full queue dropped, while there is room
/// for them (else they would only push out other chunks); each hole closes once its bytes are
/// queued. A hole past `sent` closes at once: the round sends those bytes anyway.
async fn resend_holes(
    ctx: &UploadContext,
    id: &str,
    sent: u64,
    mut reading: Reading,
    holes: Vec<Hole>,
) -> std::io::Result<Reading> {
    let other = std::io::Error::other;
    for hole in holes {
        if hole.offset + hole.len > sent {
            ctx.link.outbox.fill(id, hole).map_err(other)?;
            continue;
        }
        if !ctx.link.outbox.has_room() {
            break;
        }
        let data;
        (reading, data) = blocking(move || {
            let mut data = vec![0u8; usize::try_from(hole.len).unwrap_or(usize::MAX)];
            reading.reader.read_exact_at(&mut data, hole.offset)?;
            Ok((reading, data))
        })
        .await?;
        let message = D2cMessage::UploadFileChunk(UploadFileChunk {
            file_id: id.to_owned(),
            upload_id: None,
            offset: hole.offset,
            data,
            // Ends the upload only if nothing was sent after it meanwhile: a later round's
            // bytes make the upload longer than this hole's end.
            last: hole.last && hole.offset + hole.len == sent,
        });
        super::hub::try_send(&ctx.link, &message, true)
            .await
            .map_err(std::io::Error::other)?;
        ctx.link.outbox.fill(id, hole).map_err(other)?;
        tracing::info!(file_id = %id, offset = hole.offset, "dropped log chunk queued again");
    }
    Ok(reading)
}

/// Reads the next `want` bytes into `reading.buf`; for the `last` chunk also checks that the
/// file still holds what was read (see [`still_holds`]).
fn read_chunk(
    mut reading: Reading,
    want: usize,
    last: bool,
    seen: Seen,
    settled: bool,
) -> std::io::Result<(Reading, bool)> {
    reading.buf.resize(want, 0);
    reading.reader.read_exact(&mut reading.buf)?;
    reading.hasher.update(&reading.buf);
    let holds = !last || still_holds(&mut reading.reader, seen, settled, &reading.hasher)?;
    Ok((reading, holds))
}

/// Whether the file open as `reader` still holds the bytes `read` covers (all of it up to
/// `seen.size`): unchanged metadata of a file that had settled when the round began, else the
/// same bytes read again.
fn still_holds(
    reader: &mut File,
    seen: Seen,
    settled: bool,
    read: &Sha256,
) -> std::io::Result<bool> {
    if settled && Seen::of(&reader.metadata()?) == seen {
        return Ok(true);
    }
    reader.seek(SeekFrom::Start(0))?;
    match hash_prefix(reader, &mut Sha256::new(), seen.size) {
        Ok(again) => Ok(again == hex::encode(read.clone().finalize())),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(error) => Err(error),
    }
}

/// Feeds the first `len` bytes of `reader` to `hasher`; returns their digest in hex.
fn hash_prefix(reader: &mut File, hasher: &mut Sha256, len: u64) -> std::io::Result<String> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        reader.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(hex::encode(hasher.clone().finalize()))
}
