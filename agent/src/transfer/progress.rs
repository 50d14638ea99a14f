//! Durable download progress: the partial file and how much of it is verified (F11).
//!
//! Only bytes covered by a matching `VerifyRangeCRC` count as verified. After a kill the
//! partial file is cut back to the verified length, so a resume re-requests only the
//! unverified tail and never starts again from zero.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rangemap::RangeSet;
use serde::{Deserialize, Serialize};

use crate::durable::{self, DurableError};

/// Persisted state of one download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Transfer id.
    pub file_id: String,
    /// Bytes from the start that matched their range CRC.
    pub verified: u64,
    /// Size of the whole file, once a chunk said so.
    pub total: Option<u64>,
    /// Size of the first chunk, for chunk counts in reports.
    pub chunk_size: Option<u64>,
    /// Integrity failures so far (F12).
    pub attempts: u32,
    /// HTTPS: the ETag or Last-Modified of the file the verified bytes came from, sent as
    /// `If-Range` on resume so a changed file starts again from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<String>,
}

impl Progress {
    /// Nothing downloaded yet.
    fn fresh(file_id: &str) -> Self {
        Self {
            file_id: file_id.to_owned(),
            verified: 0,
            total: None,
            chunk_size: None,
            attempts: 0,
            validator: None,
        }
    }
}

/// A download's files: progress record and partial data.
#[derive(Debug)]
pub struct Partial {
    record: PathBuf,
    data_path: PathBuf,
    file: File,
    /// The progress.
    pub progress: Progress,
    /// Bytes on disk: the verified prefix and every chunk written in this run, whatever
    /// order the chunks came in.
    present: RangeSet<u64>,
}

/// Errors of partial-file handling.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    /// File I/O failed.
    #[error("failed to use partial file {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The record could not be written or read.
    #[error(transparent)]
    Record(#[from] DurableError),
}

impl Partial {
    /// Opens (or starts) the download of `file_id` into `data_path`, with its record at
    /// `record`; cuts the data back to the verified length.
    pub fn open(record: &Path, data_path: &Path, file_id: &str) -> Result<Self, PartialError> {
        let io = |source| PartialError::Io {
            path: data_path.to_owned(),
            source,
        };
        let mut progress: Progress = durable::read_json(record)?
            .filter(|progress: &Progress| progress.file_id == file_id)
            .unwrap_or_else(|| Progress::fresh(file_id));
        if let Some(dir) = data_path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data_path)
            .map_err(io)?;
        let on_disk = file.metadata().map_err(io)?.len();
        if on_disk < progress.verified {
            // Verified bytes went missing: trust only what is there.
            progress.verified = 0;
        }
        file.set_len(progress.verified).map_err(io)?;
        file.sync_all().map_err(io)?;
        let mut partial = Self {
            record: record.to_owned(),
            data_path: data_path.to_owned(),
            file,
            progress,
            present: RangeSet::new(),
        };
        partial.forget_unverified();
        partial.save()?;
        Ok(partial)
    }

    /// Persists the progress record.
    pub fn save(&self) -> Result<(), PartialError> {
        Ok(durable::write_json(&self.record, &self.progress)?)
    }

    /// Writes a chunk at `offset`. It reaches the disk by the next [`Partial::verify_to`]:
    /// only verified bytes must survive a crash, the rest is cut off and asked for again.
    pub fn write_chunk(&mut self, offset: u64, data: &[u8]) -> Result<(), PartialError> {
        let io = |source| PartialError::Io {
            path: self.data_path.clone(),
            source,
        };
        self.file.write_all_at(data, offset).map_err(io)?;
        let end = offset + data.len() as u64;
        if end > offset {
            self.present.insert(offset..end);
        }
        if self.progress.chunk_size.is_none() && offset == 0 {
            self.progress.chunk_size = Some(data.len() as u64);
        }
        Ok(())
    }

    /// The end of the bytes on disk without a gap from the start: where the next chunk in
    /// order goes.
    pub fn written(&self) -> u64 {
        self.present.get(&0).map_or(0, |range| range.end)
    }

    /// Whether every byte of `[start, end)` is on disk.
    pub fn holds(&self, start: u64, end: u64) -> bool {
        start >= end
            || self
                .present
                .get(&start)
                .is_some_and(|range| range.end >= end)
    }

    /// Drops unverified bytes at or past `len` (the file's size, once known).
    pub fn cut_to(&mut self, len: u64) -> Result<(), PartialError> {
        if self.present.overlaps(&(len..u64::MAX)) {
            self.present.remove(len..u64::MAX);
            self.file.set_len(len).map_err(|source| PartialError::Io {
                path: self.data_path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Keeps only the verified prefix in the record of bytes on disk.
    fn forget_unverified(&mut self) {
        self.present.clear();
        if self.progress.verified > 0 {
            self.present.insert(0..self.progress.verified);
        }
    }

    /// CRC-32 of the bytes `[start, end)` as they are on disk.
    pub fn crc_of(&mut self, start: u64, end: u64) -> Result<u32, PartialError> {
        let io = |source| PartialError::Io {
            path: self.data_path.clone(),
            source,
        };
        let mut crc = cloudpillar_protocol::crc::RangeCrc::new();
        self.file.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut remaining = end.saturating_sub(start);
        let mut buf = vec![0u8; 64 * 1024];
        while remaining > 0 {
            let want = usize::try_from(remaining.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = self.file.read(&mut buf[..want]).map_err(io)?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
            remaining -= n as u64;
        }
        Ok(crc.value())
    }

    /// Marks `[.., end)` verified and persists it, the data first so the record never
    /// claims bytes that are not on disk.
    pub fn verify_to(&mut self, end: u64) -> Result<(), PartialError> {
        self.file.sync_data().map_err(|source| PartialError::Io {
            path: self.data_path.clone(),
            source,
        })?;
        self.progress.verified = self.progress.verified.max(end);
        self.save()
    }

    /// Drops everything after the verified length (a bad range) and persists it.
    pub fn rewind_to_verified(&mut self) -> Result<(), PartialError> {
        let io = |source| PartialError::Io {
            path: self.data_path.clone(),
            source,
        };
        self.file.set_len(self.progress.verified).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.forget_unverified();
        self.save()
    }

    /// Starts over from byte 0 (after a failed file signature).
    pub fn restart(&mut self) -> Result<(), PartialError> {
        self.progress.verified = 0;
        self.rewind_to_verified()
    }

    /// Path of the partial data.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// Removes the record and the data (after success or a final failure).
    pub fn discard_record(&self) {
        let _ = std::fs::remove_file(&self.record);
    }

    /// Chunks verified and total, when sizes are known.
    pub fn chunk_counts(&self) -> Option<(u64, u64)> {
        let size = self.progress.chunk_size.filter(|s| *s > 0)?;
        let total = self.progress.total?;
        Some((self.progress.verified / size, total.div_ceil(size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f13_range_crcs_include_the_short_last_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p =
            Partial::open(&dir.path().join("r.json"), &dir.path().join("f"), "f").expect("open");
        for (offset, chunk) in [(0u64, "0123"), (4, "4567"), (8, "89")] {
            p.write_chunk(offset, chunk.as_bytes()).expect("write");
        }
        let hex = |crc: u32| cloudpillar_protocol::crc::format_crc(crc);
        assert_eq!(hex(p.crc_of(0, 4).expect("crc")), "a6669d7d");
        assert_eq!(hex(p.crc_of(4, 8).expect("crc")), "4d0ca3eb");
        assert_eq!(hex(p.crc_of(8, 10).expect("crc")), "0943260c");
        assert_eq!(hex(p.crc_of(0, 10).expect("crc")), "a684c7c6");
    }

    #[test]
    fn f11_restart_cuts_the_partial_file_to_the_last_verified_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = dir.path().join("r.json");
        let data = dir.path().join("fw.bin.cppart");
        let chunk = 49_152u64;
        {
            let mut p = Partial::open(&record, &data, "fw").expect("open");
            p.progress.total = Some(10_485_760);
            let bytes = vec![7u8; usize::try_from(chunk).expect("size")];
            for i in 0..100 {
                p.write_chunk(i * chunk, &bytes).expect("write");
            }
            p.verify_to(100 * chunk).expect("verify");
            // 20,000 bytes of chunk 100 written, then the process dies.
            p.write_chunk(100 * chunk, &bytes[..20_000]).expect("write");
        }
        let p = Partial::open(&record, &data, "fw").expect("reopen");
        assert_eq!(std::fs::metadata(&data).expect("meta").len(), 4_915_200);
        assert_eq!(p.progress.verified, 4_915_200);
        assert_eq!(p.written(), 4_915_200, "resume requests from chunk 100");
        assert_eq!(
            p.chunk_counts(),
            Some((100, 214)),
            "progress right after restart is 100/214"
        );
    }

    #[test]
    fn another_file_id_starts_a_fresh_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = dir.path().join("r.json");
        let data = dir.path().join("d");
        let mut p = Partial::open(&record, &data, "a").expect("open");
        p.write_chunk(0, b"abcd").expect("write");
        p.verify_to(4).expect("verify");
        let q = Partial::open(&record, &data, "b").expect("other");
        assert_eq!(q.progress.verified, 0);
        assert_eq!(std::fs::metadata(&data).expect("meta").len(), 0);
    }
}
