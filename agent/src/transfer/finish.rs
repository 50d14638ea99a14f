//! What every download does the same way, whatever carried its bytes: progress reports,
//! the file signature check before use, and moving the file into place.

use std::path::{Path, PathBuf};

use cloudpillar_protocol::signing::{SignatureError, TrustStore};
use sha2::{Digest, Sha512};

use super::DownloadJob;
use super::progress::{Partial, PartialError};
use crate::engine::outcome::{StepOutcome, codes};
use crate::engine::report::LiveStep;

/// A step failed by local I/O.
pub(super) fn failed_io(error: PartialError) -> StepOutcome {
    StepOutcome::failed(codes::IO_ERROR, error.to_string())
}

/// A download stopped by a cancel or a newer recipe; what is verified stays for a resume.
pub(super) fn cancelled() -> StepOutcome {
    // F22: stop within one chunk, keep what is verified for a later resume.
    StepOutcome::failed(codes::CANCELLED, "download cancelled; verified bytes kept")
}

/// The live report of a download: percent, bytes and chunks verified.
pub(super) fn live(job: &DownloadJob, partial: &Partial) -> LiveStep {
    let total = partial.progress.total;
    LiveStep {
        path: job.step.clone(),
        progress: total.filter(|t| *t > 0).map(|t| {
            u8::try_from(partial.progress.verified.saturating_mul(100) / t).unwrap_or(100)
        }),
        bytes: total.map(|t| (partial.progress.verified, t)),
        chunks: partial.chunk_counts(),
        text: Some(format!("downloading {}", job.source)),
    }
}

/// The partial file beside the destination.
pub fn partial_path(destination: &Path) -> PathBuf {
    let mut name = destination
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".cppart");
    destination.with_file_name(name)
}

/// What to do once every byte is verified.
pub(super) enum Finish {
    /// The step ended.
    Done(StepOutcome),
    /// The file's signature failed with attempts left: the partial file was emptied and the
    /// download starts again from byte 0.
    Again,
}

/// Drops the partial file and fails the step as an integrity failure (F12).
pub(super) fn give_up(partial: &Partial, why: &str) -> StepOutcome {
    let _ = std::fs::remove_file(partial.data_path());
    partial.discard_record();
    StepOutcome::failed(codes::INTEGRITY_MISMATCH, why)
}

/// Verifies the complete file against `job.sign` (when given) and moves it into place.
pub(super) fn finish(
    trust: &TrustStore,
    max_attempts: u32,
    job: &DownloadJob,
    partial: &mut Partial,
) -> Finish {
    if let Some(sign) = &job.sign {
        match verify_file(trust, partial.data_path(), sign) {
            Ok(()) => {}
            Err(Ok(error @ SignatureError::BadSignatureEncoding { .. })) => {
                let _ = std::fs::remove_file(partial.data_path());
                partial.discard_record();
                return Finish::Done(StepOutcome::failed(
                    error.code(),
                    format!("file sign refused: {error}"),
                ));
            }
            Err(Ok(error)) => {
                partial.progress.attempts += 1;
                let attempts = partial.progress.attempts;
                tracing::warn!(%error, attempts, "file signature does not verify");
                if partial.progress.attempts >= max_attempts {
                    return Finish::Done(give_up(partial, "file signature does not verify"));
                }
                return match partial.restart() {
                    Ok(()) => Finish::Again,
                    Err(e) => Finish::Done(failed_io(e)),
                };
            }
            Err(Err(e)) => {
                return Finish::Done(StepOutcome::failed(codes::IO_ERROR, e.to_string()));
            }
        }
    }
    let placed = std::fs::rename(partial.data_path(), &job.destination).and_then(|()| {
        crate::durable::sync_dir(job.destination.parent().unwrap_or(Path::new("/")))
    });
    if let Err(e) = placed {
        return Finish::Done(StepOutcome::failed(
            codes::IO_ERROR,
            format!("failed to place the file: {e}"),
        ));
    }
    partial.discard_record();
    Finish::Done(StepOutcome::succeeded(
        "FinishedTransit",
        "Finished streaming as the last chunk arrived.",
    ))
}

fn verify_file(
    trust: &TrustStore,
    path: &Path,
    sign: &str,
) -> Result<(), Result<SignatureError, std::io::Error>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(Err)?;
    let mut hasher = Sha512::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(Err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    trust.verify_digest(hasher, sign).map(|_| ()).map_err(Ok)
}
