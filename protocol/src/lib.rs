//! Twin documents, cloud/device messages and signing shared by the operator, hub and agent.
//!
//! Pure types and logic: nothing here does I/O.
//!
//! - [`twin`]: the twin document model, RFC 7396 merge patches and minimal diffs.
//! - [`keys`]: the codec that turns any name into a valid twin key.
//! - [`limits`]: twin depth and size, counted as IoT Hub counts them.
//! - [`causes`]: an error with its source chain on one line.
//! - [`crc`]: CRC-32 of transferred ranges.
//! - [`encoding`]: strict base64.
//! - [`signing`]: canonical JSON and P-521 signatures, key ids and trusted keys.
//! - [`messages`]: C2D and D2C message bodies and their size limits.
//! - [`recipe`]: the `changeSpec` model, its validation and execution order.
//! - [`reported`]: device states and per-step progress reports.
//! - [`sas`]: shared access signature tokens and DPS group key derivation.

pub mod causes;
pub mod crc;
pub mod encoding;
#[doc(hidden)]
pub mod fixtures;
mod hex;
pub mod keys;
pub mod limits;
pub mod messages;
pub mod recipe;
pub mod reported;
pub mod sas;
pub mod signing;
pub mod twin;
