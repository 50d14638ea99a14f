//! Crash-safe file writes: a file is either the old or the new content, never a mix.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors of durable reads and writes.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// Writing, syncing or renaming failed.
    #[error("failed to write {path}")]
    Write {
        /// Target file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// Reading failed.
    #[error("failed to read {path}")]
    Read {
        /// Source file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The content is not the expected JSON.
    #[error("failed to decode {path}")]
    Decode {
        /// Source file.
        path: PathBuf,
        /// Decoder error.
        source: serde_json::Error,
    },
}

/// Writes `bytes` to `path` (0600, its directory 0700 when made here) through a synced
/// temporary file, a rename and a directory sync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    let err = |source| DurableError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::state_dir::create_private_dir(dir).map_err(err)?;
    let mut tmp = tempfile_in(dir, path).map_err(err)?;
    tmp.1.write_all(bytes).map_err(err)?;
    tmp.1.sync_all().map_err(err)?;
    std::fs::rename(&tmp.0, path).map_err(err)?;
    sync_dir(dir).map_err(err)
}

/// Serializes `value` as JSON and writes it with [`write_atomic`].
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DurableError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| DurableError::Decode {
        path: path.to_owned(),
        source,
    })?;
    write_atomic(path, &bytes)
}

/// Reads JSON from `path`; `Ok(None)` when the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, DurableError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| DurableError::Decode {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DurableError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Flushes a directory entry change (create, rename, unlink) to disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    // State files are the agent's own: 0600, whatever the umask lets others read.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::state_dir::FILE_MODE)
        .open(&tmp)?;
    Ok((tmp, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_missing_file_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/state.json");
        assert_eq!(read_json::<Vec<u32>>(&path).expect("read"), None);
        write_json(&path, &vec![1u32, 2]).expect("write");
        write_json(&path, &vec![3u32]).expect("overwrite");
        assert_eq!(read_json::<Vec<u32>>(&path).expect("read"), Some(vec![3]));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
