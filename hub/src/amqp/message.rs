//! Hub events as Event Hubs messages, shaped the way Azure IoT Hub's built-in endpoint sends
//! them: body as one data section, `iothub-*` system properties and Event Hubs' `x-opt-*`
//! values as message annotations, the event's own properties as application properties.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, Symbol, Timestamp, Value};

use crate::events::HubEvent;

/// Annotation: the event's sequence number in its partition.
pub const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";
/// Annotation: the event's offset in its partition, as a string.
pub const OFFSET: &str = "x-opt-offset";
/// Annotation: when the hub enqueued the event.
pub const ENQUEUED_TIME: &str = "x-opt-enqueued-time";

/// System properties that travel in the message's properties section instead of annotations.
const PROPERTIES_SECTION: [&str; 5] = [
    "message-id",
    "correlation-id",
    "content-type",
    "content-encoding",
    "user-id",
];

/// The Event Hubs message for `event`.
///
/// On this hub an event's offset and sequence number are both its position in the hub's one
/// event log: they increase within a partition but skip the numbers of other partitions.
pub fn to_message(event: &HubEvent) -> Message<Data> {
    let enqueued = Timestamp::from_milliseconds(i64::try_from(event.enqueued_ms).unwrap_or(0));
    let seq = i64::try_from(event.sequence_number).unwrap_or(i64::MAX);
    let mut annotations = MessageAnnotations::builder()
        .insert(Symbol::from(SEQUENCE_NUMBER), Value::Long(seq))
        .insert(Symbol::from(OFFSET), Value::String(seq.to_string()))
        .insert(
            Symbol::from(ENQUEUED_TIME),
            Value::Timestamp(enqueued.clone()),
        )
        .build();
    for (key, value) in &event.system_properties {
        if PROPERTIES_SECTION.contains(&key.as_str()) {
            continue;
        }
        let value = match key.as_str() {
            "iothub-enqueuedtime" => Value::Timestamp(enqueued.clone()),
            _ => Value::String(value.clone()),
        };
        annotations
            .0
            .insert(Symbol::from(key.as_str()).into(), value);
    }

    let system = |key: &str| event.system_properties.get(key);
    let json = event.body.is_some() && event.source != crate::events::SOURCE_TELEMETRY;
    let properties = Properties {
        message_id: system("message-id").map(|id| MessageId::String(id.clone())),
        correlation_id: system("correlation-id").map(|id| MessageId::String(id.clone())),
        content_type: system("content-type")
            .map(|t| Symbol::from(t.as_str()))
            .or_else(|| json.then(|| Symbol::from("application/json"))),
        content_encoding: system("content-encoding")
            .map(|e| Symbol::from(e.as_str()))
            .or_else(|| json.then(|| Symbol::from("utf-8"))),
        ..Properties::default()
    };

    let mut application = ApplicationProperties::builder();
    for (key, value) in &event.properties {
        application = application.insert(key.clone(), value.clone());
    }
    let body = STANDARD.decode(&event.body_base64).unwrap_or_default();
    Message::builder()
        .message_annotations(annotations)
        .properties(properties)
        .application_properties(application.build())
        .data(Binary::from(body))
        .build()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use fe2o3_amqp::types::messaging::annotations::OwnedKey;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_twin_change_carries_azure_annotations_properties_and_body() {
        let body = json!({ "version": 4, "properties": { "reported": { "state": "READY" } } });
        let mut event = HubEvent::twin_change("edgehub.local", "mri-01", "updateTwin", body);
        event.sequence_number = 17;
        let message = to_message(&event);

        let annotations = message.message_annotations.unwrap().0;
        let get = |k: &str| annotations.get(&OwnedKey::from(Symbol::from(k))).cloned();
        assert_eq!(get(SEQUENCE_NUMBER), Some(Value::Long(17)));
        assert_eq!(get(OFFSET), Some(Value::String("17".into())));
        assert!(matches!(get(ENQUEUED_TIME), Some(Value::Timestamp(_))));
        assert_eq!(
            get("iothub-message-source"),
            Some(Value::String("twinChangeEvents".into()))
        );
        assert_eq!(
            get("iothub-connection-device-id"),
            Some(Value::String("mri-01".into()))
        );
        let app = message.application_properties.unwrap().0;
        assert_eq!(app.get("opType"), Some(&"updateTwin".into()));
        assert_eq!(app.get("hubName"), Some(&"edgehub.local".into()));
        let props = message.properties.unwrap();
        assert_eq!(props.content_type, Some(Symbol::from("application/json")));
        let sent: serde_json::Value = serde_json::from_slice(&message.body.0).unwrap();
        assert_eq!(sent["properties"]["reported"]["state"], "READY");
        assert_eq!(sent["version"], 4);
    }
}
