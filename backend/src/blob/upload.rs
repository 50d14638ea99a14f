//! Reassembly of files devices upload in chunks.
//!
//! Each chunk is staged as its own object, named by offset and length, in the state container
//! (`upload-staging/{device}/{file}/{offset}-{len}`), so a duplicate overwrites itself with the
//! same bytes and chunks may arrive in any order. Once the staged chunks cover `[0, size)`, they
//! are streamed in offset order into one block write of `uploads/{device}/{file}`, committed,
//! and the staging objects are deleted. A crash between any two steps is repaired by replaying
//! the same chunks: staging is idempotent and the commit rewrites the same bytes.
//!
//! A file id names one transfer: chunks replayed after their file was committed are recognised
//! by the committed file's size and dropped, so a device must not reuse a file id for another
//! file of the same size.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use tokio::sync::Mutex;

use super::{BlobError, Container};

const STAGING: &str = "upload-staging";

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
    /// The file is complete and committed at `path` in the uploads container.
    Committed {
        /// Object path in the uploads container.
        path: String,
        /// File size in bytes.
        size: u64,
    },
}

/// Staged chunks of one file: offset to length.
#[derive(Debug, Default)]
struct Pending {
    chunks: BTreeMap<u64, u64>,
    size: Option<u64>,
}

impl Pending {
    /// Bytes covered by the staged chunks, overlaps counted once.
    fn covered(&self) -> u64 {
        let mut covered = 0;
        let mut end = 0;
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
        let mut end = 0;
        for (&offset, &len) in &self.chunks {
            if offset > end {
                return false;
            }
            end = end.max(offset + len);
        }
        end >= size
    }
}

/// Writes uploaded chunks at their offsets and commits complete files.
#[derive(Debug)]
pub struct UploadAssembler {
    uploads: Container,
    state: Container,
    pending: Mutex<HashMap<(String, String), Pending>>,
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

    /// Stages `data` at `offset` of file `file_id` from `device`; `size` is the file's total
    /// size when the chunk carries it. Commits the file once every byte is staged.
    pub async fn accept(
        &self,
        device: &str,
        file_id: &str,
        offset: u64,
        data: Bytes,
        size: Option<u64>,
    ) -> Result<UploadProgress, BlobError> {
        let final_path = Self::final_path(device, file_id);
        let staging = format!("{STAGING}/{device}/{file_id}");
        let key = (device.to_owned(), file_id.to_owned());
        let mut pending = self.pending.lock().await;

        // A replayed chunk of a file already committed changes nothing.
        if !pending.contains_key(&key) {
            if let Some(size) = size
                && self.uploads.size(&final_path).await.ok() == Some(size)
            {
                return Ok(UploadProgress::Committed {
                    path: final_path,
                    size,
                });
            }
            let restored = self.restore(&staging).await?;
            pending.insert(key.clone(), restored);
        }

        // Stage the chunk under a name that makes duplicates overwrite themselves.
        let len = data.len() as u64;
        if len > 0 {
            self.state
                .put(&format!("{staging}/{offset:020}-{len:010}"), data)
                .await?;
        }
        let file = pending.entry(key.clone()).or_default();
        if len > 0 {
            let known = file.chunks.entry(offset).or_insert(0);
            *known = (*known).max(len);
        }
        if size.is_some() {
            file.size = size;
        }
        if !file.is_complete() {
            // The final chunk of a file committed before a restart, replayed without the chunks
            // deleted at that commit: the committed file stands, the replayed parts go.
            if let Some(size) = size
                && self.uploads.size(&final_path).await.ok() == Some(size)
            {
                let staged: Vec<(u64, u64)> = file.chunks.iter().map(|(&o, &l)| (o, l)).collect();
                pending.remove(&key);
                for (offset, len) in staged {
                    self.state
                        .delete(&format!("{staging}/{offset:020}-{len:010}"))
                        .await?;
                }
                return Ok(UploadProgress::Committed {
                    path: final_path,
                    size,
                });
            }
            return Ok(UploadProgress::Staged {
                received: file.covered(),
                size: file.size,
            });
        }

        // Commit: stream the chunks in offset order, skipping bytes already written.
        let size = file.size.unwrap_or_default();
        let chunks: Vec<(u64, u64)> = file.chunks.iter().map(|(&o, &l)| (o, l)).collect();
        self.commit(&staging, &final_path, &chunks, size).await?;
        pending.remove(&key);
        tracing::info!(device, file = file_id, size, path = %final_path, "upload committed");
        Ok(UploadProgress::Committed {
            path: final_path,
            size,
        })
    }

    /// Rebuilds the staged-chunk map of one file from the staging objects' names.
    async fn restore(&self, staging: &str) -> Result<Pending, BlobError> {
        let mut restored = Pending::default();
        for path in self.state.list(staging).await? {
            let name = path.rsplit('/').next().unwrap_or_default();
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

    async fn commit(
        &self,
        staging: &str,
        final_path: &str,
        chunks: &[(u64, u64)],
        size: u64,
    ) -> Result<(), BlobError> {
        let mut writer = self.uploads.writer(final_path).await?;
        let mut written = 0u64;
        for &(offset, len) in chunks {
            if offset + len <= written || written >= size {
                continue;
            }
            let data = self
                .state
                .read_all(&format!("{staging}/{offset:020}-{len:010}"))
                .await?;
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
        writer.finish().await?;
        for &(offset, len) in chunks {
            self.state
                .delete(&format!("{staging}/{offset:020}-{len:010}"))
                .await?;
        }
        Ok(())
    }
}
