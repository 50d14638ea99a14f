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
use crate::validate::D2C_MAX_BYTES;

impl Core {
    /// Fills in the live fields of a stored device record.
    fn overlay(&self, mut device: DeviceRecord) -> DeviceRecord {
        if let Some(activity) = self.live(&device.device_id) {
            device.connection_state = "Connected".into();
            device.last_activity_time = activity;
        } else if let Some(activity) = self.departed(&device.device_id) {
            device.last_activity_time = activity;
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
        let mut twin = written.twin;
        if self.live(id).is_some() {
            twin["connectionState"] = "Connected".into();
        }
        Ok(twin)
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
        let ttl = ttl.unwrap_or(self.config.c2d_default_ttl);
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
        Ok(self
            .store
            .c2d_queue(id, from)?
            .into_iter()
            .filter(|(_, m)| !m.expired(now))
            .collect())
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
        self.store
            .writer()
            .write_relaxed(move |b| c2d::complete(b, &id_owned, seq))
            .await
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
