//! Periodic uploads: files matching a pattern are streamed as D2C `UploadFileChunk`
//! messages; what was sent is persisted per file, so an interrupted upload continues
//! where it stopped and a growing log only sends what is new.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_protocol::messages::{D2cMessage, UploadFileChunk};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ZoneAction};
use crate::durable;
use crate::link::Link;
use crate::zones::Zones;

/// What a periodic upload needs.
#[derive(Debug)]
pub struct UploadContext {
    /// Configuration (chunk size, strict mode).
    pub config: Arc<Config>,
    /// Zones for strict mode.
    pub zones: Arc<Zones>,
    /// The link to send on.
    pub link: Arc<Link>,
    /// Record of bytes sent per file.
    pub record: PathBuf,
}

/// The files `pattern` matches: wildcards are allowed in the last component only.
pub fn matching_files(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
        return vec![];
    };
    let Ok(glob) = globset::Glob::new(&name.to_string_lossy()) else {
        return vec![];
    };
    let matcher = glob.compile_matcher();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| matcher.is_match(e.file_name()))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// The transfer id of an uploaded file: a short hash of its path, then its file name. The
/// backend files every upload under the sending device's own folder, so the id leaves the
/// device out.
pub fn upload_file_id(path: &Path) -> String {
    let digest = Sha256::digest(path.to_string_lossy().as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let name: String = path
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(120).collect())
        .unwrap_or_default();
    format!("{hash}-{name}")
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
        for file in matching_files(&pattern) {
            if cancel.is_cancelled() {
                return;
            }
            if let Err(error) = upload_new_bytes(&ctx, &file, &cancel).await {
                let file = file.display();
                tracing::warn!(%error, %file, "upload failed; retrying next round");
            }
        }
    }
}

async fn upload_new_bytes(
    ctx: &UploadContext,
    file: &Path,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    let size = std::fs::metadata(file)?.len();
    if crate::mode::strict(&ctx.config)
        && let Err(denial) = ctx.zones.check(ZoneAction::Upload, file, size)
    {
        tracing::warn!(file = %file.display(), reason = %denial, "upload denied");
        ctx.link.reported.set(
            "lastUploadDenial",
            json!({ "file": file.display().to_string(), "ResultText": denial.to_string() }),
        );
        return Ok(());
    }
    let key = file.display().to_string();
    let mut sent: BTreeMap<String, u64> = durable::read_json(&ctx.record)
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut offset = sent.get(&key).copied().unwrap_or(0);
    if offset > size {
        // The file was replaced by a shorter one: send it again from the start.
        offset = 0;
    }
    let file_id = upload_file_id(file);
    let chunk = ctx.config.transfer.upload_chunk_bytes;
    let mut reader = std::fs::File::open(file)?;
    reader.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; chunk];
    while offset < size && !cancel.is_cancelled() {
        let want = usize::try_from((size - offset).min(chunk as u64)).unwrap_or(chunk);
        reader.read_exact(&mut buf[..want])?;
        let last = offset + want as u64 >= size;
        let message = D2cMessage::UploadFileChunk(UploadFileChunk {
            file_id: file_id.clone(),
            offset,
            data: buf[..want].to_vec(),
            last,
        });
        super::hub::send(&ctx.link, &message, true).await;
        offset += want as u64;
        sent.insert(key.clone(), offset);
        durable::write_json(&ctx.record, &sent).map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// A one-off upload could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The file could not be read.
    #[error("failed to read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A chunk could not be queued on the link.
    #[error("failed to queue the chunk at {offset} of {file_id}: {reason}")]
    Queue {
        /// Transfer id.
        file_id: String,
        /// Offset of the chunk.
        offset: u64,
        /// Why.
        reason: String,
    },
}

/// Queues the whole of `path` as `UploadFileChunk` messages of at most `chunk` bytes under
/// `file_id`, none of them droppable; returns the number of chunks queued.
pub async fn upload_file(
    link: &Link,
    file_id: &str,
    path: &Path,
    chunk: usize,
) -> Result<u64, UploadError> {
    let read = |source| UploadError::Read {
        path: path.to_owned(),
        source,
    };
    let mut reader = std::fs::File::open(path).map_err(read)?;
    let size = reader.metadata().map_err(read)?.len();
    let chunk = chunk.clamp(1, cloudpillar_protocol::messages::MAX_UPLOAD_CHUNK);
    let mut buf = vec![0u8; chunk];
    let (mut offset, mut chunks) = (0u64, 0u64);
    loop {
        let want = usize::try_from((size - offset).min(chunk as u64)).unwrap_or(chunk);
        reader.read_exact(&mut buf[..want]).map_err(read)?;
        let last = offset + want as u64 >= size;
        let message = D2cMessage::UploadFileChunk(UploadFileChunk {
            file_id: file_id.to_owned(),
            offset,
            data: buf[..want].to_vec(),
            last,
        });
        super::hub::try_send(link, &message, false)
            .await
            .map_err(|reason| UploadError::Queue {
                file_id: file_id.to_owned(),
                offset,
                reason,
            })?;
        chunks += 1;
        offset += want as u64;
        if last {
            return Ok(chunks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_in_the_last_component() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "ExportedData_2023.05.01",
            "ExportedData_2023.05.02",
            "other.txt",
        ] {
            std::fs::write(dir.path().join(name), "x").expect("write");
        }
        let found = matching_files(&dir.path().join("ExportedData_2023.05.*"));
        let names: Vec<String> = found
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into())
            .collect();
        assert_eq!(
            names,
            ["ExportedData_2023.05.01", "ExportedData_2023.05.02"]
        );
        assert!(matching_files(&dir.path().join("missing/*.log")).is_empty());
    }

    #[test]
    fn upload_ids_are_short_and_stable() {
        let id = upload_file_id(Path::new("/var/log/install.log"));
        assert!(
            !id.contains('/') && id.ends_with("-install.log"),
            "one name, no folders: {id}"
        );
        assert_eq!(id, upload_file_id(Path::new("/var/log/install.log")));
        assert_ne!(id, upload_file_id(Path::new("/tmp/install.log")));
        assert!(id.len() <= cloudpillar_protocol::messages::MAX_FILE_ID_BYTES);
    }
}
