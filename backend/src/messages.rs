//! Which service handles which device-to-cloud message.

use crate::hub_link::Event;

/// Application property naming a D2C message's type.
pub const MESSAGE_TYPE_PROPERTY: &str = "messageType";

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
        Some("UploadFileChunk" | "StreamRange") => D2cKind::Streamer,
        Some("Log") => D2cKind::Log,
        _ => D2cKind::Telemetry,
    }
}
