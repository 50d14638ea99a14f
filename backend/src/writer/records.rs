//! Turning hub events into history records.
//!
//! Every record carries `_id` (`{device}:{sequence}:{enqueued ms}`, so writing it twice stores
//! it once), `deviceId`, `time` (the hub's enqueue time) and `seq` (the stream position).
//! JSON keys that MongoDB would refuse are renamed: `$metadata` members are dropped, any other
//! key starting with `$` (such as `$version`) is stored with a leading `_` instead, a `.` in a
//! key becomes `．` (U+FF0E), a NUL `�` (U+FFFD) and an empty key `_`. Values nested deeper
//! than [`MAX_NESTING`] levels are stored as their JSON text, so no device message can make a
//! document the database refuses.

use mongodb::bson::{self, Bson, DateTime, Document, doc};
use serde_json::Value;

use super::history::{LOGS, TELEMETRY, VERSIONS};
use crate::hub_link::{Event, SOURCE_CONNECTION, SOURCE_TELEMETRY, SOURCE_TWIN};
use crate::messages::{D2cKind, classify};

/// One record and the collection it belongs in.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// [`VERSIONS`], [`LOGS`] or [`TELEMETRY`].
    pub collection: &'static str,
    /// The document to insert.
    pub document: Document,
}

/// The record an event becomes, or `None` for events the writer leaves to other services
/// (file chunks and range requests belong to the streamer).
pub fn record_for(event: &Event) -> Option<Record> {
    let mut document = doc! {
        "_id": format!("{}:{}:{}", event.device_id, event.sequence_number, event.enqueued_ms),
        "deviceId": &event.device_id,
        "time": DateTime::from_millis(i64::try_from(event.enqueued_ms).unwrap_or(i64::MAX)),
        "seq": i64::try_from(event.sequence_number).unwrap_or(i64::MAX),
    };
    let collection = match event.source.as_str() {
        SOURCE_TWIN => {
            twin_change(event, &mut document);
            VERSIONS
        }
        SOURCE_CONNECTION => {
            let op = event
                .properties
                .get("opType")
                .map(String::as_str)
                .unwrap_or_default();
            document.insert("kind", "connection");
            document.insert("connected", op == "deviceConnected");
            VERSIONS
        }
        SOURCE_TELEMETRY => match classify(event) {
            D2cKind::Streamer => return None,
            D2cKind::Log => {
                document.insert("kind", "log");
                d2c_message(event, &mut document);
                LOGS
            }
            D2cKind::Telemetry => {
                document.insert("kind", "telemetry");
                d2c_message(event, &mut document);
                TELEMETRY
            }
        },
        other => {
            tracing::debug!(
                source = other,
                seq = event.sequence_number,
                "unknown event source"
            );
            return None;
        }
    };
    Some(Record {
        collection,
        document,
    })
}

/// A twin change: which sections changed, the twin version and, when the device reported a
/// new `deviceState`, the state it moved to.
fn twin_change(event: &Event, document: &mut Document) {
    let body = event.body.clone().unwrap_or(Value::Null);
    document.insert("kind", "twin");
    if let Some(op) = event.properties.get("opType") {
        document.insert("opType", op);
    }
    if let Some(version) = body.get("version").and_then(Value::as_i64) {
        document.insert("version", version);
    }
    let properties = body.get("properties");
    for section in ["reported", "desired"] {
        if let Some(value) = properties.and_then(|p| p.get(section)) {
            document.insert(section, to_bson(value));
        }
    }
    if let Some(tags) = body.get("tags") {
        document.insert("tags", to_bson(tags));
    }
    let state = properties.and_then(|p| p.get("reported")?.get("deviceState")?.as_str());
    if let Some(state) = state {
        document.insert("deviceState", state);
    }
}

/// A D2C message: its application properties and its body (JSON as a document, other bytes
/// as binary).
fn d2c_message(event: &Event, document: &mut Document) {
    let properties: Document = event
        .properties
        .iter()
        .map(|(k, v)| (safe_key(k), Bson::String(v.clone())))
        .collect();
    document.insert("properties", properties);
    match &event.body {
        Some(body) => document.insert("body", to_bson(body)),
        None => document.insert(
            "body",
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: event.body_bytes(),
            }),
        ),
    };
}

/// Deepest nesting stored as documents; MongoDB refuses documents nested past 100 levels and
/// the record itself adds a few.
pub const MAX_NESTING: usize = 64;

/// JSON to BSON with keys MongoDB accepts (see the module docs).
fn to_bson(value: &Value) -> Bson {
    nested_bson(value, 0)
}

fn nested_bson(value: &Value, depth: usize) -> Bson {
    if depth >= MAX_NESTING && (value.is_object() || value.is_array()) {
        return Bson::String(value.to_string());
    }
    match value {
        Value::Object(members) => Bson::Document(
            members
                .iter()
                .filter(|(key, _)| key.as_str() != "$metadata")
                .map(|(key, value)| (safe_key(key), nested_bson(value, depth + 1)))
                .collect(),
        ),
        Value::Array(items) => Bson::Array(
            items
                .iter()
                .map(|item| nested_bson(item, depth + 1))
                .collect(),
        ),
        Value::String(text) => Bson::String(text.clone()),
        Value::Bool(flag) => Bson::Boolean(*flag),
        Value::Null => Bson::Null,
        Value::Number(number) => match number.as_i64() {
            Some(int) => Bson::Int64(int),
            None => Bson::Double(number.as_f64().unwrap_or(f64::NAN)),
        },
    }
}

fn safe_key(key: &str) -> String {
    let key = if key.starts_with('$') {
        format!("_{key}")
    } else if key.is_empty() {
        "_".to_owned()
    } else {
        key.to_owned()
    };
    if key.contains(['.', '\0']) {
        key.replace('.', "\u{FF0E}").replace('\0', "\u{FFFD}")
    } else {
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(source: &str, body: Value) -> Event {
        Event {
            sequence_number: 7,
            enqueued_time_utc: "2026-12-04T10:00:00.000Z".into(),
            enqueued_ms: 1_796_378_400_000,
            device_id: "dev-1".into(),
            source: source.into(),
            properties: Default::default(),
            system_properties: Default::default(),
            body_base64: String::new(),
            body: Some(body),
        }
    }

    #[test]
    fn reported_change_records_version_patch_and_state() {
        let mut change = event(
            SOURCE_TWIN,
            json!({"version": 12, "properties": {"reported": {
                "deviceState": "PATCH_APPLYING", "$version": 5, "$metadata": {"x": 1}
            }}}),
        );
        change
            .properties
            .insert("opType".into(), "updateTwin".into());
        let record = record_for(&change).expect("record");
        assert_eq!(record.collection, VERSIONS);
        let d = &record.document;
        assert_eq!(d.get_str("_id").expect("id"), "dev-1:7:1796378400000");
        assert_eq!(d.get_str("deviceState").expect("state"), "PATCH_APPLYING");
        assert_eq!(d.get_i64("version").expect("version"), 12);
        let reported = d.get_document("reported").expect("reported");
        assert_eq!(reported.get_i64("_$version").expect("renamed"), 5);
        assert!(!reported.contains_key("$metadata"));
        assert_eq!(
            d.get_datetime("time").expect("time").timestamp_millis(),
            1_796_378_400_000
        );
    }

    #[test]
    fn connection_events_are_state_transitions() {
        let mut connected = event(SOURCE_CONNECTION, json!({"sequenceNumber": "1"}));
        connected
            .properties
            .insert("opType".into(), "deviceConnected".into());
        let record = record_for(&connected).expect("record");
        assert_eq!(record.collection, VERSIONS);
        assert!(record.document.get_bool("connected").expect("flag"));
    }

    #[test]
    fn plain_d2c_messages_are_telemetry() {
        let record = record_for(&event(SOURCE_TELEMETRY, json!({"temp": 21.5}))).expect("record");
        assert_eq!(record.collection, TELEMETRY);
        let body = record.document.get_document("body").expect("body");
        assert_eq!(body.get_f64("temp").expect("temp"), 21.5);
        assert!(LOGS != TELEMETRY);
    }
}
