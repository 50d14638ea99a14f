//! Hub operations shared by the REST API, the MQTT endpoint and embedders.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::c2d::{self, C2dMessage};
use crate::core::{Core, Outbound};
use crate::error::{HubError, Refusal};
use crate::events::{HubEvent, SOURCE_TELEMETRY, now_ms};
use crate::registry::{self, DeviceRecord, if_match};
use crate::store::{DEVICES, Pending, SESSIONS, TWINS, txn_delete, txn_get, txn_put};
use crate::twins::{self, StoredTwin};
use crate::validate::{C2D_MAX_BYTES, D2C_MAX_BYTES};

impl Core {
    /// Fills in the live fields of a stored device record.
    fn overlay(&self, mut device: DeviceRecord) -> DeviceRecord {
        if let Some(activity) = self.live(&device.device_id) {
            device.connection_state = "Connected".into();
            device.last_activity_time = activity;
        } else {
            // A stored "Connected" is stale until the registry write of the disconnect lands.
            device.connection_state = "Disconnected".into();
            if let Some(activity) = self.departed(&device.device_id) {
                device.last_activity_time = activity;
            }
        }
        if device.last_activity_time.is_empty() {
            device.last_activity_time = registry::NEVER_ACTIVE.into();
        }
        device.cloud_to_device_message_count =
            self.c2d_depth(&device.device_id).map_or(0, |n| n as u64);
        device
    }

    /// `PUT /devices/{id}`: creates (with a fresh twin) or updates a device.
    pub async fn put_device(
        &self,
        id: &str,
        wanted: DeviceRecord,
        if_match_header: Option<String>,
    ) -> Result<DeviceRecord, HubError> {
        let id_owned = id.to_string();
        let (device, _) = self
            .store
            .writer()
            .write(move |b| {
                let (device, created) =
                    registry::put_device(b, &id_owned, wanted, if_match_header.as_deref())?;
                if created {
                    twins::create(b, &id_owned);
                }
                Ok((device, created))
            })
            .await?;
        if !device.is_enabled() {
            self.push(id, Outbound::Close);
        }
        Ok(self.overlay(device))
    }

    /// `GET /devices/{id}`.
    pub fn get_device(&self, id: &str) -> Result<DeviceRecord, HubError> {
        let device: DeviceRecord = self
            .store
            .get(DEVICES, id)?
            .ok_or_else(|| Refusal::device_not_found(id))?;
        Ok(self.overlay(device))
    }

    /// `DELETE /devices/{id}`: removes the device, its twin, queue and session.
    pub async fn delete_device(
        &self,
        id: &str,
        if_match_header: Option<String>,
    ) -> Result<(), HubError> {
        let id_owned = id.to_string();
        self.store
            .writer()
            .write(move |b| {
                let device: DeviceRecord = txn_get(b.txn, DEVICES, &id_owned)?
                    .ok_or_else(|| Refusal::device_not_found(&id_owned))?;
                if let Some(h) = &if_match_header
                    && !if_match(h, &device.etag)
                {
                    return Err(Refusal::precondition_failed("device etag changed").into());
                }
                txn_delete(b.txn, DEVICES, &id_owned)?;
                b.delete_twin(&id_owned)?;
                txn_delete(b.txn, SESSIONS, &id_owned)?;
                c2d::purge(b, &id_owned)
            })
            .await?;
        self.forget(id);
        self.c2d_forget_device(id);
        self.push(id, Outbound::Close);
        Ok(())
    }

    /// Every registered device with its twin, in id order.
    pub fn all_twins(&self) -> Result<Vec<Value>, HubError> {
        let devices: Vec<(String, DeviceRecord)> = self.store.all(DEVICES)?;
        let mut twins: BTreeMap<String, StoredTwin> = self.store.all(TWINS)?.into_iter().collect();
        Ok(devices
            .into_iter()
            .map(|(id, d)| {
                twins
                    .remove(&id)
                    .unwrap_or_default()
                    .service_view(&self.overlay(d))
            })
            .collect())
    }

    /// `GET /twins/{id}`.
    pub fn get_twin(&self, id: &str) -> Result<Value, HubError> {
        let device = self.get_device(id)?;
        let twin: StoredTwin = self.store.get(TWINS, id)?.unwrap_or_else(StoredTwin::new);
        Ok(twin.service_view(&device))
    }

    /// The document a device receives from a twin GET.
    pub fn device_twin(&self, id: &str) -> Result<Value, HubError> {
        let twin: StoredTwin = self
            .store
            .get(TWINS, id)?
            .ok_or_else(|| Refusal::device_not_found(id))?;
        Ok(twin.device_view())
    }

    /// `PATCH /twins/{id}` (`replace` false) or `PUT /twins/{id}` (`replace` true); pushes
    /// the desired change to the device once it is durable.
    pub async fn write_twin(
        &self,
        id: &str,
        body: Value,
        if_match_header: Option<String>,
        replace: bool,
    ) -> Result<Value, HubError> {
        let (hub, id_owned) = (self.config.hostname.clone(), id.to_string());
        let written = self
            .store
            .writer()
            .write(move |b| {
                twins::service_write(
                    b,
                    &hub,
                    &id_owned,
                    &body,
                    if_match_header.as_deref(),
                    replace,
                )
            })
            .await?;
        if let Some((version, patch)) = written.desired_notification {
            self.push(
                id,
                Outbound::Desired(version, serde_json::to_vec(&patch).unwrap_or_default()),
            );
        }
        Ok(written.twin.service_view(&self.overlay(written.device)))
    }

    /// A device's reported-properties patch; returns the new reported `$version`.
    pub async fn patch_reported(&self, id: &str, patch: Value) -> Result<u64, HubError> {
        self.queue_reported(id, patch)?.wait().await
    }

    /// Queues a device's reported-properties patch behind the writes queued before it and
    /// returns a handle to its durable result (the new reported `$version`).
    pub fn queue_reported(&self, id: &str, patch: Value) -> Result<Pending<u64>, HubError> {
        let (hub, id_owned) = (self.config.hostname.clone(), id.to_string());
        self.store
            .writer()
            .submit(move |b| twins::patch_reported(b, &hub, &id_owned, patch))
    }

    /// A device-to-cloud message, appended to the event stream once durable.
    pub async fn d2c(
        &self,
        id: &str,
        body: Vec<u8>,
        properties: BTreeMap<String, String>,
        system: BTreeMap<String, String>,
    ) -> Result<HubEvent, HubError> {
        if body.len() > D2C_MAX_BYTES {
            return Err(Refusal::too_large(format!(
                "D2C body of {} bytes is over the {D2C_MAX_BYTES} byte limit",
                body.len()
            ))
            .into());
        }
        let mut event = HubEvent::new(id, SOURCE_TELEMETRY, &body);
        event.properties = properties;
        event.system_properties.extend(system);
        let mut committed = event.clone();
        committed.sequence_number = self
            .store
            .writer()
            .write(move |b| b.append_event(event))
            .await?;
        Ok(committed)
    }

    /// Queues a C2D message (REST extension); returns its message id.
    pub async fn send_c2d(
        &self,
        id: &str,
        body: Vec<u8>,
        properties: BTreeMap<String, String>,
        message_id: Option<String>,
        correlation_id: Option<String>,
        ttl: Option<Duration>,
    ) -> Result<String, HubError> {
        let now = now_ms();
        let ttl = check_c2d_ttl(ttl)?.unwrap_or(self.config.c2d_default_ttl);
        // An empty id would leave the device nothing to tell repeats by.
        let message_id = message_id.filter(|mid| !mid.is_empty());
        let correlation_id = correlation_id.filter(|cid| !cid.is_empty());
        check_c2d_size(
            id,
            &body,
            &properties,
            message_id.as_deref(),
            correlation_id.as_deref(),
        )?;
        let message = C2dMessage {
            message_id: message_id.unwrap_or_else(|| format!("{:016x}", self.next_id() ^ now)),
            correlation_id,
            properties,
            body,
            expiry_ms: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            enqueued_ms: now,
        };
        let mid = message.message_id.clone();
        let id_owned = id.to_string();
        self.store
            .writer()
            .write(move |b| c2d::enqueue(b, &id_owned, message))
            .await?;
        self.push(id, Outbound::C2dWake);
        Ok(mid)
    }

    /// Pending, unexpired C2D messages of a device, oldest first.
    pub fn c2d_pending(&self, id: &str) -> Result<Vec<(u64, C2dMessage)>, HubError> {
        self.c2d_pending_from(id, 0)
    }

    /// Pending, unexpired C2D messages of a device from queue sequence `from` on, oldest
    /// first.
    pub fn c2d_pending_from(
        &self,
        id: &str,
        from: u64,
    ) -> Result<Vec<(u64, C2dMessage)>, HubError> {
        let now = now_ms();
        let (expired, pending) = self
            .store
            .c2d_queue(id, from)?
            .into_iter()
            .partition::<Vec<_>, _>(|(_, m)| m.expired(now));
        // An expired message never goes out again; it leaves the store when the next one is queued.
        for (seq, _) in expired {
            self.c2d_forget(id, seq);
        }
        Ok(pending)
    }

    /// How many unexpired C2D messages wait for a device; their bodies are not decoded.
    pub fn c2d_depth(&self, id: &str) -> Result<usize, HubError> {
        let now = now_ms();
        let queue = self.store.c2d_expiries(id)?;
        Ok(queue.iter().filter(|(_, m)| !m.expired(now)).count())
    }

    /// Removes a delivered or expired C2D message. The removal is not fsynced on its own: lost
    /// in a crash, it only makes the message go out again, which at-least-once delivery allows.
    pub async fn c2d_complete(&self, id: &str, seq: u64) -> Result<bool, HubError> {
        let id_owned = id.to_string();
        let removed = self
            .store
            .writer()
            .write_relaxed(move |b| c2d::complete(b, &id_owned, seq))
            .await?;
        self.c2d_forget(id, seq);
        Ok(removed)
    }

    /// Subscriptions kept for a persistent (`clean_session = false`) MQTT session.
    pub fn stored_session(&self, id: &str) -> Result<Option<Vec<(String, u8)>>, HubError> {
        Ok(self.store.get(SESSIONS, id)?)
    }

    /// Saves (`Some`) or drops (`None`) a persistent session's subscriptions.
    pub async fn save_session(
        &self,
        id: &str,
        subs: Option<Vec<(String, u8)>>,
    ) -> Result<(), HubError> {
        let id_owned = id.to_string();
        self.store
            .writer()
            .write(move |b| {
                match subs {
                    Some(subs) => txn_put(b.txn, SESSIONS, &id_owned, &subs)?,
                    None => {
                        txn_delete(b.txn, SESSIONS, &id_owned)?;
                    }
                }
                Ok(())
            })
            .await
    }
}

/// Longest C2D time to live IoT Hub takes (two days).
pub const MAX_C2D_TTL: Duration = Duration::from_secs(2 * 24 * 3600);

/// Most bytes of the MQTT topic the hub writes for one message to a device: a C2D
/// message's encoded properties, or a direct method's name, must fit in it.
pub const MAX_DEVICE_TOPIC_BYTES: usize = 4096;

/// Bytes the hub adds to a C2D topic besides the sender's properties (`$.mid`, `$.cid`,
/// `$.to` and the topic path), with room for long ids.
const C2D_TOPIC_OVERHEAD: usize = 512;

/// A C2D time to live must be at least a second and at most [`MAX_C2D_TTL`].
fn check_c2d_ttl(ttl: Option<Duration>) -> Result<Option<Duration>, HubError> {
    match ttl {
        Some(ttl) if ttl.is_zero() => {
            Err(Refusal::bad_request("ttlSeconds must be at least 1").into())
        }
        Some(ttl) if ttl > MAX_C2D_TTL => Err(Refusal::bad_request(format!(
            "ttlSeconds {} is over the maximum of {}",
            ttl.as_secs(),
            MAX_C2D_TTL.as_secs()
        ))
        .into()),
        other => Ok(other),
    }
}

/// IoT Hub counts properties in a C2D message's 64 KiB; their encoded form must also fit the
/// device's topic.
fn check_c2d_size(
    device: &str,
    body: &[u8],
    properties: &BTreeMap<String, String>,
    message_id: Option<&str>,
    correlation_id: Option<&str>,
) -> Result<(), HubError> {
    let ids = message_id.map_or(0, str::len) + correlation_id.map_or(0, str::len);
    let property_bytes: usize = properties.iter().map(|(k, v)| k.len() + v.len()).sum();
    let total = body.len() + property_bytes + ids;
    if total > C2D_MAX_BYTES {
        return Err(Refusal::too_large(format!(
            "C2D message of {total} bytes with its properties is over the {C2D_MAX_BYTES} byte limit"
        ))
        .into());
    }
    let pairs: Vec<(String, String)> = properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(message_id.map(|mid| ("$.mid".to_owned(), mid.to_owned())))
        .chain(correlation_id.map(|cid| ("$.cid".to_owned(), cid.to_owned())))
        .collect();
    let topic = crate::mqtt::topics::encode_bag(&pairs).len() + device.len() + C2D_TOPIC_OVERHEAD;
    if topic > MAX_DEVICE_TOPIC_BYTES {
        return Err(Refusal::too_large(format!(
            "C2D properties and ids take {topic} bytes once encoded in the device's topic, over the {MAX_DEVICE_TOPIC_BYTES} byte limit"
        ))
        .into());
    }
    Ok(())
}
