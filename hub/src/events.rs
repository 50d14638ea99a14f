//! The event stream standing in for IoT Hub's Event Hubs-compatible endpoint.
//!
//! Every event carries a sequence number assigned when its write commits. Consumers keep their
//! own checkpoint (the next sequence number to read) and resume from it after any restart.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, watch};

/// `iothub-message-source` of device-to-cloud messages.
pub const SOURCE_TELEMETRY: &str = "Telemetry";
/// `iothub-message-source` of twin change notifications.
pub const SOURCE_TWIN: &str = "twinChangeEvents";
/// `iothub-message-source` of connection state events.
pub const SOURCE_CONNECTION: &str = "deviceConnectionStateEvents";

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubEvent {
    /// Position in the log, increasing by one per event, starting at 1.
    pub sequence_number: u64,
    /// When the hub committed it (RFC 3339, UTC).
    pub enqueued_time_utc: String,
    /// Milliseconds since 1970 of the same instant, for retention.
    pub enqueued_ms: u64,
    /// The device the event is about.
    pub device_id: String,
    /// `Telemetry`, `twinChangeEvents` or `deviceConnectionStateEvents`.
    pub source: String,
    /// Application properties: a D2C message's property bag, or Azure's notification
    /// properties (`opType`, `hubName`, `deviceId`, `operationTimestamp`,
    /// `iothub-message-schema`).
    pub properties: BTreeMap<String, String>,
    /// System properties (`iothub-connection-device-id`, `iothub-message-source`,
    /// `message-id`, `content-type`, `content-encoding`, ...).
    pub system_properties: BTreeMap<String, String>,
    /// The body parsed as JSON, when it is JSON.
    pub body: Option<Value>,
    /// The body bytes, base64.
    pub body_base64: String,
}

impl HubEvent {
    /// A new event (sequence number assigned on append).
    pub fn new(device_id: &str, source: &str, body: &[u8]) -> Self {
        Self::with_body(device_id, source, body, serde_json::from_slice(body).ok())
    }

    /// A new event whose body bytes are already known to parse as `json`.
    fn with_body(device_id: &str, source: &str, body: &[u8], json: Option<Value>) -> Self {
        Self::with_body_at(device_id, source, body, json, chrono::Utc::now())
    }

    fn with_body_at(
        device_id: &str,
        source: &str,
        body: &[u8],
        json: Option<Value>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let mut system_properties = BTreeMap::new();
        system_properties.insert("iothub-connection-device-id".into(), device_id.to_string());
        system_properties.insert("iothub-message-source".into(), source.to_string());
        let enqueued = rfc3339(now);
        system_properties.insert("iothub-enqueuedtime".into(), enqueued.clone());
        Self {
            sequence_number: 0,
            enqueued_time_utc: enqueued,
            enqueued_ms: u64::try_from(now.timestamp_millis()).unwrap_or(0),
            device_id: device_id.to_string(),
            source: source.to_string(),
            properties: BTreeMap::new(),
            system_properties,
            body: json,
            body_base64: STANDARD.encode(body),
        }
    }

    /// A twin change notification in Azure's shape: properties `opType` (`updateTwin` or
    /// `replaceTwin`), `hubName`, `deviceId`, `operationTimestamp`, `iothub-message-schema`;
    /// body `{"version": <twin version>, "tags"?: .., "properties": {"desired"|"reported": ..}}`
    /// holding only what changed.
    pub fn twin_change(hub: &str, device_id: &str, op_type: &str, body: Value) -> Self {
        Self::twin_change_at(hub, device_id, op_type, body, chrono::Utc::now())
    }

    fn twin_change_at(
        hub: &str,
        device_id: &str,
        op_type: &str,
        body: Value,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut event = Self::with_body_at(device_id, SOURCE_TWIN, &bytes, Some(body), now);
        event.notification_properties(hub, op_type, "twinChangeNotification");
        event
    }

    /// A connection state event: `opType` `deviceConnected` or `deviceDisconnected`, body
    /// `{"sequenceNumber": "<zero-padded counter>"}`.
    pub fn connection(hub: &str, device_id: &str, connected: bool, counter: u64) -> Self {
        let op = if connected {
            "deviceConnected"
        } else {
            "deviceDisconnected"
        };
        let body = serde_json::json!({ "sequenceNumber": format!("{counter:020}") });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut event = Self::new(device_id, SOURCE_CONNECTION, &bytes);
        event.notification_properties(hub, op, "deviceConnectionStateNotification");
        event
    }

    fn notification_properties(&mut self, hub: &str, op_type: &str, schema: &str) {
        let p = &mut self.properties;
        p.insert("opType".into(), op_type.into());
        p.insert("hubName".into(), hub.into());
        p.insert("deviceId".into(), self.device_id.clone());
        p.insert("operationTimestamp".into(), self.enqueued_time_utc.clone());
        p.insert("iothub-message-schema".into(), schema.into());
    }
}

/// A committed event on its way to live subscribers: built, or only encoded (decoded when
/// someone listens).
#[derive(Debug)]
pub(crate) enum Committed {
    /// The event itself.
    Built(Box<HubEvent>),
    /// The event as stored in the log.
    Encoded(Vec<u8>),
}

/// Keys and values of a small JSON object, written in the order given (sorted, as the
/// `BTreeMap`s of [`HubEvent`] write them).
struct Pairs<'a, const N: usize>([(&'a str, &'a str); N]);

impl<const N: usize> Serialize for Pairs<'_, N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A twin change notification with borrowed parts, serialized exactly like the [`HubEvent`]
/// that [`HubEvent::twin_change`] builds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TwinChangeRecord<'a> {
    sequence_number: u64,
    enqueued_time_utc: &'a str,
    enqueued_ms: u64,
    device_id: &'a str,
    source: &'a str,
    properties: Pairs<'a, 5>,
    system_properties: Pairs<'a, 3>,
    body: &'a Value,
    body_base64: &'a str,
}

/// Encodes the twin change notification `HubEvent::twin_change(hub, device_id, op_type, body)`
/// with sequence number `seq`, committed `now`, as the event log stores it, without building
/// the event.
pub(crate) fn encode_twin_change(
    seq: u64,
    hub: &str,
    device_id: &str,
    op_type: &str,
    body: &Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<u8> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let at = rfc3339(now);
    let record = TwinChangeRecord {
        sequence_number: seq,
        enqueued_time_utc: &at,
        enqueued_ms: u64::try_from(now.timestamp_millis()).unwrap_or(0),
        device_id,
        source: SOURCE_TWIN,
        properties: Pairs([
            ("deviceId", device_id),
            ("hubName", hub),
            ("iothub-message-schema", "twinChangeNotification"),
            ("opType", op_type),
            ("operationTimestamp", &at),
        ]),
        system_properties: Pairs([
            ("iothub-connection-device-id", device_id),
            ("iothub-enqueuedtime", &at),
            ("iothub-message-source", SOURCE_TWIN),
        ]),
        body,
        body_base64: &STANDARD.encode(&bytes),
    };
    serde_json::to_vec(&record).unwrap_or_default()
}

/// Fans committed events out to in-process subscribers and long-polling readers.
#[derive(Debug, Clone)]
pub struct EventBus {
    live: broadcast::Sender<Arc<HubEvent>>,
    last: Arc<watch::Sender<u64>>,
}

impl EventBus {
    /// A bus whose last committed sequence number starts at `last`.
    pub fn new(last: u64) -> Self {
        let (live, _) = broadcast::channel(65_536);
        Self {
            live,
            last: Arc::new(watch::Sender::new(last)),
        }
    }

    /// Called by the store writer after a commit, in sequence order, with the batch's events
    /// and its last sequence number.
    pub(crate) fn publish(&self, events: Vec<Committed>, last: u64) {
        // Without live subscribers the events are only in the log.
        if self.live.receiver_count() > 0 {
            for event in events {
                let event = match event {
                    Committed::Built(e) => *e,
                    Committed::Encoded(bytes) => match serde_json::from_slice(&bytes) {
                        Ok(e) => e,
                        Err(error) => {
                            tracing::error!(%error, "committed event not readable");
                            continue;
                        }
                    },
                };
                let _ = self.live.send(Arc::new(event));
            }
        }
        self.last.send_replace(last);
    }

    /// Sets the last committed sequence number (at start-up).
    pub(crate) fn set_last(&self, last: u64) {
        self.last.send_replace(last);
    }

    /// Live events committed from now on. A receiver that lags loses events
    /// (`RecvError::Lagged`) and should re-read from the log.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<HubEvent>> {
        self.live.subscribe()
    }

    /// Watches the last committed sequence number.
    pub fn last_sequence(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }
}

/// Milliseconds since 1970.
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds and `Z`, as Azure writes timestamps.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_encoded_twin_change_is_the_event_it_stands_for_byte_for_byte() {
        let now = chrono::Utc::now();
        let body = json!({ "version": 7, "properties": { "reported": { "a.b": [1, null], "$version": 3 } } });
        let mut built =
            HubEvent::twin_change_at("hub.local", "dev-1", "updateTwin", body.clone(), now);
        built.sequence_number = 42;
        let encoded = encode_twin_change(42, "hub.local", "dev-1", "updateTwin", &body, now);
        assert_eq!(encoded, serde_json::to_vec(&built).unwrap());
    }
}
