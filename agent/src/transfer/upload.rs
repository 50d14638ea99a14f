//! Uploads as D2C `UploadFileChunk` messages: which files a pattern names, how an upload is
//! named, and a whole file queued at once (the periodic uploads are in `periodic`).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use cloudpillar_protocol::messages::{D2cMessage, UploadFileChunk};
use nix::fcntl::OFlag;
use sha2::{Digest, Sha256};

use crate::link::Link;

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

/// Opens `path` for an upload: a regular file, not followed through a symbolic link (a link
/// put in its place after the directory was listed would send a file from elsewhere) and never
/// waiting on a FIFO.
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;

    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK;
    let file = File::options()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// The transfer id of an upload of `path`: a short hash of the path and of what makes the
/// upload one of its own (`identity`: recipe, step, content), then the file name. The
/// backend files every upload under the sending device's own folder, so the id leaves the
/// device out.
pub fn upload_file_id(path: &Path, identity: &str) -> String {
    let digest = Sha256::digest(format!("{identity}|{}", path.to_string_lossy()).as_bytes());
    let hash: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let name: String = path
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(120).collect())
        .unwrap_or_default();
    format!("{hash}-{name}")
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
    let mut reader = open_regular(path).map_err(read)?;
    let size = reader.metadata().map_err(read)?.len();
    let chunk = chunk.clamp(1, cloudpillar_protocol::messages::MAX_UPLOAD_CHUNK);
    let mut buf = vec![0u8; chunk];
    let (mut offset, mut chunks) = (0u64, 0u64);
    loop {
        let want = usize::try_from((size - offset).min(chunk as u64)).unwrap_or(chunk);
        reader.read_exact(&mut buf[..want]).map_err(read)?;
        let last = offset + want as u64 >= size;
        let message = D2cMessage::UploadFileChunk(UploadFileChunk {
            // Every upload has a file id of its own (see `upload_file_id`).
            file_id: file_id.to_owned(),
            upload_id: None,
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
    fn uploads_open_regular_files_only_never_through_a_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (secret, log) = (dir.path().join("secret"), dir.path().join("app.log"));
        std::fs::write(&secret, "not for upload").expect("write");
        std::os::unix::fs::symlink(&secret, &log).expect("symlink");
        let error = open_regular(&log).expect_err("a link is not opened");
        assert_eq!(error.raw_os_error(), Some(nix::libc::ELOOP), "{error}");

        let fifo = dir.path().join("pipe.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let error = open_regular(&fifo).expect_err("a FIFO is refused at once");
        assert!(error.to_string().contains("not a regular file"), "{error}");

        std::fs::remove_file(&log).expect("remove");
        std::fs::write(&log, "line\n").expect("write");
        let mut text = String::new();
        open_regular(&log)
            .and_then(|mut f| f.read_to_string(&mut text))
            .expect("a regular file opens");
        assert_eq!(text, "line\n");
    }

    #[test]
    fn upload_ids_are_short_stable_and_differ_by_path_and_identity() {
        let path = Path::new("/var/log/install.log");
        let id = upload_file_id(path, "r1|changeSpec.patch.postInstallConfig[1]|1|10|5");
        assert!(
            !id.contains('/') && id.ends_with("-install.log"),
            "one name, no folders: {id}"
        );
        assert_eq!(id.len(), 12 + "-install.log".len());
        let same = upload_file_id(path, "r1|changeSpec.patch.postInstallConfig[1]|1|10|5");
        assert_eq!(id, same);
        let other_path = Path::new("/opt/app/logs/install.log");
        let identity = "r1|changeSpec.patch.postInstallConfig[1]|1|10|5";
        assert_ne!(id, upload_file_id(other_path, identity));
        assert_ne!(
            id,
            upload_file_id(path, "r2|changeSpec.patch.postInstallConfig[1]|1|10|5")
        );
        assert_ne!(
            id,
            upload_file_id(path, "r1|changeSpec.patch.postInstallConfig[1]|2|10|5")
        );
        assert!(id.len() <= cloudpillar_protocol::messages::MAX_FILE_ID_BYTES);
    }
}
