//! The five steps of one run, and the names and limits they share.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_protocol::messages::{D2cMessage, SignFileRequest};
use cloudpillar_protocol::signing::SignedText;
use sha2::{Digest, Sha512};
use tokio_util::sync::CancellationToken;

use super::{DiagnosticsError, STEPS, Steps, TEST_FILE_BYTES, UPLOADS_PREFIX};
use crate::engine::verify::load_trust;
use crate::link::Link;
use crate::transfer::upload::upload_file;
use crate::transfer::{DownloadJob, ProgressSink};

/// Names and limits of one run.
pub(super) struct Run<'a> {
    link: &'a Link,
    /// Waiting steps give up after this long.
    limit: Duration,
    pub(super) dir: PathBuf,
    /// Name in the upload messages.
    upload_id: String,
    /// Name the streamer reads it back and signs it by.
    pub(super) file_id: String,
}

pub(super) fn prepare(link: &Link) -> Result<Run<'_>, DiagnosticsError> {
    let device = link
        .identity()
        .map(|i| i.device_id)
        .ok_or(DiagnosticsError::NotProvisioned)?;
    let mut unique = [0u8; 8];
    rand::fill(&mut unique);
    let unique: String = unique.iter().map(|b| format!("{b:02x}")).collect();
    let secs = crate::link::session::unix_now();
    let upload_id = format!("diagnostics/{secs}-{unique}.bin");
    Ok(Run {
        link,
        limit: Duration::from_secs(link.config.transfer.stall_secs.saturating_mul(2).max(2)),
        dir: link.config.state_dir.join("diagnostics"),
        file_id: format!("{UPLOADS_PREFIX}{device}/{upload_id}"),
        upload_id,
    })
}

pub(super) async fn round_trip(
    run: &Run<'_>,
    steps: &mut Steps,
) -> Result<(), (&'static str, DiagnosticsError)> {
    let mut original = vec![0u8; TEST_FILE_BYTES];
    rand::fill(&mut original[..]);
    steps.time(STEPS[0], upload(run, &original)).await?;
    let sign = steps.time(STEPS[1], request_signature(run)).await?;
    let back = steps.time(STEPS[2], download(run)).await?;
    let bytes = steps.time(STEPS[3], verify(run, &back, &sign)).await?;
    steps.time(STEPS[4], compare(&original, &bytes)).await
}

async fn upload(run: &Run<'_>, original: &[u8]) -> Result<((), String), DiagnosticsError> {
    let path = run.dir.join("original.bin");
    let write = |source| DiagnosticsError::WriteFile {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&run.dir).map_err(write)?;
    std::fs::write(&path, original).map_err(write)?;
    let chunk = run.link.config.transfer.upload_chunk_bytes;
    let queue = async {
        let chunks = upload_file(run.link, &run.upload_id, &path, chunk)
            .await
            .map_err(|source| DiagnosticsError::Upload { source })?;
        run.link
            .outbox
            .handed_over(run.link.outbox.next_seq())
            .await;
        Ok::<_, DiagnosticsError>(chunks)
    };
    let chunks = tokio::time::timeout(run.limit, queue).await.map_err(|_| {
        DiagnosticsError::NotHandedOver {
            after: run.limit,
            health: run.link.health().as_str(),
        }
    })??;
    let detail = format!("{chunks} chunks handed to the hub as {}", run.upload_id);
    Ok(((), detail))
}

async fn request_signature(run: &Run<'_>) -> Result<(String, String), DiagnosticsError> {
    let diagnostics = &run.link.diagnostics;
    let answer = diagnostics.expect(&run.file_id);
    let request = D2cMessage::SignFile(SignFileRequest {
        file_id: run.file_id.clone(),
    });
    if let Err(reason) = crate::transfer::hub::try_send(run.link, &request, false).await {
        diagnostics.forget(&run.file_id);
        return Err(DiagnosticsError::SignRequest { reason });
    }
    let signed = match tokio::time::timeout(run.limit, answer).await {
        Ok(Ok(Ok(signed))) => signed,
        Ok(Ok(Err(reason))) => return Err(DiagnosticsError::SignRefused { reason }),
        Ok(Err(_)) | Err(_) => {
            diagnostics.forget(&run.file_id);
            return Err(DiagnosticsError::NoSignAnswer { after: run.limit });
        }
    };
    let key = SignedText::parse(&signed.sign)
        .ok()
        .and_then(|text| text.key_id)
        .unwrap_or_else(|| "unnamed".into());
    let detail = format!("{} bytes signed by key {key}", signed.size);
    Ok((signed.sign, detail))
}

async fn download(run: &Run<'_>) -> Result<(PathBuf, String), DiagnosticsError> {
    let transfers = run
        .link
        .diagnostics
        .transfers
        .get()
        .cloned()
        .ok_or(DiagnosticsError::NoTransfers)?;
    let destination = run.dir.join("downloaded.bin");
    let job = DownloadJob {
        step: "download".into(),
        recipe_id: "diagnostics".into(),
        source: run.file_id.clone(),
        destination: destination.clone(),
        // Checked in the verify step, so a bad signature is reported as such.
        sign: None,
        rewind: None,
        protocol: "iotmqtt".into(),
    };
    let quiet: ProgressSink = Arc::new(|_| {});
    let cancel = CancellationToken::new();
    let transfer = transfers.download(job, quiet, cancel.clone());
    tokio::pin!(transfer);
    let outcome = tokio::select! {
        outcome = &mut transfer => outcome,
        () = tokio::time::sleep(run.limit) => {
            cancel.cancel();
            let _ = transfer.await;
            return Err(DiagnosticsError::DownloadTimedOut { after: run.limit });
        }
    };
    if !outcome.is_success() {
        return Err(DiagnosticsError::Download {
            code: outcome.code,
            text: outcome.text,
        });
    }
    Ok((destination, format!("read back as {}", run.file_id)))
}

async fn verify(
    run: &Run<'_>,
    path: &Path,
    sign: &str,
) -> Result<(Vec<u8>, String), DiagnosticsError> {
    let bytes = std::fs::read(path).map_err(|source| DiagnosticsError::ReadBack {
        path: path.to_owned(),
        source,
    })?;
    let trust = load_trust(&run.link.config.trusted_keys)
        .map_err(|source| DiagnosticsError::LoadTrust { source })?;
    let mut hasher = Sha512::new();
    hasher.update(&bytes);
    let key = trust
        .verify_digest(hasher, sign)
        .map_err(|source| DiagnosticsError::Verify { source })?
        .to_owned();
    let detail = format!("signature of trusted key {key} verifies");
    Ok((bytes, detail))
}

pub(super) async fn compare(
    original: &[u8],
    back: &[u8],
) -> Result<((), String), DiagnosticsError> {
    if original == back {
        return Ok(((), format!("{} bytes identical", back.len())));
    }
    let detail = match original.iter().zip(back).position(|(a, b)| a != b) {
        Some(offset) => format!("first difference at byte {offset}"),
        None => format!("{} bytes came back, {} went up", back.len(), original.len()),
    };
    Err(DiagnosticsError::Mismatch { detail })
}

pub(super) fn remove_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, dir = %dir.display(), "diagnostics files not removed");
    }
}
