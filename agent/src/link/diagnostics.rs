//! RunDiagnostics: proves the whole transfer and signing chain with a throwaway file.
//!
//! 1. upload: [`TEST_FILE_BYTES`] random bytes are written to `<state_dir>/diagnostics/` and
//!    queued as `UploadFileChunk` messages under `diagnostics/<unique>.bin`, which the streamer
//!    stores in this device's upload area. The step ends once every chunk is handed to the MQTT
//!    client.
//! 2. sign: D2C `SignFile {fileId: "uploads/{device}/diagnostics/<unique>.bin"}`; the streamer
//!    has the key holder sign the stored blob and answers `FileSigned` or `SignFileFailed`.
//! 3. download: the same file id is read back like any download (`StreamRange`, range CRCs).
//! 4. verify: the signature is checked over the downloaded bytes against the trusted keys.
//! 5. compare: the downloaded bytes must equal the original.
//!
//! Every waiting step gives up after twice `transfer.stall_secs` (at least 2 s), so a run never
//! hangs; the local files are removed whatever the outcome. The caller allows one run at a time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cloudpillar_protocol::messages::{D2cMessage, FileSigned, SignFileRequest};
use cloudpillar_protocol::signing::{SignatureError, SignedText};
use serde_json::{Value, json};
use sha2::{Digest, Sha512};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Link;
use crate::api::run_diagnostics::DiagnosticsFailed;
use crate::engine::verify::{TrustLoadError, load_trust};
use crate::transfer::upload::{UploadError, upload_file};
use crate::transfer::{DownloadJob, ProgressSink, Transfers};

/// Size of the test file.
pub const TEST_FILE_BYTES: usize = 128 * 1024;
/// File ids starting with this name one of the device's own uploads (the streamer's naming).
const UPLOADS_PREFIX: &str = "uploads/";
/// The steps in order.
const STEPS: [&str; 5] = ["upload", "sign", "download", "verify", "compare"];

/// The back end's answer to a `SignFile` request: the signature, or why there is none.
pub type SignAnswer = Result<FileSigned, String>;

/// What diagnostics need from the rest of the agent: the transfer service, and the runs
/// waiting for a signature.
#[derive(Debug, Default)]
pub struct Diagnostics {
    transfers: OnceLock<Arc<dyn Transfers>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<SignAnswer>>>,
}

impl Diagnostics {
    /// Connects the transfer service that downloads the file back.
    pub fn set_transfers(&self, transfers: Arc<dyn Transfers>) {
        let _ = self.transfers.set(transfers);
    }

    /// Hands a `FileSigned` or `SignFileFailed` answer to the run waiting for `file_id`.
    pub fn deliver(&self, file_id: &str, answer: SignAnswer) {
        let waiter = self.waiting.lock().ok().and_then(|mut w| w.remove(file_id));
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(answer);
            }
            None => tracing::debug!(file_id, "sign answer for no running diagnostics dropped"),
        }
    }

    fn expect(&self, file_id: &str) -> oneshot::Receiver<SignAnswer> {
        let (sender, receiver) = oneshot::channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(file_id.to_owned(), sender);
        }
        receiver
    }

    fn forget(&self, file_id: &str) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.remove(file_id);
        }
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum DiagnosticsError {
    /// The device has no hub identity.
    #[error("the device has no hub identity yet (not provisioned)")]
    NotProvisioned,
    /// The test file could not be written.
    #[error("failed to write the test file {path}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The test file could not be queued.
    #[error("failed to queue the test file")]
    Upload {
        /// Cause.
        #[source]
        source: UploadError,
    },
    /// The chunks stayed in the offline queue.
    #[error("the test file was not handed to the hub within {after:?} (link {health})")]
    NotHandedOver {
        /// The limit.
        after: Duration,
        /// Link health at that moment.
        health: &'static str,
    },
    /// The `SignFile` request could not be queued.
    #[error("failed to queue the SignFile request: {reason}")]
    SignRequest {
        /// Why.
        reason: String,
    },
    /// Nothing answered the `SignFile` request.
    #[error(
        "no answer to SignFile within {after:?}: is the backend streamer running with a key holder?"
    )]
    NoSignAnswer {
        /// The limit.
        after: Duration,
    },
    /// The back end answered `SignFileFailed`.
    #[error("the back end did not sign the file: {reason}")]
    SignRefused {
        /// The answer's reason.
        reason: String,
    },
    /// The agent has no transfer service.
    #[error("the transfer service is not running")]
    NoTransfers,
    /// The download ended without the file.
    #[error("download failed ({code}): {text}")]
    Download {
        /// Result code.
        code: String,
        /// Result text.
        text: String,
    },
    /// The file did not come back in time.
    #[error("the file did not come back within {after:?}")]
    DownloadTimedOut {
        /// The limit.
        after: Duration,
    },
    /// The downloaded file could not be read.
    #[error("failed to read the downloaded file {path}")]
    ReadBack {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The trusted keys could not be loaded.
    #[error("failed to load the trusted keys")]
    LoadTrust {
        /// Cause.
        #[source]
        source: TrustLoadError,
    },
    /// The signature does not verify over what came back.
    #[error("the signature does not verify over the downloaded bytes")]
    Verify {
        /// Cause.
        #[source]
        source: SignatureError,
    },
    /// What came back differs from what went up.
    #[error("the downloaded file differs from the original: {detail}")]
    Mismatch {
        /// Where.
        detail: String,
    },
}

/// Names and limits of one run.
struct Run<'a> {
    link: &'a Link,
    /// Waiting steps give up after this long.
    limit: Duration,
    dir: PathBuf,
    /// Name in the upload messages.
    upload_id: String,
    /// Name the streamer reads it back and signs it by.
    file_id: String,
}

/// Outcome and timing of the steps so far.
#[derive(Default)]
struct Steps(Vec<Value>);

impl Steps {
    async fn time<T>(
        &mut self,
        name: &'static str,
        work: impl Future<Output = Result<(T, String), DiagnosticsError>>,
    ) -> Result<T, (&'static str, DiagnosticsError)> {
        let started = Instant::now();
        let outcome = work.await;
        let duration = millis(started.elapsed());
        match outcome {
            Ok((value, detail)) => {
                self.0.push(json!({"name": name, "status": "Success",
                    "durationMs": duration, "detail": detail}));
                Ok(value)
            }
            Err(error) => {
                self.0.push(json!({"name": name, "status": "Failure",
                    "durationMs": duration, "error": with_causes(&error)}));
                Err((name, error))
            }
        }
    }
}

/// Runs the round trip and reports every step's outcome and timing.
pub(super) async fn run(link: &Link) -> Result<Value, DiagnosticsFailed> {
    let started = Instant::now();
    let mut steps = Steps::default();
    let outcome = match prepare(link) {
        Ok(run) => {
            let outcome = round_trip(&run, &mut steps).await;
            remove_dir(&run.dir);
            outcome.map(|()| run.file_id)
        }
        Err(error) => {
            let reason = with_causes(&error);
            steps
                .0
                .push(json!({"name": STEPS[0], "status": "Failure", "error": reason}));
            Err((STEPS[0], error))
        }
    };
    let mut report = json!({"durationMs": millis(started.elapsed()), "size": TEST_FILE_BYTES});
    match outcome {
        Ok(file_id) => {
            tracing::info!(file_id, "diagnostics passed");
            report["result"] = json!("Success");
            report["fileId"] = json!(file_id);
            report["steps"] = Value::Array(steps.0);
            Ok(report)
        }
        Err((step, error)) => {
            let reason = with_causes(&error);
            tracing::warn!(step, %reason, "diagnostics failed");
            let mut listed = steps.0;
            for name in STEPS.iter().skip(listed.len()) {
                listed.push(json!({"name": name, "status": "Skipped"}));
            }
            report["result"] = json!("Failure");
            report["failedStep"] = json!(step);
            report["error"] = json!(reason);
            report["steps"] = Value::Array(listed);
            Err(DiagnosticsFailed {
                step: step.to_owned(),
                reason,
                report,
            })
        }
    }
}

fn prepare(link: &Link) -> Result<Run<'_>, DiagnosticsError> {
    let device = link
        .identity()
        .map(|i| i.device_id)
        .ok_or(DiagnosticsError::NotProvisioned)?;
    let mut unique = [0u8; 8];
    rand::fill(&mut unique);
    let unique: String = unique.iter().map(|b| format!("{b:02x}")).collect();
    let millis = super::session::unix_now();
    let upload_id = format!("diagnostics/{millis}-{unique}.bin");
    Ok(Run {
        link,
        limit: Duration::from_secs(link.config.transfer.stall_secs.saturating_mul(2).max(2)),
        dir: link.config.state_dir.join("diagnostics"),
        file_id: format!("{UPLOADS_PREFIX}{device}/{upload_id}"),
        upload_id,
    })
}

async fn round_trip(
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

async fn compare(original: &[u8], back: &[u8]) -> Result<((), String), DiagnosticsError> {
    if original == back {
        return Ok(((), format!("{} bytes identical", back.len())));
    }
    let detail = match original.iter().zip(back).position(|(a, b)| a != b) {
        Some(offset) => format!("first difference at byte {offset}"),
        None => format!("{} bytes came back, {} went up", back.len(), original.len()),
    };
    Err(DiagnosticsError::Mismatch { detail })
}

fn remove_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, dir = %dir.display(), "diagnostics files not removed");
    }
}

/// Milliseconds with a tenth of a millisecond of precision.
fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 10_000.0).round() / 10.0
}

/// An error and its causes on one line.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compare_names_the_first_differing_byte() {
        let original = vec![7u8; 16];
        assert!(compare(&original, &original).await.is_ok());
        let mut back = original.clone();
        back[9] ^= 1;
        let error = compare(&original, &back).await.expect_err("differs");
        assert!(error.to_string().contains("byte 9"), "{error}");
        let error = compare(&original, &original[..4]).await.expect_err("short");
        assert!(error.to_string().contains("4 bytes came back"), "{error}");
    }

    #[test]
    fn an_answer_reaches_only_the_run_waiting_for_its_file() {
        let diagnostics = Diagnostics::default();
        let mut waiting = diagnostics.expect("uploads/d/diagnostics/a.bin");
        diagnostics.deliver("uploads/d/diagnostics/other.bin", Err("nope".into()));
        assert!(waiting.try_recv().is_err(), "not for this run");
        diagnostics.deliver("uploads/d/diagnostics/a.bin", Err("refused".into()));
        assert_eq!(waiting.try_recv().expect("answered"), Err("refused".into()));
    }
}
