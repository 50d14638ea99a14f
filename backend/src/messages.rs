//! Which service handles which device-to-cloud message.
//!
//! D2C messages name their type in the protocol's `messageType` application property. File
//! chunks, range requests and requests to sign an upload belong to the streamer; messages typed
//! `Log` are log records; anything else is telemetry.

use cloudpillar_protocol::messages::MESSAGE_TYPE_PROPERTY;

use crate::hub_link::Event;

/// `messageType` of D2C log records.
pub const LOG_MESSAGE_TYPE: &str = "Log";
/// `messageType` values the streamer handles (the protocol's D2C transfer and signing messages).
const STREAMER_TYPES: [&str; 3] = ["UploadFileChunk", "StreamRange", "SignFile"];

/// Who takes care of a D2C message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum D2cKind {
    /// File chunks and range requests: the streamer.
    Streamer,
    /// Log records: the writer's `logs` collection.
    Log,
    /// Anything else: the writer's `telemetry` collection.
    Telemetry,
}

/// Sorts a D2C event by its message type property.
pub fn classify(event: &Event) -> D2cKind {
    match event
        .properties
        .get(MESSAGE_TYPE_PROPERTY)
        .map(String::as_str)
    {
        Some(kind) if STREAMER_TYPES.contains(&kind) => D2cKind::Streamer,
        Some(LOG_MESSAGE_TYPE) => D2cKind::Log,
        _ => D2cKind::Telemetry,
    }
}
