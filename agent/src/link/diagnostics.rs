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

mod error;
mod steps;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cloudpillar_protocol::messages::FileSigned;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use self::error::DiagnosticsError;
use super::Link;
use crate::api::run_diagnostics::DiagnosticsFailed;
use crate::causes::with_causes;
use crate::transfer::Transfers;

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
    let outcome = match steps::prepare(link) {
        Ok(run) => {
            let outcome = steps::round_trip(&run, &mut steps).await;
            steps::remove_dir(&run.dir);
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

/// Milliseconds with a tenth of a millisecond of precision.
fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 10_000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compare_names_the_first_differing_byte() {
        let original = vec![7u8; 16];
        assert!(steps::compare(&original, &original).await.is_ok());
        let mut back = original.clone();
        back[9] ^= 1;
        let error = steps::compare(&original, &back).await.expect_err("differs");
        assert!(error.to_string().contains("byte 9"), "{error}");
        let error = steps::compare(&original, &original[..4])
            .await
            .expect_err("short");
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
