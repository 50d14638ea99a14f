//! What the services need from the hub: its event stream and C2D sends.
//!
//! [`HubLink`] is implemented over the edge hub's REST service API ([`RestHub`]) and over an
//! edge hub embedded in the same process ([`EmbeddedHub`]). Azure IoT Hub's event stream is
//! read over AMQP and is not covered here.

mod embedded;
mod rest;

pub use embedded::EmbeddedHub;
pub use rest::{AuthProvider, RestHub};

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `iothub-message-source` of device-to-cloud messages.
pub const SOURCE_TELEMETRY: &str = "Telemetry";
/// `iothub-message-source` of twin change notifications.
pub const SOURCE_TWIN: &str = "twinChangeEvents";
/// `iothub-message-source` of connection state events.
pub const SOURCE_CONNECTION: &str = "deviceConnectionStateEvents";

/// One event of the hub's stream, in the JSON shape of `GET /events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Position in the stream, increasing by one per event, starting at 1.
    pub sequence_number: u64,
    /// When the hub committed it (RFC 3339, UTC).
    pub enqueued_time_utc: String,
    /// Milliseconds since 1970 of the same instant.
    pub enqueued_ms: u64,
    /// The device the event is about.
    pub device_id: String,
    /// [`SOURCE_TELEMETRY`], [`SOURCE_TWIN`] or [`SOURCE_CONNECTION`].
    pub source: String,
    /// Application properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// System properties.
    #[serde(default)]
    pub system_properties: BTreeMap<String, String>,
    /// The body parsed as JSON, when it is JSON.
    #[serde(default)]
    pub body: Option<Value>,
    /// The body bytes, base64.
    #[serde(default)]
    pub body_base64: String,
}

impl Event {
    /// The body bytes (empty when the base64 text is invalid).
    pub fn body_bytes(&self) -> Vec<u8> {
        STANDARD.decode(&self.body_base64).unwrap_or_default()
    }
}

/// A page of events and where the next read starts.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPage {
    /// Events in sequence order.
    pub events: Vec<Event>,
    /// Sequence number to read from next.
    pub next_sequence_number: u64,
}

/// A C2D message to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct C2dSend {
    /// Message body.
    pub body: Vec<u8>,
    /// Application properties.
    pub properties: BTreeMap<String, String>,
    /// Message id, chosen by the sender so a retried send is recognisable.
    pub message_id: String,
}

/// Errors talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubLinkError {
    /// The device already has the most pending C2D messages the hub allows.
    #[error("c2d queue of device {device} is full")]
    QueueFull {
        /// Device id.
        device: String,
    },
    /// The device does not exist (deleted meanwhile).
    #[error("device {device} not found on the hub")]
    DeviceNotFound {
        /// Device id.
        device: String,
    },
    /// Any other refusal or transport failure; worth retrying.
    #[error("hub request {action} failed: {reason}")]
    Request {
        /// What was attempted.
        action: String,
        /// Status or transport failure.
        reason: String,
        /// Underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// The hub as the streamer and writer see it.
#[async_trait]
pub trait HubLink: Send + Sync + std::fmt::Debug {
    /// Up to `limit` events from sequence number `from` on, waiting up to `wait` when none
    /// are there yet.
    async fn read_events(
        &self,
        from: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<EventPage, HubLinkError>;

    /// Queues a C2D message for `device`.
    async fn send_c2d(&self, device: &str, message: C2dSend) -> Result<(), HubLinkError>;

    /// Pending C2D messages of `device`, or `None` when this hub cannot tell (then senders
    /// pace themselves on [`HubLinkError::QueueFull`]).
    async fn c2d_pending(&self, device: &str) -> Result<Option<usize>, HubLinkError>;
}
