//! The link to the hub: MQTT over TLS in IoT Hub's device dialect, SAS tokens, DPS.
//!
//! [`Link`] owns the connection task. It keeps one identity, reconnects with a capped
//! jittered backoff, renews its token before 80 % of its lifetime, stays disconnected
//! while the device is BUSY, and on every ConnAck re-subscribes, then reads the full
//! twin and applies it by `$version` (F04, F09).

pub mod backoff;
pub mod desired;
pub mod diagnostics;
pub mod dps;
mod holes;
pub mod identity;
pub mod outbox;
pub mod sas;
mod session;
mod sync;
pub mod tls;
pub mod topics;
pub mod upgrade;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde_json::{Value, json};
use tokio::sync::Notify;

use self::desired::DesiredTracker;
use self::identity::Identity;
use crate::config::Config;
use crate::engine::Engine;
use crate::reported::Reported;
use crate::state::Device;

/// Largest MQTT packet accepted or sent (F08): a 64 KiB C2D body or a 256 KiB D2C body
/// plus topic and properties, and a full twin with metadata.
pub const MAX_PACKET_BYTES: usize = 512 * 1024;

/// Handles cloud-to-device messages.
#[async_trait::async_trait]
pub trait C2dHandler: Send + Sync + std::fmt::Debug {
    /// Handles one message and returns once its effect is durable; the MQTT PUBLISH is
    /// acknowledged only after that.
    async fn handle(&self, properties: &BTreeMap<String, String>, payload: &[u8]);
}

/// A device-to-cloud message waiting to be published.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Application properties (e.g. `messageType`).
    pub properties: Vec<(String, String)>,
    /// Body.
    pub payload: Vec<u8>,
    /// A log chunk that may be dropped, oldest first, when the offline queue is full.
    pub droppable: bool,
}

/// Connection health as reported in `reported.health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No identity yet.
    Unprovisioned,
    /// Trying to connect.
    Connecting,
    /// Connected and subscribed.
    Connected,
    /// Disconnected on purpose (BUSY).
    Paused,
    /// Authentication failed while the clock is before the release date (F10).
    ClockInvalid,
    /// Connection failed; retrying.
    Retrying,
}

impl Health {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unprovisioned => "unprovisioned",
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Paused => "paused",
            Self::ClockInvalid => "clock_invalid",
            Self::Retrying => "retrying",
        }
    }
}

/// The hub link.
#[derive(Debug)]
pub struct Link {
    pub(crate) config: Arc<Config>,
    identity: RwLock<Option<Identity>>,
    pub(crate) desired: tokio::sync::Mutex<DesiredTracker>,
    /// The last applied desired document, readable without waiting.
    pub(crate) desired_view: RwLock<Value>,
    pub(crate) reported: Arc<Reported>,
    pub(crate) device: Arc<Device>,
    engine: OnceLock<Arc<Engine>>,
    c2d: OnceLock<Arc<dyn C2dHandler>>,
    pub(crate) outbox: outbox::Outbox,
    identity_changed: Notify,
    health: Mutex<Health>,
    /// RunDiagnostics: the transfer service and runs waiting for a signature.
    pub(crate) diagnostics: diagnostics::Diagnostics,
}

impl Link {
    /// A link for `config`; identity from the configuration or an earlier provisioning.
    pub fn new(
        config: Arc<Config>,
        desired: DesiredTracker,
        reported: Arc<Reported>,
        device: Arc<Device>,
    ) -> Result<Arc<Self>, outbox::OutboxError> {
        let provisioned = Identity::load_provisioned(&config.state_dir).unwrap_or_else(|error| {
            tracing::warn!(%error, "provisioned identity unreadable");
            None
        });
        let identity = provisioned.or_else(|| Identity::from_config(&config));
        let outbox = outbox::Outbox::open(&config.state_dir, config.transfer.offline_queue_limit)?;
        Ok(Arc::new(Self {
            config,
            identity: RwLock::new(identity),
            desired_view: RwLock::new(desired.document().clone()),
            desired: tokio::sync::Mutex::new(desired),
            reported,
            device,
            engine: OnceLock::new(),
            c2d: OnceLock::new(),
            outbox,
            identity_changed: Notify::new(),
            health: Mutex::new(Health::Unprovisioned),
            diagnostics: diagnostics::Diagnostics::default(),
        }))
    }

    /// Connects the engine that desired recipes go to.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// Connects the handler of C2D messages.
    pub fn set_c2d_handler(&self, handler: Arc<dyn C2dHandler>) {
        let _ = self.c2d.set(handler);
    }

    /// Queues a D2C message durably; waits while the queue is full of messages that may
    /// not be dropped.
    pub async fn send(&self, message: Outgoing) -> Result<(), String> {
        let dropped_before = self.outbox.dropped();
        let droppable = message.droppable;
        self.outbox
            .push(message, droppable)
            .await
            .map_err(|e| e.to_string())?;
        let dropped = self.outbox.dropped();
        if dropped != dropped_before {
            self.reported.set("d2cDropped", json!(dropped));
        }
        Ok(())
    }

    /// The identity in use.
    pub fn identity(&self) -> Option<Identity> {
        self.identity.read().ok().and_then(|i| i.clone())
    }

    /// Replaces the identity (after provisioning) and reconnects.
    pub fn set_identity(&self, identity: Identity) {
        if let Ok(mut slot) = self.identity.write() {
            *slot = Some(identity);
        }
        self.identity_changed.notify_one();
    }

    pub(crate) fn set_health(&self, health: Health) {
        let changed = self
            .health
            .lock()
            .map(|mut h| std::mem::replace(&mut *h, health) != health);
        if changed.unwrap_or(true) {
            tracing::info!(health = health.as_str(), "link health");
            self.reported.set("health", json!(health.as_str()));
        }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health.lock().map(|h| *h).unwrap_or(Health::Retrying)
    }

    /// Runs the connection until the process ends.
    pub async fn run(self: Arc<Self>) {
        session::run(self).await;
    }
}

#[async_trait::async_trait]
impl crate::api::LinkControl for Link {
    async fn provision(&self, registration_id: String) -> Result<(), String> {
        let identity = dps::provision(&self.config, &registration_id, None)
            .await
            .map_err(|e| e.to_string())?;
        identity
            .save_provisioned(&self.config.state_dir)
            .map_err(|e| e.to_string())?;
        self.set_identity(identity);
        Ok(())
    }

    async fn pause(&self) {
        // The session watches the device state and disconnects on BUSY.
    }

    async fn resume(&self) {
        // The session reconnects with a fresh token once the device leaves BUSY.
    }

    fn device_id(&self) -> Option<String> {
        self.identity().map(|i| i.device_id)
    }

    fn desired(&self) -> Value {
        self.desired_view
            .read()
            .map(|d| d.clone())
            .unwrap_or(Value::Null)
    }

    async fn run_diagnostics(
        &self,
    ) -> Result<Value, crate::api::run_diagnostics::DiagnosticsFailed> {
        diagnostics::run(self).await
    }
}
