//! Event Hubs messages as [`TwinEvent`]s.

use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use futures::SinkExt;

use super::{EventHubConnection, Events};
use crate::twin::{TwinError, TwinEvent, TwinEventKind};

/// Passes the partition's events on until the receiver fails or nobody reads them.
pub(super) async fn forward(
    mut receiver: Receiver,
    partition: String,
    settings: EventHubConnection,
    mut tx: Events,
) -> Result<(), TwinError> {
    loop {
        let delivery = receiver
            .recv::<Body<Value>>()
            .await
            .map_err(|e| settings.failed("receive events", e))?;
        let Some(event) = to_event(delivery.message(), &partition) else {
            tracing::debug!(%partition, "event without sequence number skipped");
            continue;
        };
        if tx.send(Ok(event)).await.is_err() {
            let _ = receiver.close().await;
            return Ok(());
        }
    }
}

/// The event a message carries; `None` without a sequence number.
fn to_event(message: &Message<Body<Value>>, partition: &str) -> Option<TwinEvent> {
    let annotation = |key: &str| {
        let annotations = &message.message_annotations.as_ref()?.0;
        annotations.get(&OwnedKey::from(Symbol::from(key)))
    };
    let property = |key: &str| match message.application_properties.as_ref()?.0.get(key)? {
        SimpleValue::String(s) => Some(s.as_str()),
        _ => None,
    };
    let text = |value: Option<&Value>| match value {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let sequence = match annotation("x-opt-sequence-number")? {
        Value::Long(n) => u64::try_from(*n).ok()?,
        Value::Ulong(n) => *n,
        _ => return None,
    };
    let device_id = text(annotation("iothub-connection-device-id"))
        .or_else(|| property("deviceId").map(str::to_owned))
        .unwrap_or_default();
    let source = text(annotation("iothub-message-source")).unwrap_or_default();
    let kind = TwinEventKind::of(&source, property("opType"));
    let body = match &message.body {
        Body::Data(batch) => {
            let bytes: Vec<u8> = batch.iter().flat_map(|d| d.0.iter().copied()).collect();
            serde_json::from_slice(&bytes).ok()
        }
        Body::Value(v) => match &v.0 {
            Value::Binary(b) => serde_json::from_slice(b).ok(),
            Value::String(s) => serde_json::from_str(s).ok(),
            _ => None,
        },
        _ => None,
    };
    Some(TwinEvent {
        sequence,
        partition: Some(partition.to_owned()),
        device_id,
        kind,
        body,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use fe2o3_amqp::types::messaging::{ApplicationProperties, MessageAnnotations};
    use fe2o3_amqp::types::primitives::Binary;

    use super::*;

    #[test]
    fn a_twin_change_message_becomes_a_twin_event_of_its_partition() {
        let body = br#"{"version":3,"properties":{"reported":{"state":"READY"}}}"#;
        let message = Message::builder()
            .message_annotations(
                MessageAnnotations::builder()
                    .insert(Symbol::from("x-opt-sequence-number"), Value::Long(12))
                    .insert(
                        Symbol::from("iothub-connection-device-id"),
                        Value::String("mri-01".into()),
                    )
                    .insert(
                        Symbol::from("iothub-message-source"),
                        Value::String("twinChangeEvents".into()),
                    )
                    .build(),
            )
            .application_properties(
                ApplicationProperties::builder()
                    .insert("opType", "updateTwin")
                    .build(),
            )
            .body(Body::from(fe2o3_amqp::types::messaging::Data(
                Binary::from(body.to_vec()),
            )))
            .build();
        let event = to_event(&message, "2").unwrap();
        assert_eq!(event.sequence, 12);
        assert_eq!(event.partition.as_deref(), Some("2"));
        assert_eq!(event.device_id, "mri-01");
        assert_eq!(event.kind, TwinEventKind::TwinChanged);
        assert_eq!(
            event.body.unwrap()["properties"]["reported"]["state"],
            "READY"
        );
    }
}
