//! Shared hub state used by both endpoints: store, event bus, live device sessions and
//! pending direct-method calls. Everything here is `Send + Sync`; the MQTT workers run on
//! their own threads and talk to it through channels.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::config::HubConfig;
use crate::deliveries::DeliveryCounts;
use crate::error::{HubError, Refusal};
use crate::events::{EventBus, HubEvent, now_ms, rfc3339};
use crate::store::Store;

/// Something the hub pushes to a connected device.
#[derive(Debug)]
pub enum Outbound {
    /// A desired-properties patch (`$version` included) for
    /// `$iothub/twin/PATCH/properties/desired/?$version={v}`.
    Desired(u64, Vec<u8>),
    /// New C2D messages are queued.
    C2dWake,
    /// A direct-method request for `$iothub/methods/POST/{name}/?$rid={rid}`.
    Method {
        /// Request id.
        rid: String,
        /// Method name.
        name: String,
        /// JSON payload.
        payload: Vec<u8>,
    },
    /// Another connection of the same device replaced this one, or the device was removed.
    Close,
}

/// Where a device's direct-method answer (status, payload) is awaited.
type MethodWaiter = oneshot::Sender<(u16, Vec<u8>)>;

#[derive(Debug)]
struct SessionEntry {
    conn_id: u64,
    tx: mpsc::UnboundedSender<Outbound>,
    /// Milliseconds since 1970 of the last publish (formatted only when asked for).
    last_activity_ms: u64,
}

/// The state every endpoint shares.
#[derive(Debug)]
pub struct Core {
    /// Configuration the hub started with.
    pub config: HubConfig,
    /// Durable store.
    pub store: Store,
    /// Committed events.
    pub bus: EventBus,
    /// Service policy key (base64).
    pub policy_key: String,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    /// Last activity (ms) of devices that disconnected since the hub started; the registry
    /// holds it too, a moment later.
    departed: Mutex<HashMap<String, u64>>,
    methods: Mutex<HashMap<String, MethodWaiter>>,
    next_id: AtomicU64,
    /// Completed DPS operations by operation id: their `registrationState`.
    pub(crate) dps_ops: Mutex<HashMap<String, Value>>,
    /// How many times each queued C2D message went out; in memory only.
    pub(crate) deliveries: DeliveryCounts,
}

impl Core {
    /// Wraps an opened store.
    pub fn new(config: HubConfig, store: Store, bus: EventBus, policy_key: String) -> Self {
        Self {
            config,
            store,
            bus,
            policy_key,
            sessions: Mutex::new(HashMap::new()),
            departed: Mutex::new(HashMap::new()),
            methods: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            dps_ops: Mutex::new(HashMap::new()),
            deliveries: DeliveryCounts::default(),
        }
    }

    /// A process-unique number (connection ids, request ids).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a new live connection for `device`, closing any older one (one connection
    /// per device). Records a `deviceConnected` event. Returns the connection id.
    pub async fn attach(
        &self,
        device: &str,
        tx: mpsc::UnboundedSender<Outbound>,
    ) -> Result<u64, HubError> {
        let conn_id = self.next_id();
        let entry = SessionEntry {
            conn_id,
            tx,
            last_activity_ms: now_ms(),
        };
        let old = lock(&self.sessions).insert(device.to_string(), entry);
        if let Some(old) = old {
            tracing::info!(device, "new connection replaces the old one");
            let _ = old.tx.send(Outbound::Close);
        }
        let (hub, id) = (self.config.hostname.clone(), device.to_string());
        self.store
            .writer()
            .write(move |b| {
                b.append_event(HubEvent::connection(&hub, &id, true, conn_id))?;
                let now = activity_time(now_ms());
                crate::registry::record_connection(b, &id, true, now.clone(), now)
            })
            .await?;
        Ok(conn_id)
    }

    /// Removes a connection if it is still the device's current one, recording a
    /// `deviceDisconnected` event.
    pub async fn detach(&self, device: &str, conn_id: u64) {
        let removed = {
            let mut sessions = lock(&self.sessions);
            match sessions.get(device) {
                Some(e) if e.conn_id == conn_id => {
                    let removed = sessions.remove(device);
                    if let Some(session) = &removed {
                        // Answered from here while the registry write is under way.
                        lock(&self.departed).insert(device.to_owned(), session.last_activity_ms);
                    }
                    removed
                }
                _ => None,
            }
        };
        if let Some(session) = removed {
            let (hub, id) = (self.config.hostname.clone(), device.to_string());
            let last_active = activity_time(session.last_activity_ms);
            let logged = self
                .store
                .writer()
                .write(move |b| {
                    b.append_event(HubEvent::connection(&hub, &id, false, conn_id))?;
                    let now = activity_time(now_ms());
                    crate::registry::record_connection(b, &id, false, now, last_active)
                })
                .await;
            if let Err(error) = logged {
                tracing::warn!(device, %error, "disconnect event not recorded");
            }
        }
    }

    /// After a restart no device is connected: those the registry still shows connected (the
    /// hub stopped or died under them) get their `deviceDisconnected` event and state now.
    pub async fn close_stale_connections(&self) -> Result<usize, HubError> {
        let stale: Vec<String> = self
            .store
            .all::<crate::registry::DeviceRecord>(crate::store::DEVICES)?
            .into_iter()
            .filter(|(_, device)| device.connection_state == "Connected")
            .map(|(id, _)| id)
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        let count = stale.len();
        let hub = self.config.hostname.clone();
        let counters: Vec<u64> = stale.iter().map(|_| self.next_id()).collect();
        self.store
            .writer()
            .write(move |b| {
                let now = activity_time(now_ms());
                for (id, counter) in stale.iter().zip(counters) {
                    b.append_event(HubEvent::connection(&hub, id, false, counter))?;
                    crate::registry::record_connection(b, id, false, now.clone(), String::new())?;
                }
                Ok(())
            })
            .await?;
        Ok(count)
    }

    /// The last activity of a device that disconnected since the hub started.
    pub fn departed(&self, device: &str) -> Option<String> {
        lock(&self.departed).get(device).copied().map(activity_time)
    }

    /// Forgets a deleted device's activity.
    pub fn forget(&self, device: &str) {
        lock(&self.departed).remove(device);
    }

    /// Whether the device has a live connection, and its last activity time.
    pub fn live(&self, device: &str) -> Option<String> {
        let ms = lock(&self.sessions).get(device)?.last_activity_ms;
        Some(activity_time(ms))
    }

    /// Notes device activity.
    pub fn touch(&self, device: &str) {
        if let Some(e) = lock(&self.sessions).get_mut(device) {
            e.last_activity_ms = now_ms();
        }
    }

    /// Sends to the device's live connection; false when it has none.
    pub fn push(&self, device: &str, msg: Outbound) -> bool {
        lock(&self.sessions)
            .get(device)
            .is_some_and(|e| e.tx.send(msg).is_ok())
    }

    /// Invokes a direct method and waits for the device's answer (status, JSON payload).
    pub async fn invoke_method(
        &self,
        device: &str,
        name: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<(u16, Value), HubError> {
        // The name goes into the device's topic, which has a bounded size.
        if name.is_empty() || name.len() > MAX_METHOD_NAME_BYTES {
            return Err(Refusal::bad_request(format!(
                "method name must be 1 to {MAX_METHOD_NAME_BYTES} bytes, not {}",
                name.len()
            ))
            .into());
        }
        let rid = format!("{:x}", self.next_id());
        let (tx, rx) = oneshot::channel();
        lock(&self.methods).insert(rid.clone(), tx);
        let request = Outbound::Method {
            rid: rid.clone(),
            name: name.to_string(),
            payload: serde_json::to_vec(payload).unwrap_or_default(),
        };
        if !self.push(device, request) {
            lock(&self.methods).remove(&rid);
            return Err(
                Refusal::new(404, "DeviceNotOnline", format!("{device} is not connected")).into(),
            );
        }
        let answer = tokio::time::timeout(timeout, rx).await;
        lock(&self.methods).remove(&rid);
        match answer {
            Ok(Ok((status, body))) => {
                let payload = serde_json::from_slice(&body).unwrap_or(Value::Null);
                Ok((status, payload))
            }
            _ => Err(Refusal::new(
                504,
                "GatewayTimeout",
                format!("{device} did not answer {name}"),
            )
            .into()),
        }
    }

    /// Reads up to `limit` committed events from sequence number `from` on (a consumer's
    /// checkpoint), oldest first.
    pub fn read_events(&self, from: u64, limit: usize) -> Result<Vec<HubEvent>, HubError> {
        Ok(self.store.events_from(from, limit)?)
    }

    /// Hands a device's method response to the waiting caller; false when none waits.
    pub fn method_response(&self, rid: &str, status: u16, body: Vec<u8>) -> bool {
        match lock(&self.methods).remove(rid) {
            Some(tx) => tx.send((status, body)).is_ok(),
            None => false,
        }
    }
}

/// Locks a mutex, recovering from poisoning (the maps stay consistent per operation).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An activity time (milliseconds since 1970) as the registry shows it.
fn activity_time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(rfc3339)
        .unwrap_or_default()
}

/// Longest direct method name: with `$iothub/methods/POST/` and the request id it stays well
/// inside [`crate::service::MAX_DEVICE_TOPIC_BYTES`].
pub const MAX_METHOD_NAME_BYTES: usize = 1024;
