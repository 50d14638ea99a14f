//! Durable per-device cloud-to-device queues with Azure's limits.

use std::collections::BTreeMap;

use crate::validate::C2D_MAX_BYTES;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::error::{HubError, Refusal, StoreError};
use crate::events::now_ms;
use crate::registry::DeviceRecord;
use redb::ReadableTable;

use crate::store::{Batch, C2D, DEVICES, encode, table_err, txn_get, txn_next};

/// Most messages waiting for one device.
pub const MAX_PENDING: usize = 50;

/// A queued C2D message.
///
/// Stored as a record of two parts: a one-line JSON header ([`Header`], `expiryMs` first, see
/// [`Expiry::of_record`]), a newline, then the raw body bytes. Compact JSON never holds a raw
/// newline, so the first one ends the header, and a queued body is stored and delivered
/// without being encoded or parsed. Records written before this layout are one JSON object
/// with the body as base64 in `body`; they are still read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2dMessage {
    /// Expiry, milliseconds since 1970.
    pub expiry_ms: u64,
    /// `message-id` (`$.mid`).
    pub message_id: String,
    /// `correlation-id` (`$.cid`), when set.
    pub correlation_id: Option<String>,
    /// Application properties.
    pub properties: BTreeMap<String, String>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// When it was queued, milliseconds since 1970.
    pub enqueued_ms: u64,
}

/// The header of a stored [`C2dMessage`]; `body` only in records of the older, all-JSON
/// layout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    expiry_ms: u64,
    message_id: String,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    enqueued_ms: u64,
}

impl C2dMessage {
    /// Whether its time to live has passed.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expiry_ms <= now_ms
    }

    /// The stored record: JSON header, newline, raw body.
    pub fn to_record(&self) -> Vec<u8> {
        let header = Header {
            expiry_ms: self.expiry_ms,
            message_id: self.message_id.clone(),
            correlation_id: self.correlation_id.clone(),
            properties: self.properties.clone(),
            body: None,
            enqueued_ms: self.enqueued_ms,
        };
        let mut record = encode(&header);
        record.reserve_exact(1 + self.body.len());
        record.push(b'\n');
        record.extend_from_slice(&self.body);
        record
    }

    /// Reads a stored record of either layout; `key` names it in errors.
    pub fn from_record(key: &str, record: &[u8]) -> Result<Self, StoreError> {
        let (header, raw) = match record.iter().position(|&b| b == b'\n') {
            Some(end) => (&record[..end], Some(&record[end + 1..])),
            None => (record, None),
        };
        let header: Header = crate::store::decode(key, header)?;
        let body = match (raw, header.body) {
            (Some(raw), _) => raw.to_vec(),
            (None, Some(text)) => STANDARD
                .decode(text)
                .map_err(|source| StoreError::BadBody {
                    key: key.to_owned(),
                    source,
                })?,
            (None, None) => Vec::new(),
        };
        Ok(Self {
            expiry_ms: header.expiry_ms,
            message_id: header.message_id,
            correlation_id: header.correlation_id,
            properties: header.properties,
            body,
            enqueued_ms: header.enqueued_ms,
        })
    }
}

/// The expiry of a queued message, read without decoding its body: counting a queue stays
/// cheap however large its messages are.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expiry {
    /// Expiry, milliseconds since 1970.
    pub expiry_ms: u64,
}

impl Expiry {
    /// The expiry of a stored [`C2dMessage`], read from the front of the record where it is
    /// written, so a queue of large messages is counted without scanning their bodies. A
    /// record in another member order is decoded in full.
    pub fn of_record(key: &str, record: &[u8]) -> Result<Self, StoreError> {
        if let Some(rest) = record.strip_prefix(b"{\"expiryMs\":".as_slice()) {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let expiry_ms = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|text| text.parse().ok());
            if let Some(expiry_ms) = expiry_ms {
                return Ok(Self { expiry_ms });
            }
        }
        let header = record.split(|&b| b == b'\n').next().unwrap_or(record);
        crate::store::decode(key, header)
    }

    /// Whether its time to live has passed.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expiry_ms <= now_ms
    }
}

/// Queues a message for `device`, refusing it past 64 KiB or 50 pending messages.
/// Returns the queue sequence number.
pub fn enqueue(batch: &mut Batch<'_>, device: &str, message: C2dMessage) -> Result<u64, HubError> {
    if message.body.len() > C2D_MAX_BYTES {
        return Err(Refusal::too_large(format!(
            "C2D body of {} bytes is over the {C2D_MAX_BYTES} byte limit",
            message.body.len()
        ))
        .into());
    }
    let _: DeviceRecord =
        txn_get(batch.txn, DEVICES, device)?.ok_or_else(|| Refusal::device_not_found(device))?;
    let now = now_ms();
    let table = batch
        .txn
        .open_table(C2D)
        .map_err(|source| table_err(C2D, source))?;
    let mut pending = 0usize;
    let mut expired = Vec::new();
    for row in table
        .range((device, 0)..=(device, u64::MAX))
        .map_err(StoreError::from)?
    {
        let (k, v) = row.map_err(StoreError::from)?;
        let queued = Expiry::of_record(device, v.value())?;
        if queued.expired(now) {
            expired.push(k.value().1);
        } else {
            pending += 1;
        }
    }
    if pending >= MAX_PENDING {
        return Err(Refusal::new(
            403,
            "DeviceMaximumQueueDepthExceeded",
            format!("{device} already has {MAX_PENDING} pending messages"),
        )
        .into());
    }
    drop(table);
    let seq = txn_next(batch.txn, "c2d_seq")?;
    let mut table = batch
        .txn
        .open_table(C2D)
        .map_err(|source| table_err(C2D, source))?;
    // Expired messages are dropped here, when the queue is next written.
    for old in expired {
        table.remove((device, old)).map_err(StoreError::from)?;
    }
    table
        .insert((device, seq), message.to_record().as_slice())
        .map_err(StoreError::from)?;
    Ok(seq)
}

/// Removes a delivered (or expired) message.
pub fn complete(batch: &mut Batch<'_>, device: &str, seq: u64) -> Result<bool, HubError> {
    let mut table = batch
        .txn
        .open_table(C2D)
        .map_err(|source| table_err(C2D, source))?;
    let existed = table
        .remove((device, seq))
        .map_err(StoreError::from)?
        .is_some();
    Ok(existed)
}

/// Removes every queued message of a device.
pub fn purge(batch: &mut Batch<'_>, device: &str) -> Result<(), HubError> {
    let mut table = batch
        .txn
        .open_table(C2D)
        .map_err(|source| table_err(C2D, source))?;
    table
        .retain_in((device, 0)..=(device, u64::MAX), |_, _| false)
        .map_err(StoreError::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expiry_ms: u64) -> C2dMessage {
        C2dMessage {
            expiry_ms,
            message_id: "m1".into(),
            correlation_id: Some("c\n1".into()),
            properties: [("k".to_owned(), "v\n".to_owned())].into(),
            body: b"{\"expiryMs\":1}\n\x00\xff".to_vec(),
            enqueued_ms: 5,
        }
    }

    #[test]
    fn expiry_is_read_from_the_front_of_a_stored_message() {
        let record = message(1_796_378_400_123).to_record();
        let expiry = Expiry::of_record("d/1", &record).expect("expiry");
        assert_eq!(expiry.expiry_ms, 1_796_378_400_123);
    }

    #[test]
    fn expiry_of_a_record_in_another_member_order_is_decoded_in_full() {
        let record = br#"{"messageId":"m1","body":"","expiryMs":42,"enqueuedMs":1}"#;
        assert_eq!(
            Expiry::of_record("d/1", record).expect("expiry").expiry_ms,
            42
        );
        let broken = br#"{"expiryMs":"soon"}"#;
        assert!(Expiry::of_record("d/1", broken).is_err());
    }

    #[test]
    fn a_stored_message_keeps_its_raw_body_and_header_through_newlines() {
        let sent = message(42);
        let record = sent.to_record();
        let body_at = record.len() - sent.body.len();
        assert_eq!(&record[body_at..], sent.body.as_slice(), "body stored raw");
        assert_eq!(C2dMessage::from_record("d/1", &record).expect("read"), sent);
    }

    #[test]
    fn a_record_of_the_all_json_layout_is_still_read() {
        let record = br#"{"expiryMs":42,"messageId":"m1","correlationId":null,"properties":{"a":"b"},"body":"aGk=","enqueuedMs":5}"#;
        let read = C2dMessage::from_record("d/1", record).expect("read");
        assert_eq!(read.body, b"hi");
        assert_eq!(read.properties.get("a").map(String::as_str), Some("b"));
        assert_eq!((read.expiry_ms, read.enqueued_ms), (42, 5));

        let bad = br#"{"expiryMs":42,"messageId":"m1","body":"a","enqueuedMs":5}"#;
        assert!(matches!(
            C2dMessage::from_record("d/1", bad),
            Err(StoreError::BadBody { .. })
        ));
    }
}
