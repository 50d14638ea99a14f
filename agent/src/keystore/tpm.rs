//! The device key in a TPM 2.0: an HMAC-SHA256 object at a persistent handle.
//!
//! Import creates the object from the key bytes under a storage primary key of the owner
//! hierarchy, loads it and makes it persistent at the configured handle (replacing what was
//! there). Signing asks the TPM for the HMAC of a message; the key never leaves the TPM.
//! Every call opens its own connection, so nothing TPM-related is held between tokens.

/// Errors from boxed TPM library errors, kept as sources.
type Source = Box<dyn std::error::Error + Send + Sync>;

/// A TPM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The agent was built without the `tpm` feature.
    #[error("this agent was built without TPM support (cargo feature tpm)")]
    Unsupported,
    /// The TCTI string could not be parsed or the TPM could not be reached.
    #[error("failed to open the TPM at {tcti:?}")]
    Open {
        /// The configured TCTI.
        tcti: String,
        /// What the TPM library reported.
        source: Source,
    },
    /// Nothing is stored at the persistent handle.
    #[error(
        "TPM handle {handle:#010x} holds no device key; import one (see the agent README, \
         \"Device key in a TPM\")"
    )]
    HandleMissing {
        /// The configured handle.
        handle: u32,
    },
    /// A TPM command failed.
    #[error("failed to {action} (TPM handle {handle:#010x})")]
    Command {
        /// What was being done.
        action: &'static str,
        /// The configured handle.
        handle: u32,
        /// What the TPM library reported.
        source: Source,
    },
    /// A key template was refused by the TPM library.
    #[error("failed to build a TPM key template")]
    Template {
        /// What the TPM library reported.
        source: Source,
    },
    /// The key is longer than a TPM keyed-hash object may hold.
    #[error("a device key of {len} bytes is too long for a TPM HMAC key")]
    KeyTooLong {
        /// Decoded key length.
        len: usize,
    },
    /// The message is longer than one TPM2_HMAC call takes.
    #[error("a message of {len} bytes is too long for one TPM HMAC (1024 at most)")]
    MessageTooLong {
        /// Message length.
        len: usize,
    },
    /// The TPM's HMAC of a probe differs from the software HMAC of the imported key.
    #[error("the key imported at TPM handle {handle:#010x} does not sign like the key file")]
    ImportMismatch {
        /// The configured handle.
        handle: u32,
    },
}

/// Where the device key is held: a TPM reached through `tcti`, at persistent `handle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmKey {
    /// tpm2-tss TCTI string.
    pub tcti: String,
    /// Persistent handle of the HMAC key.
    pub handle: u32,
}

#[cfg(feature = "tpm")]
mod esys;

#[cfg(not(feature = "tpm"))]
impl TpmKey {
    /// HMAC-SHA256 of `message` by the TPM (unavailable in this build).
    pub fn hmac_sha256(&self, _message: &[u8]) -> Result<Vec<u8>, TpmError> {
        Err(TpmError::Unsupported)
    }

    /// Stores `key` at the handle (unavailable in this build).
    pub fn import(&self, _key: &[u8]) -> Result<(), TpmError> {
        Err(TpmError::Unsupported)
    }

    /// Whether the handle holds a key (unavailable in this build).
    pub fn check(&self) -> Result<(), TpmError> {
        Err(TpmError::Unsupported)
    }
}
