//! Zone, transfer and shell sections of the configuration.

use std::path::PathBuf;

use serde::Deserialize;

/// One named zone: where a transfer may read or write.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Which transfer the zone governs.
    pub action: ZoneAction,
    /// Allow zones grant, deny zones forbid.
    #[serde(default)]
    pub kind: ZoneKind,
    /// Root directory of the zone; `${Name}` in recipes expands to it.
    pub root: PathBuf,
    /// Gitignore-style patterns relative to the root; empty means everything below it.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Largest file the zone accepts, in bytes.
    #[serde(default)]
    pub max_size: Option<u64>,
}

/// The transfer direction a zone applies to.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ZoneAction {
    /// Files sent to the cloud.
    Upload,
    /// Files received from the cloud.
    Download,
}

/// Whether a zone grants or forbids.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ZoneKind {
    /// Files matching the zone are allowed.
    #[default]
    Allow,
    /// Files matching the zone are refused.
    Deny,
}

/// Transfer tuning.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransferConfig {
    /// Attempts before a download with bad integrity fails the step.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Raw bytes per upload chunk (the base64 text grows by 4/3).
    #[serde(default = "default_chunk")]
    pub upload_chunk_bytes: usize,
    /// Messages kept in the offline D2C queue.
    #[serde(default = "default_queue")]
    pub offline_queue_limit: usize,
    /// Seconds without a chunk before a range is requested again.
    #[serde(default = "default_stall")]
    pub stall_secs: u64,
    /// PEM bundle of the CAs trusted for HTTPS downloads. Default:
    /// `/etc/ssl/certs/ca-certificates.crt`.
    #[serde(default)]
    pub https_ca_file: Option<PathBuf>,
    /// Run downloads whose step has no `sign` even while `require_signatures` is on. Only
    /// this file can allow it.
    #[serde(default)]
    pub allow_unsigned_downloads: bool,
}

/// A TPM 2.0 holding the device's symmetric key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// How to reach the TPM, as tpm2-tss names it: `device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`, `mssim:…` or `tabrmd:…`.
    #[serde(default = "default_tcti")]
    pub tcti: String,
    /// Persistent handle (owner range `0x81000000`..=`0x817FFFFF`) of the HMAC key.
    #[serde(default = "default_tpm_handle")]
    pub handle: u32,
}

/// First and last persistent handles of the owner hierarchy.
pub const OWNER_PERSISTENT_HANDLES: std::ops::RangeInclusive<u32> = 0x8100_0000..=0x817F_FFFF;

/// Shell step defaults.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// Seconds before a step is killed.
    #[serde(default = "default_step_timeout")]
    pub timeout_secs: u64,
    /// Seconds a step's process group left by a killed agent gets between SIGTERM and
    /// SIGKILL when the agent starts again.
    #[serde(default = "default_stop_grace")]
    pub stop_grace_secs: u64,
}

fn default_tcti() -> String {
    "device:/dev/tpmrm0".into()
}
fn default_tpm_handle() -> u32 {
    0x8100_0C01
}
fn default_attempts() -> u32 {
    3
}
fn default_chunk() -> usize {
    48 * 1024
}
fn default_queue() -> usize {
    1024
}
fn default_stall() -> u64 {
    30
}
fn default_step_timeout() -> u64 {
    3600
}
fn default_stop_grace() -> u64 {
    10
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            upload_chunk_bytes: default_chunk(),
            offline_queue_limit: default_queue(),
            stall_secs: default_stall(),
            https_ca_file: None,
            allow_unsigned_downloads: false,
        }
    }
}

impl Default for ShellConfig {
    fn default() -> Self {
        Self {
            timeout_secs: default_step_timeout(),
            stop_grace_secs: default_stop_grace(),
        }
    }
}
