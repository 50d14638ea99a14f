//! Which service handles which device-to-cloud message.
//!
//! D2C messages name their type in the protocol's `messageType` application property, and the
//! protocol's own messages also in their body's `type` member, which counts when the property
//! is missing (a device that cannot set application properties). File chunks, range requests
//! and requests to sign an upload belong to the streamer; messages typed `Log` are log records;
//! anything else is telemetry.

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

/// Sorts a D2C event by its message type property, or its JSON body's `type` without one.
pub fn classify(event: &Event) -> D2cKind {
    let named = match event.properties.get(MESSAGE_TYPE_PROPERTY) {
        Some(property) => Some(property.as_str()),
        None => event
            .body
            .as_ref()
            .and_then(|body| body.get("type")?.as_str()),
    };
    match named {
        Some(kind) if STREAMER_TYPES.contains(&kind) => D2cKind::Streamer,
        Some(LOG_MESSAGE_TYPE) => D2cKind::Log,
        _ => D2cKind::Telemetry,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn event(properties: &[(&str, &str)], body: Value) -> Event {
        Event {
            sequence_number: 1,
            enqueued_time_utc: "2026-12-05T05:00:00.000Z".into(),
            enqueued_ms: 1_796_446_800_000,
            device_id: "dev-1".into(),
            source: crate::hub_link::SOURCE_TELEMETRY.into(),
            properties: properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            system_properties: Default::default(),
            body: Some(body),
            body_base64: String::new(),
        }
    }

    #[test]
    fn the_body_type_routes_a_message_without_the_property() {
        let chunk = json!({"type": "UploadFileChunk", "fileId": "a", "offset": 0, "data": ""});
        assert_eq!(classify(&event(&[], chunk)), D2cKind::Streamer);
        let log = json!({"type": "Log", "text": "started"});
        assert_eq!(classify(&event(&[], log.clone())), D2cKind::Log);
        assert_eq!(
            classify(&event(&[], json!({"temp": 21}))),
            D2cKind::Telemetry
        );
        assert_eq!(classify(&event(&[], json!([1, 2]))), D2cKind::Telemetry);
        // The property, when there, decides.
        let typed = event(&[(MESSAGE_TYPE_PROPERTY, "Heartbeat")], log);
        assert_eq!(classify(&typed), D2cKind::Telemetry);
    }
}
