//! Periodic uploads: files matching a pattern are streamed as D2C `UploadFileChunk`
//! messages, and every content of a file is an upload of its own.
//!
//! An upload is named after the recipe, the step, the file and the file's size and mtime
//! when the upload started, so a later recipe or a rewritten file never lands on an earlier
//! upload. A file that grows continues its upload with only the new bytes, as long as it
//! still starts with the bytes sent (checked by SHA-256); any other change starts a new
//! upload from byte 0. What was sent is persisted after each chunk, so an interrupted upload
//! continues where it stopped, under the same name.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cloudpillar_protocol::messages::{D2cMessage, UploadFileChunk};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::upload::{matching_files, open_regular, upload_file_id};
use crate::config::{Config, ZoneAction};
use crate::durable;
use crate::link::Link;
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
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        ctx.link.device.wait_not_busy().await;
        let mut record = read_record(&ctx.record);
        for file in matching_files(&pattern) {
            if cancel.is_cancelled() {
                return;
            }
            let key = file.display().to_string();
            let mut upload = record.get(&key).cloned().unwrap_or_default();
            let result = upload_round(&ctx, &file, &mut upload, &cancel, |upload| {
                record.insert(key.clone(), upload.clone());
                durable::write_json(&ctx.record, &record).map_err(std::io::Error::other)
            })
            .await;
            if let Err(error) = result {
                let file = file.display();
                tracing::warn!(%error, %file, "upload failed; retrying next round");
            }
        }
    }
}

fn read_record(path: &Path) -> BTreeMap<String, FileUpload> {
    match durable::read_json(path) {
        Ok(record) => record.unwrap_or_default(),
        Err(error) => {
            // A record from before uploads had their own names: start them again under new
            // names, which leaves the earlier uploads as they are.
            tracing::warn!(%error, "upload record unreadable; files are uploaded again");
            BTreeMap::new()
        }
    }
}

/// Sends what `file` has beyond `upload.sent`, or the whole file as a new upload when it no
/// longer starts with the bytes sent; `save` persists the record after every chunk.
async fn upload_round(
    ctx: &UploadContext,
    file: &Path,
    upload: &mut FileUpload,
    cancel: &CancellationToken,
    mut save: impl FnMut(&FileUpload) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut reader = open_regular(file)?;
    let seen = Seen::of(&reader.metadata()?);
    if upload.seen == Some(seen) {
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
    let mut hasher = Sha256::new();
    let continues = upload.sent > 0
        && upload.sent <= seen.size
        && hash_prefix(&mut reader, &mut hasher, upload.sent)? == upload.digest;
    if !continues && seen.size > 0 {
        let uploads = upload.uploads + 1;
        let start = format!("{}|{uploads}|{}|{}", ctx.scope, seen.size, seen.mtime_ns);
        *upload = FileUpload {
            id: upload_file_id(file, &start),
            uploads,
            ..FileUpload::default()
        };
        hasher = Sha256::new();
        reader.seek(SeekFrom::Start(0))?;
    }

    let chunk = ctx.config.transfer.upload_chunk_bytes;
    let mut buf = vec![0u8; chunk];
    while upload.sent < seen.size && !cancel.is_cancelled() {
        let offset = upload.sent;
        let want = usize::try_from((seen.size - offset).min(chunk as u64)).unwrap_or(chunk);
        reader.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        let last = offset + want as u64 >= seen.size;
        // The last chunk completes the upload on the backend: never for bytes read from a
        // file rewritten while it was read, which would be content the file never had.
        if last && !still_holds(&mut reader, seen, settled, &hasher)? {
            tracing::warn!(file = %file.display(), id = %upload.id,
                "file changed while it was read; it starts again as a new upload");
            return Ok(());
        }
        let message = D2cMessage::UploadFileChunk(UploadFileChunk {
            file_id: upload.id.clone(),
            offset,
            data: buf[..want].to_vec(),
            last,
        });
        super::hub::send(&ctx.link, &message, true).await;
        upload.sent += want as u64;
        upload.digest = hex::encode(hasher.clone().finalize());
        save(upload)?;
    }
    if upload.sent == seen.size && seen.settled() {
        upload.seen = Some(seen);
        save(upload)?;
    }
    Ok(())
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
