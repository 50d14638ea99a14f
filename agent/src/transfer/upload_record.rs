//! The record of a periodic upload step: one entry per file, kept in memory and persisted at
//! most about once a second and at the end of every round.
//!
//! Saving after every chunk rewrote and synced the whole record once per chunk, so a folder
//! of many files stalled. A kill between two saves loses at most a second of progress: the
//! chunks sent since are sent again under the same upload name at the same offsets, which
//! the backend takes as the bytes it already has.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::periodic::FileUpload;
use crate::durable::{self, DurableError};

/// How long progress may stay unsaved while chunks are sent.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Uploads per file of one step, and when they were last saved.
#[derive(Debug)]
pub struct UploadRecord {
    path: PathBuf,
    files: BTreeMap<String, FileUpload>,
    saved: Instant,
    dirty: bool,
}

impl UploadRecord {
    /// Reads the record at `path` (off the async threads); an unreadable one starts empty.
    pub async fn load(path: PathBuf) -> Self {
        let read = path.clone();
        let files = blocking(move || Ok(read_files(&read)))
            .await
            .unwrap_or_default();
        Self {
            path,
            files,
            saved: Instant::now(),
            dirty: false,
        }
    }

    /// The upload of `key`, or a fresh one.
    pub fn get(&self, key: &str) -> FileUpload {
        self.files.get(key).cloned().unwrap_or_default()
    }

    /// Keeps `upload` as the state of `key`; saves when the last save is older than
    /// [`SAVE_EVERY`].
    pub async fn update(&mut self, key: &str, upload: &FileUpload) -> Result<(), DurableError> {
        if self.files.get(key) != Some(upload) {
            self.files.insert(key.to_owned(), upload.clone());
            self.dirty = true;
        }
        if self.saved.elapsed() >= SAVE_EVERY {
            self.flush().await?;
        }
        Ok(())
    }

    /// Forgets the entries of files that no longer exist (checked off the async threads).
    pub async fn prune(&mut self) {
        let keys: Vec<String> = self.files.keys().cloned().collect();
        let gone = blocking(move || Ok(gone_files(keys)))
            .await
            .unwrap_or_default();
        for key in gone {
            tracing::debug!(file = %key, "file gone; its upload entry is dropped");
            self.files.remove(&key);
            self.dirty = true;
        }
    }

    /// Saves the record if anything changed since the last save.
    pub async fn flush(&mut self) -> Result<(), DurableError> {
        if !self.dirty {
            return Ok(());
        }
        let (path, files) = (self.path.clone(), self.files.clone());
        let join = tokio::task::spawn_blocking(move || durable::write_json(&path, &files)).await;
        let result = join.unwrap_or_else(|error| {
            Err(DurableError::Write {
                path: self.path.clone(),
                source: std::io::Error::other(error),
            })
        });
        self.saved = Instant::now();
        self.dirty = result.is_err();
        result
    }
}

/// Runs blocking file work on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(std::io::Error::other(error)))
}

fn read_files(path: &Path) -> BTreeMap<String, FileUpload> {
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

/// The keys whose file does not exist any more (not merely unreadable for now).
fn gone_files(keys: Vec<String>) -> Vec<String> {
    keys.into_iter()
        .filter(|key| {
            std::fs::symlink_metadata(key)
                .is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(sent: u64) -> FileUpload {
        FileUpload {
            id: "id".to_owned(),
            sent,
            ..FileUpload::default()
        }
    }

    #[tokio::test]
    async fn saves_are_coalesced_and_a_flush_writes_the_latest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("record.json");
        let mut record = UploadRecord::load(path.clone()).await;
        for sent in 1..=100 {
            record.update("a", &upload(sent)).await.expect("update");
        }
        assert!(!path.exists(), "no save within the first second");
        record.flush().await.expect("flush");
        let again = UploadRecord::load(path).await;
        assert_eq!(again.get("a").sent, 100);
    }

    #[tokio::test]
    async fn entries_of_files_gone_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = dir.path().join("kept.log");
        std::fs::write(&kept, b"x").expect("write");
        let gone = dir.path().join("gone.log");
        let mut record = UploadRecord::load(dir.path().join("record.json")).await;
        let (kept, gone) = (kept.display().to_string(), gone.display().to_string());
        record.update(&kept, &upload(1)).await.expect("update");
        record.update(&gone, &upload(1)).await.expect("update");
        record.prune().await;
        assert_eq!(record.get(&kept).sent, 1);
        assert_eq!(record.get(&gone), FileUpload::default());
    }
}
