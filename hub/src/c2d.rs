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

/// A queued C2D message. Stored as JSON with `expiryMs` first (see [`Expiry::of_record`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct C2dMessage {
    /// Expiry, milliseconds since 1970.
    pub expiry_ms: u64,
    /// `message-id` (`$.mid`).
    pub message_id: String,
    /// `correlation-id` (`$.cid`), when set.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// Application properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Body, base64.
    pub body: String,
    /// When it was queued, milliseconds since 1970.
    pub enqueued_ms: u64,
}

impl C2dMessage {
    /// The body bytes.
    pub fn body_bytes(&self) -> Vec<u8> {
        STANDARD.decode(&self.body).unwrap_or_default()
    }

    /// Whether its time to live has passed.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expiry_ms <= now_ms
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
        crate::store::decode(key, record)
    }

    /// Whether its time to live has passed.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expiry_ms <= now_ms
    }
}

/// Queues a message for `device`, refusing it past 64 KiB or 50 pending messages.
/// Returns the queue sequence number.
pub fn enqueue(
    batch: &mut Batch<'_>,
    device: &str,
    body: &[u8],
    message: C2dMessage,
) -> Result<u64, HubError> {
    if body.len() > C2D_MAX_BYTES {
        return Err(Refusal::too_large(format!(
            "C2D body of {} bytes is over the {C2D_MAX_BYTES} byte limit",
            body.len()
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
        .insert((device, seq), encode(&message).as_slice())
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
            correlation_id: None,
            properties: BTreeMap::new(),
            body: STANDARD.encode(b"{\"expiryMs\":1}"),
            enqueued_ms: 5,
        }
    }

    #[test]
    fn expiry_is_read_from_the_front_of_a_stored_message() {
        let record = crate::store::encode(&message(1_796_378_400_123));
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
}
