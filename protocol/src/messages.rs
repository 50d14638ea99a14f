//! Cloud-to-device (C2D) and device-to-cloud (D2C) messages.
//!
//! A message body is JSON with a `type` member naming the message (`{"type":
//! "DownloadFileChunk", "fileId": ..., ...}`); the same name goes into the
//! [`MESSAGE_TYPE_PROPERTY`] application property so routers need not parse bodies. Chunk bytes
//! travel as strict base64. [`C2dMessage::encode`] and friends refuse bodies over IoT Hub's
//! limits before sending, and the decoders refuse them before parsing.
//!
//! Besides file transfers, a device may ask the back end to sign one of its own uploads
//! (D2C `SignFile`, answered by C2D `FileSigned` or `SignFileFailed`; see [`sign`]), which is
//! how RunDiagnostics proves the whole signing chain.

mod codec;
mod sign;

use serde::{Deserialize, Serialize};

use codec::{check_file_id, check_transfer, decode_body, encode_body};
pub use sign::{
    FileSigned, MAX_REASON_BYTES, MAX_SIGN_TEXT_BYTES, SignFileFailed, SignFileRequest,
};

use crate::crc;
use crate::encoding::base64_bytes;

/// Largest C2D message body IoT Hub accepts.
pub const C2D_MAX_BYTES: usize = 64 * 1024;
/// Largest D2C message body IoT Hub accepts.
pub const D2C_MAX_BYTES: usize = 256 * 1024;
/// Largest raw chunk in a [`DownloadFileChunk`] (C2D).
///
/// Base64 grows data by 4/3, so 48 KiB would already fill 64 KiB with no room for the JSON
/// around it; 47 KiB (62.7 KiB as base64) leaves about 1.3 KiB for the envelope, which a
/// file id of at most [`MAX_FILE_ID_BYTES`] always fits in.
pub const MAX_RAW_CHUNK: usize = 47 * 1024;
/// Largest raw chunk in an [`UploadFileChunk`] (D2C): 171 KiB as base64, well inside
/// [`D2C_MAX_BYTES`] with its envelope.
pub const MAX_UPLOAD_CHUNK: usize = 128 * 1024;
/// Longest file id, in UTF-8 bytes.
pub const MAX_FILE_ID_BYTES: usize = 256;
/// Longest upload id, in bytes (ASCII letters, digits, `-`, `_` and `.`).
pub const MAX_UPLOAD_ID_BYTES: usize = 64;
/// Application property that carries the message type next to the body.
pub const MESSAGE_TYPE_PROPERTY: &str = "messageType";

/// A message from the back end to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum C2dMessage {
    /// One chunk of a file being downloaded.
    DownloadFileChunk(DownloadFileChunk),
    /// The CRC a range of a downloaded file must have.
    #[serde(rename = "VerifyRangeCRC")]
    VerifyRangeCrc(VerifyRangeCrc),
    /// Move the device to new provisioning details.
    UpgradeProvisioning(UpgradeProvisioning),
    /// The answer to a [`D2cMessage::SignFile`] that succeeded.
    FileSigned(FileSigned),
    /// The answer to a [`D2cMessage::SignFile`] that failed.
    SignFileFailed(SignFileFailed),
}

/// A message from one device to the back end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum D2cMessage {
    /// One chunk of a file being uploaded.
    UploadFileChunk(UploadFileChunk),
    /// Ask the streamer to (re)send a byte range of a file, e.g. to resume.
    #[serde(rename = "StreamRange")]
    StreamRangeRequest(StreamRangeRequest),
    /// Ask the back end to sign one of this device's own uploads.
    SignFile(SignFileRequest),
}

/// One chunk of a download. `offset` is the position of `data[0]` in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadFileChunk {
    /// Transfer id the chunks of one file share.
    pub file_id: String,
    /// Byte offset of this chunk in the file.
    pub offset: u64,
    /// Chunk bytes, at most [`MAX_RAW_CHUNK`]; base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    /// Size of the whole file, when the sender knows it (lets the device report progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<u64>,
}

/// Expected CRC-32 of the file bytes in `[range_start, range_end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRangeCrc {
    /// Transfer id.
    pub file_id: String,
    /// First byte of the range.
    pub range_start: u64,
    /// One past the last byte of the range.
    pub range_end: u64,
    /// CRC-32/ISO-HDLC of the range, 8 hex digits in JSON (see [`crate::crc`]).
    #[serde(with = "crc::hex_text")]
    pub crc: u32,
}

/// How the device authenticates after a provisioning upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMethod {
    /// Shared access signature from a symmetric key.
    #[serde(rename = "SAS")]
    Sas,
    /// X.509 client certificate.
    #[serde(rename = "X509")]
    X509,
}

/// Restriction mode the device runs in after a provisioning upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProvisioningMode {
    /// Everything allowed.
    Full,
    /// No shell actions; zones enforced.
    Strict,
    /// Communication only.
    Comm,
}

/// New provisioning details for a device. `key` is a secret and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeProvisioning {
    /// Authentication method to use.
    pub auth_method: AuthMethod,
    /// Host name of the hub to connect to.
    pub hub: String,
    /// Restriction mode.
    pub mode: ProvisioningMode,
    /// Key material for the method (base64 symmetric key or PEM).
    pub key: String,
}

impl std::fmt::Debug for UpgradeProvisioning {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("UpgradeProvisioning")
            .field("auth_method", &self.auth_method)
            .field("hub", &self.hub)
            .field("mode", &self.mode)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// One chunk of an upload. `offset` is the position of `data[0]` in the file.
///
/// `upload_id` tells uploads under the same `file_id` apart: chunks of an upload already
/// stored are dropped, and a new `upload_id` replaces the stored file. Without it the file id
/// alone names the upload, so a file id is uploaded once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadFileChunk {
    /// Transfer id: the name the file is stored under.
    pub file_id: String,
    /// Identity of this upload of `file_id`, the same in all its chunks: 1 to
    /// [`MAX_UPLOAD_ID_BYTES`] ASCII letters, digits, `-`, `_` or `.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// Byte offset of this chunk in the file.
    pub offset: u64,
    /// Chunk bytes, at most [`MAX_UPLOAD_CHUNK`]; base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    /// True on the file's final chunk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last: bool,
}

/// Request for the bytes of a file from `from` up to `to` (exclusive), or to its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRangeRequest {
    /// Transfer id.
    pub file_id: String,
    /// First byte wanted.
    pub from: u64,
    /// One past the last byte wanted; `None` means to the end of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}

/// A message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The body is over the limit for its direction.
    #[error("{direction} message body of {size} bytes is over the {max} byte limit")]
    TooLarge {
        /// `C2D` or `D2C`.
        direction: &'static str,
        /// Body size.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// The body is not a message of this direction.
    #[error("{direction} message body is not a known message")]
    Decode {
        /// `C2D` or `D2C`.
        direction: &'static str,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The message could not be written as JSON.
    #[error("{direction} message could not be encoded")]
    Encode {
        /// `C2D` or `D2C`.
        direction: &'static str,
        /// Serializer error.
        #[source]
        source: serde_json::Error,
    },
    /// The message parsed but breaks a rule of its type.
    #[error("{message_type} message is invalid: {reason}")]
    Invalid {
        /// Message type.
        message_type: &'static str,
        /// Rule broken.
        reason: &'static str,
    },
}

impl C2dMessage {
    /// Name for the [`MESSAGE_TYPE_PROPERTY`] property (same as the body's `type`).
    pub fn message_type(&self) -> &'static str {
        match self {
            Self::DownloadFileChunk(_) => "DownloadFileChunk",
            Self::VerifyRangeCrc(_) => "VerifyRangeCRC",
            Self::UpgradeProvisioning(_) => "UpgradeProvisioning",
            Self::FileSigned(_) => "FileSigned",
            Self::SignFileFailed(_) => "SignFileFailed",
        }
    }

    /// JSON body, refused when invalid or over [`C2D_MAX_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.check()?;
        encode_body(self, "C2D", C2D_MAX_BYTES)
    }

    /// Parses a body, refusing oversize bodies before parsing and invalid messages after.
    pub fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let message: Self = decode_body(body, "C2D", C2D_MAX_BYTES)?;
        message.check()?;
        Ok(message)
    }

    fn check(&self) -> Result<(), MessageError> {
        let invalid = |reason| {
            Err(MessageError::Invalid {
                message_type: self.message_type(),
                reason,
            })
        };
        match self {
            Self::DownloadFileChunk(chunk) => check_transfer(
                self.message_type(),
                &chunk.file_id,
                chunk.offset,
                &chunk.data,
                MAX_RAW_CHUNK,
            ),
            Self::VerifyRangeCrc(range) if range.range_start > range.range_end => {
                invalid("rangeStart is after rangeEnd")
            }
            Self::VerifyRangeCrc(range) => check_file_id(self.message_type(), &range.file_id),
            Self::UpgradeProvisioning(upgrade) if upgrade.hub.is_empty() => invalid("hub is empty"),
            Self::UpgradeProvisioning(_) => Ok(()),
            Self::FileSigned(signed)
                if signed.sign.is_empty() || signed.sign.len() > MAX_SIGN_TEXT_BYTES =>
            {
                invalid("sign must be 1 to 256 bytes")
            }
            Self::FileSigned(signed) => check_file_id(self.message_type(), &signed.file_id),
            Self::SignFileFailed(failed) if failed.reason.len() > MAX_REASON_BYTES => {
                invalid("reason is over 1024 bytes")
            }
            Self::SignFileFailed(failed) => check_file_id(self.message_type(), &failed.file_id),
        }
    }
}

impl D2cMessage {
    /// Name for the [`MESSAGE_TYPE_PROPERTY`] property (same as the body's `type`).
    pub fn message_type(&self) -> &'static str {
        match self {
            Self::UploadFileChunk(_) => "UploadFileChunk",
            Self::StreamRangeRequest(_) => "StreamRange",
            Self::SignFile(_) => "SignFile",
        }
    }

    /// JSON body, refused when invalid or over [`D2C_MAX_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        self.check()?;
        encode_body(self, "D2C", D2C_MAX_BYTES)
    }

    /// Parses a body, refusing oversize bodies before parsing and invalid messages after.
    pub fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let message: Self = decode_body(body, "D2C", D2C_MAX_BYTES)?;
        message.check()?;
        Ok(message)
    }

    fn check(&self) -> Result<(), MessageError> {
        match self {
            Self::UploadFileChunk(chunk)
                if chunk
                    .upload_id
                    .as_deref()
                    .is_some_and(|id| !valid_upload_id(id)) =>
            {
                Err(MessageError::Invalid {
                    message_type: self.message_type(),
                    reason: "uploadId must be 1 to 64 letters, digits, '-', '_' or '.'",
                })
            }
            Self::UploadFileChunk(chunk) => check_transfer(
                self.message_type(),
                &chunk.file_id,
                chunk.offset,
                &chunk.data,
                MAX_UPLOAD_CHUNK,
            ),
            Self::StreamRangeRequest(range) if range.to.is_some_and(|to| to < range.from) => {
                Err(MessageError::Invalid {
                    message_type: self.message_type(),
                    reason: "to is before from",
                })
            }
            Self::StreamRangeRequest(range) => check_file_id(self.message_type(), &range.file_id),
            Self::SignFile(request) => check_file_id(self.message_type(), &request.file_id),
        }
    }
}

/// True for an upload id of 1 to [`MAX_UPLOAD_ID_BYTES`] ASCII letters, digits, `-`, `_` or
/// `.`, other than `.` and `..` (it becomes one folder name of the back end's staging area).
pub fn valid_upload_id(id: &str) -> bool {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    !id.is_empty()
        && id.len() <= MAX_UPLOAD_ID_BYTES
        && id != "."
        && id != ".."
        && id.chars().all(allowed)
}
