//! Reassembly of files devices upload in chunks.
//!
//! Each chunk is staged as its own object in the state container, named by offset and length,
//! so a duplicate overwrites itself with the same bytes and chunks may arrive in any order:
//! `upload-staging/{device}/{file}/{offset}-{len}` for a chunk without an upload id, and
//! `upload-parts/{device}/{upload id}/{file}/{offset}-{len}` for one with. Once the staged
//! chunks cover `[0, size)`, they are streamed in offset order into one block write of
//! `uploads/{device}/{file}`, committed, recorded in the file's commit marker
//! (`upload-commits/{device}/{file}.json`) and the staging objects are deleted.
//!
//! The commit marker makes a finished upload final: a chunk of an upload it lists (a late
//! duplicate, or a replay after a restart) is dropped without being staged, and staging a crash
//! left behind is deleted then. Only bytes past the end of the latest stored upload continue it
//! (a log that grew is sent on under the same id): they are staged, and once they reach the new
//! last chunk the stored bytes and the new ones are written as the file again. A new upload id
//! under the same file id is a new upload and replaces the stored file. Without an upload id the file id alone names the upload, so such
//! a file id is stored once.
//!
//! A crash between any two steps is repaired by replaying the same chunks: staging is
//! idempotent, the commit rewrites the same bytes and the marker is written before the staging
//! objects go.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{BlobError, Container};

const STAGING: &str = "upload-staging";
const STAGING_BY_ID: &str = "upload-parts";
const COMMITS: &str = "upload-commits";
/// Earlier upload ids a commit marker keeps, so their late chunks are still recognised.
const EARLIER_KEPT: usize = 32;

/// One uploaded chunk and the event that carried it.
#[derive(Debug, Clone)]
pub struct UploadChunk<'a> {
    /// Sending device.
    pub device: &'a str,
    /// The file id: the upload's name under the device's folder.
    pub file_id: &'a str,
    /// The upload's own id, when the device sent one.
    pub upload_id: Option<&'a str>,
    /// Position of `data[0]` in the file.
    pub offset: u64,
    /// Chunk bytes.
    pub data: Bytes,
    /// The file's total size, when the chunk carries it (the final chunk does).
    pub size: Option<u64>,
    /// Sequence number of the event.
    pub seq: u64,
    /// When the hub enqueued the event, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// A stored upload, as its commit marker records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommittedUpload {
    /// Object path in the uploads container.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// The upload's id, when the device sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// Sequence number of the event whose chunk completed the upload.
    pub seq: u64,
    /// When that event was enqueued, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// What accepting a chunk achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadProgress {
    /// The chunk is staged; the file is not complete yet.
    Staged {
        /// Distinct bytes staged so far.
        received: u64,
        /// Total size, when known.
        size: Option<u64>,
    },
    /// The upload is stored: just now, or earlier (the chunk was a replay or a late duplicate
    /// of the file's latest upload).
    Committed(CommittedUpload),
    /// The chunk belongs to an upload that a newer upload of the same file id has replaced;
    /// it was dropped.
    Superseded,
}

/// The commit marker of one file id: its latest upload and the ids of earlier ones.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Commits {
    latest: Option<CommittedUpload>,
    /// Upload ids stored before the latest one, oldest first (`None`: an upload without id).
    #[serde(default)]
    earlier: Vec<Option<String>>,
}

impl Commits {
    /// What a chunk of upload `id` amounts to when that upload is stored already.
    fn finished(&self, id: Option<&str>) -> Option<UploadProgress> {
        let latest = self.latest.as_ref()?;
        if latest.upload_id.as_deref() == id {
            return Some(UploadProgress::Committed(latest.clone()));
        }
        self.earlier
            .iter()
            .any(|earlier| earlier.as_deref() == id)
            .then_some(UploadProgress::Superseded)
    }

    /// Records `upload` as the latest, keeping the one it replaces among the earlier ones.
    fn push(&mut self, upload: CommittedUpload) {
        let id = upload.upload_id.clone();
        if let Some(old) = self.latest.replace(upload)
            && old.upload_id != id
        {
            self.earlier.retain(|earlier| *earlier != old.upload_id);
            self.earlier.push(old.upload_id);
        }
        self.earlier.retain(|earlier| *earlier != id);
        let excess = self.earlier.len().saturating_sub(EARLIER_KEPT);
        self.earlier.drain(..excess);
    }
}

/// Staged chunks of one upload: offset to length.
#[derive(Debug, Default)]
struct Pending {
    chunks: BTreeMap<u64, u64>,
    size: Option<u64>,
    /// Bytes `[0, base)` are the upload as stored already (a stored upload that grows).
    base: u64,
}

impl Pending {
    /// Bytes covered by the stored part and the staged chunks, overlaps counted once.
    fn covered(&self) -> u64 {
        let mut covered = self.base;
        let mut end = self.base;
        for (&offset, &len) in &self.chunks {
            let start = offset.max(end);
            let stop = offset + len;
            if stop > start {
                covered += stop - start;
                end = stop;
            }
        }
        covered
    }

    /// True when the chunks cover `[0, size)` without a gap.
    fn is_complete(&self) -> bool {
        let Some(size) = self.size else { return false };
        let mut end = self.base;
        for (&offset, &len) in &self.chunks {
            if offset > end {
                return false;
            }
            end = end.max(offset + len);
        }
        end >= size
    }
}

/// Where one upload's objects live.
struct Names {
    /// Uploads-container path of the file.
    target: String,
    /// State-container folder of the staged chunks.
    staging: String,
    /// State-container path of the file's commit marker.
    marker: String,
}

impl Names {
    fn of(chunk: &UploadChunk<'_>) -> Self {
        let (device, file) = (chunk.device, chunk.file_id);
        let staging = match chunk.upload_id {
            Some(id) => format!("{STAGING_BY_ID}/{device}/{id}/{file}"),
            None => format!("{STAGING}/{device}/{file}"),
        };
        Self {
            target: UploadAssembler::final_path(device, file),
            staging,
            marker: format!("{COMMITS}/{device}/{file}.json"),
        }
    }

    fn part(&self, offset: u64, len: u64) -> String {
        format!("{}/{offset:020}-{len:010}", self.staging)
    }
}

/// Staged uploads by device, file id and upload id.
type PendingUploads = HashMap<(String, String, Option<String>), Pending>;

/// Writes uploaded chunks at their offsets and commits complete files.
#[derive(Debug)]
pub struct UploadAssembler {
    uploads: Container,
    state: Container,
    pending: Mutex<PendingUploads>,
}

impl UploadAssembler {
    /// An assembler committing into `uploads` and staging in `state`.
    pub fn new(uploads: Container, state: Container) -> Self {
        Self {
            uploads,
            state,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Path of the committed file in the uploads container.
    pub fn final_path(device: &str, file_id: &str) -> String {
        format!("{device}/{file_id}")
    }

    /// Stages one chunk; commits the upload once every byte is staged. A chunk of an upload
    /// already stored is dropped unstaged.
    pub async fn accept(&self, chunk: UploadChunk<'_>) -> Result<UploadProgress, BlobError> {
        let names = Names::of(&chunk);
        let key = (
            chunk.device.to_owned(),
            chunk.file_id.to_owned(),
            chunk.upload_id.map(str::to_owned),
        );
        let mut pending = self.pending.lock().await;

        // First chunk of this upload since start or since its last commit: is it stored?
        let len = chunk.data.len() as u64;
        if !pending.contains_key(&key) {
            let restored = match self.commits(&names).await?.finished(chunk.upload_id) {
                // Bytes past the stored end continue the upload (a log that grew).
                Some(UploadProgress::Committed(stored)) if chunk.offset + len > stored.size => {
                    let mut restored = self.restore(&names.staging).await?;
                    restored.base = stored.size;
                    restored
                }
                Some(done) => {
                    let staged = self.restore(&names.staging).await?;
                    self.delete_parts(&names, &staged).await?;
                    return Ok(done);
                }
                None => self.restore(&names.staging).await?,
            };
            pending.insert(key.clone(), restored);
        }

        // A growing upload takes only bytes past its stored part; earlier ones are repeats.
        if let Some(file) = pending.get(&key)
            && file.base > 0
            && chunk.offset + len <= file.base
        {
            return Ok(UploadProgress::Staged {
                received: file.covered(),
                size: file.size,
            });
        }

        // Stage the chunk under a name that makes duplicates overwrite themselves.
        if len > 0 {
            self.state
                .put(&names.part(chunk.offset, len), chunk.data.clone())
                .await?;
        }
        let file = pending.entry(key.clone()).or_default();
        if len > 0 {
            let known = file.chunks.entry(chunk.offset).or_insert(0);
            *known = (*known).max(len);
        }
        // The largest end any `last` chunk named: a stale `last` that comes after a newer one
        // (a dropped chunk the device sent again) must not cut the upload short.
        if let Some(size) = chunk.size {
            file.size = Some(file.size.map_or(size, |known| known.max(size)));
        }
        if !file.is_complete() {
            return Ok(UploadProgress::Staged {
                received: file.covered(),
                size: file.size,
            });
        }

        // Commit: the file, then its marker, then the staging objects go.
        let size = file.size.unwrap_or_default();
        self.write_file(&names, file, size).await?;
        let committed = CommittedUpload {
            path: names.target.clone(),
            size,
            upload_id: chunk.upload_id.map(str::to_owned),
            seq: chunk.seq,
            time_ms: chunk.time_ms,
        };
        let mut commits = self.commits(&names).await?;
        commits.push(committed.clone());
        self.save_commits(&names, &commits).await?;
        self.delete_parts(&names, file).await?;
        pending.remove(&key);
        tracing::info!(
            device = chunk.device, file = chunk.file_id, upload = chunk.upload_id, size,
            path = %names.target, "upload committed"
        );
        Ok(UploadProgress::Committed(committed))
    }

    /// Rebuilds the staged-chunk map of one upload from its staging objects' names (only
    /// those directly in its folder: a longer file id may have a folder inside it).
    async fn restore(&self, staging: &str) -> Result<Pending, BlobError> {
        let mut restored = Pending::default();
        let folder = format!("{staging}/");
        for path in self.state.list(staging).await? {
            let Some(name) = path.strip_prefix(&folder).filter(|n| !n.contains('/')) else {
                continue;
            };
            let parsed = name.split_once('-').and_then(|(offset, len)| {
                Some((offset.parse::<u64>().ok()?, len.parse::<u64>().ok()?))
            });
            if let Some((offset, len)) = parsed {
                let known = restored.chunks.entry(offset).or_insert(0);
                *known = (*known).max(len);
            }
        }
        Ok(restored)
    }

    async fn commits(&self, names: &Names) -> Result<Commits, BlobError> {
        let bytes = match self.state.read_all(&names.marker).await {
            Ok(bytes) => bytes,
            Err(BlobError::NotFound { .. }) => return Ok(Commits::default()),
            Err(error) => return Err(error),
        };
        serde_json::from_slice(&bytes).map_err(|source| BlobError::Corrupt {
            container: self.state.name().to_owned(),
            path: names.marker.clone(),
            source,
        })
    }

    async fn save_commits(&self, names: &Names, commits: &Commits) -> Result<(), BlobError> {
        let bytes = serde_json::to_vec(commits).map_err(|source| BlobError::Corrupt {
            container: self.state.name().to_owned(),
            path: names.marker.clone(),
            source,
        })?;
        self.state.put(&names.marker, Bytes::from(bytes)).await
    }

    async fn delete_parts(&self, names: &Names, staged: &Pending) -> Result<(), BlobError> {
        for (&offset, &len) in &staged.chunks {
            self.state.delete(&names.part(offset, len)).await?;
        }
        Ok(())
    }

    /// Streams the staged chunks in offset order into one block write, skipping bytes already
    /// written.
    async fn write_file(
        &self,
        names: &Names,
        staged: &Pending,
        size: u64,
    ) -> Result<(), BlobError> {
        let mut writer = self.uploads.writer(&names.target).await?;
        let mut written = 0u64;
        if staged.base > 0 {
            written = self.copy_stored(names, staged.base, &mut writer).await?;
            if written < staged.base {
                let _ = writer.abort().await;
                return Err(BlobError::Read {
                    container: self.uploads.name().to_owned(),
                    path: names.target.clone(),
                    source: object_store::Error::Generic {
                        store: "uploads",
                        source: "the stored file is shorter than its commit marker says".into(),
                    },
                });
            }
        }
        for (&offset, &len) in &staged.chunks {
            if offset + len <= written || written >= size {
                continue;
            }
            let data = self.state.read_all(&names.part(offset, len)).await?;
            let skip = usize::try_from(written - offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let keep = usize::try_from(size - written).unwrap_or(usize::MAX);
            let piece = data.slice(skip..data.len().min(skip.saturating_add(keep)));
            written += piece.len() as u64;
            if let Err(error) = writer.write(piece).await {
                let _ = writer.abort().await;
                return Err(error);
            }
        }
        writer.finish().await
    }

    /// Writes the first `base` bytes of the stored file (a growing upload's stored part);
    /// returns how many there were.
    async fn copy_stored(
        &self,
        names: &Names,
        base: u64,
        writer: &mut super::BlobWriter,
    ) -> Result<u64, BlobError> {
        let mut pieces = self.uploads.read_stream(&names.target).await?;
        let mut copied = 0u64;
        while copied < base {
            let Some(piece) = pieces.try_next().await? else {
                break;
            };
            let keep = usize::try_from(base - copied)
                .unwrap_or(usize::MAX)
                .min(piece.len());
            copied += keep as u64;
            writer.write(piece.slice(..keep)).await?;
        }
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(id: Option<&str>, seq: u64) -> CommittedUpload {
        CommittedUpload {
            path: "d/f".into(),
            size: seq,
            upload_id: id.map(str::to_owned),
            seq,
            time_ms: seq,
        }
    }

    #[test]
    fn marker_tells_the_latest_upload_from_replaced_and_unknown_ones() {
        let mut commits = Commits::default();
        assert_eq!(commits.finished(None), None);
        commits.push(upload(None, 1));
        commits.push(upload(Some("a"), 2));
        commits.push(upload(Some("b"), 3));
        assert_eq!(
            commits.finished(Some("b")),
            Some(UploadProgress::Committed(upload(Some("b"), 3)))
        );
        assert_eq!(
            commits.finished(Some("a")),
            Some(UploadProgress::Superseded)
        );
        assert_eq!(commits.finished(None), Some(UploadProgress::Superseded));
        assert_eq!(commits.finished(Some("c")), None);
    }

    #[test]
    fn marker_keeps_a_bounded_list_of_earlier_uploads() {
        let mut commits = Commits::default();
        let ids: Vec<String> = (0..EARLIER_KEPT + 5).map(|n| format!("u{n}")).collect();
        for (n, id) in ids.iter().enumerate() {
            commits.push(upload(Some(id), n as u64));
            // The same id stored again is listed once.
            commits.push(upload(Some(id), n as u64));
        }
        assert_eq!(commits.earlier.len(), EARLIER_KEPT);
        assert_eq!(commits.finished(Some("u0")), None, "oldest forgotten");
        assert_eq!(
            commits.finished(Some("u35")),
            Some(UploadProgress::Superseded)
        );
    }
}
