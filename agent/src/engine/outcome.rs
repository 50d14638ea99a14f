//! The result of one recipe step, before it becomes a reported status.

pub use cloudpillar_protocol::reported::StepStatus;
use serde::{Deserialize, Serialize};

/// Result codes the agent itself produces (shell steps report their exit code).
pub mod codes {
    /// The `shell` value names no supported shell.
    pub const UNKNOWN_SHELL: &str = "unknown_shell";
    /// The named shell is not installed.
    pub const SHELL_MISSING: &str = "shell_missing";
    /// A bash or sh body contains CR characters (F19).
    pub const CRLF_IN_BASH: &str = "crlf_in_bash_script";
    /// The process could not be started.
    pub const SPAWN_FAILED: &str = "spawn_failed";
    /// The step ran past its timeout and was killed.
    pub const TIMEOUT: &str = "timeout";
    /// The step was cancelled or superseded.
    pub const CANCELLED: &str = "cancelled";
    /// The process died from a signal.
    pub const KILLED: &str = "killed";
    /// Processes of the step's interrupted run survived SIGKILL; it is not run again.
    pub const STILL_RUNNING: &str = "still_running";
    /// Strict mode forbids shell actions.
    pub const STRICT_MODE: &str = "strict_mode";
    /// The device is in communication-only mode.
    pub const COMMUNICATION_ONLY: &str = "communication_only";
    /// A zone refused the file.
    pub const ZONE_DENIED: &str = "zone_denied";
    /// A path escapes the work dir or its zone, or cannot be used here.
    pub const BAD_PATH: &str = "bad_path";
    /// Content did not match its CRC or signature after every attempt (F12).
    pub const INTEGRITY_MISMATCH: &str = "integrity_mismatch";
    /// A signature is not valid strict base64 or not a P-521 signature (F14-F16).
    pub const BAD_SIGNATURE_ENCODING: &str = "bad_signature_encoding";
    /// The `changeSign` does not verify.
    pub const BAD_SIGNATURE: &str = "bad_signature";
    /// The recipe carries no `changeSign` but signatures are required.
    pub const MISSING_SIGNATURE: &str = "missing_signature";
    /// A download step has no `sign` but signatures are required.
    pub const UNSIGNED_DOWNLOAD: &str = "unsigned_download";
    /// The action is not known to this agent.
    pub const UNKNOWN_ACTION: &str = "unknown_action";
    /// Local I/O failed.
    pub const IO_ERROR: &str = "io_error";
    /// The download server refused the file, or the connection kept failing.
    pub const DOWNLOAD_FAILED: &str = "download_failed";
    /// `source` cannot be fetched over any transport the step allows.
    pub const BAD_SOURCE: &str = "bad_source";
}

/// What running a step produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    /// Final status.
    pub status: StepStatus,
    /// `ResultCode`: an exit code or one of [`codes`].
    pub code: String,
    /// `ResultText`: output tail or reason.
    pub text: String,
}

impl StepOutcome {
    /// Text of a successful step without output.
    pub const DONE_TEXT: &'static str = "Operation Completed Successfully";

    /// A successful outcome.
    pub fn succeeded(code: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            status: StepStatus::Success,
            code: code.into(),
            text: text.into(),
        }
    }

    /// A failed outcome.
    pub fn failed(code: impl Into<String>, text: impl Into<String>) -> Self {
        let code = code.into();
        let status = if code == codes::CANCELLED {
            StepStatus::Cancelled
        } else {
            StepStatus::Failure
        };
        Self {
            status,
            code,
            text: text.into(),
        }
    }

    /// Whether the recipe may continue after this step.
    pub fn is_success(&self) -> bool {
        self.status == StepStatus::Success
    }
}
