//! What the services need from the hub: its event stream and C2D sends.
//!
//! [`HubLink`] is implemented over the edge hub's REST service API ([`RestHub`]); an in-process
//! implementation wraps an embedded hub. Azure IoT Hub reads events over AMQP and is not
//! covered here.

use std::collections::BTreeMap;
use std::sync::Arc;
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

/// Produces the `Authorization` header value for each request (a SAS token).
pub type AuthProvider = Arc<dyn Fn() -> String + Send + Sync>;

/// The edge hub's REST service API.
#[derive(Clone)]
pub struct RestHub {
    base: String,
    auth: AuthProvider,
    http: reqwest::Client,
}

impl std::fmt::Debug for RestHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestHub")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RestHub {
    /// A client for the hub at `base` (e.g. `https://127.0.0.1:8443`), authorising each
    /// request with `auth()`.
    pub fn new(base: impl Into<String>, auth: AuthProvider, http: reqwest::Client) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            auth,
            http,
        }
    }

    fn failure(action: &str, reason: String, source: Option<reqwest::Error>) -> HubLinkError {
        HubLinkError::Request {
            action: action.to_owned(),
            reason,
            source: source.map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
        }
    }
}

#[async_trait]
impl HubLink for RestHub {
    async fn read_events(
        &self,
        from: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<EventPage, HubLinkError> {
        let action = "read events";
        let url = format!(
            "{}/events?from={from}&limit={limit}&wait={}",
            self.base,
            wait.as_secs()
        );
        let response = self
            .http
            .get(url)
            .header("authorization", (self.auth)())
            .timeout(wait + Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| Self::failure(action, "no response".into(), Some(e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(Self::failure(action, format!("{status}: {body}"), None));
        }
        response
            .json()
            .await
            .map_err(|e| Self::failure(action, "bad body".into(), Some(e)))
    }

    async fn send_c2d(&self, device: &str, message: C2dSend) -> Result<(), HubLinkError> {
        let action = "send c2d";
        let mut device_path = reqwest::Url::parse("http://x/")
            .map_err(|_| Self::failure(action, "cannot build a url".into(), None))?;
        device_path
            .path_segments_mut()
            .map_err(|()| Self::failure(action, "url".into(), None))?
            .extend(["devices", device, "messages", "deviceBound"]);
        let url = format!("{}{}", self.base, device_path.path());
        let mut request = self
            .http
            .post(url)
            .header("authorization", (self.auth)())
            .header("iothub-messageid", &message.message_id)
            .body(message.body);
        for (name, value) in &message.properties {
            request = request.header(format!("iothub-app-{name}"), value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Self::failure(action, "no response".into(), Some(e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        if body.contains("DeviceMaximumQueueDepthExceeded") {
            return Err(HubLinkError::QueueFull {
                device: device.to_owned(),
            });
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(HubLinkError::DeviceNotFound {
                device: device.to_owned(),
            });
        }
        Err(Self::failure(action, format!("{status}: {body}"), None))
    }

    async fn c2d_pending(&self, _device: &str) -> Result<Option<usize>, HubLinkError> {
        // The REST API has no queue-depth read; senders pace on QueueFull refusals.
        Ok(None)
    }
}
