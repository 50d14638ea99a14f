//! Signing a device's own upload: the D2C request and its two C2D answers.
//!
//! A device asks with `SignFile {fileId}`, where `fileId` names one of its own uploads the way a
//! `StreamRange` request reads it back (`uploads/{device}/{path}`). The back end answers with
//! exactly one C2D message carrying the same `fileId`: `FileSigned {fileId, sign, size}` when the
//! key holder signed the stored bytes, or `SignFileFailed {fileId, reason}` when it did not.
//!
//! Sizes: `sign` is `kid:base64` text of at most [`MAX_SIGN_TEXT_BYTES`] (a DER P-521 signature
//! with its key id is 188 bytes) and `reason` at most [`MAX_REASON_BYTES`]; with a file id of at
//! most [`super::MAX_FILE_ID_BYTES`] every answer stays far below the 64 KiB C2D limit.

use serde::{Deserialize, Serialize};

/// Longest signature text in a [`FileSigned`] answer, in bytes.
pub const MAX_SIGN_TEXT_BYTES: usize = 256;
/// Longest reason in a [`SignFileFailed`] answer, in UTF-8 bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// Ask the back end to sign one of the sending device's own uploads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignFileRequest {
    /// The upload, named as a `StreamRange` request reads it back: `uploads/{device}/{path}`.
    pub file_id: String,
}

/// The key holder signed the stored bytes of an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileSigned {
    /// The file id of the request.
    pub file_id: String,
    /// `kid:base64` signature text over the SHA-512 of the stored bytes.
    pub sign: String,
    /// Number of bytes signed.
    pub size: u64,
}

/// The back end refused or failed to sign an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignFileFailed {
    /// The file id of the request.
    pub file_id: String,
    /// Why, for people: at most [`MAX_REASON_BYTES`].
    pub reason: String,
}

impl SignFileFailed {
    /// An answer for `file_id`, cutting `reason` at a character boundary to fit
    /// [`MAX_REASON_BYTES`].
    pub fn new(file_id: impl Into<String>, reason: &str) -> Self {
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            file_id: file_id.into(),
            reason: reason[..end].to_owned(),
        }
    }
}
