//! Why a diagnostics step failed.

use std::path::PathBuf;
use std::time::Duration;

use cloudpillar_protocol::signing::SignatureError;

use crate::engine::verify::TrustLoadError;
use crate::transfer::upload::UploadError;

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
