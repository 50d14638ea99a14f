//! The controllers' only way to a hub: device identities, twins and twin change events.
//!
//! [`TwinService`] is what the reconcilers call. [`AzureTwinService`] speaks Azure IoT Hub's
//! service REST API (`api-version=2021-04-12`); the CloudPillar edge hub serves the same
//! surface, so one client reaches both kinds of hub. Writes go through a client-side rate
//! limiter and are retried with capped, jittered backoff on throttling and server errors.

mod azure;
mod c2d;
mod eventhub;
mod events;
mod retry;
mod sas;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use cloudpillar_protocol::messages::{C2dMessage, MessageError};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use azure::{AzureTwinService, HubConnection};
pub use cloudpillar_protocol::twin::Twin;
pub use eventhub::EventHubConnection;
pub use retry::RetryPolicy;
pub use sas::service_token;

/// Operations on one hub that the controllers need.
#[async_trait]
pub trait TwinService: Send + Sync + Debug {
    /// Creates the device identity, or returns it unchanged when it already exists with
    /// the same credentials; replaces the credentials when they differ.
    async fn ensure_device(&self, identity: &DeviceIdentity) -> Result<DeviceRecord, TwinError>;

    /// Reads a device identity; `None` when the hub does not know it.
    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, TwinError>;

    /// Deletes a device identity and its twin. Returns `false` when it was already gone.
    async fn delete_device(&self, device_id: &str) -> Result<bool, TwinError>;

    /// Reads a device twin.
    async fn get_twin(&self, device_id: &str) -> Result<Twin, TwinError>;

    /// Merges `patch` into the twin's tags and desired properties. With `etag`, the write
    /// only happens if the twin still carries that ETag ([`TwinError::EtagMismatch`]).
    async fn patch_twin(
        &self,
        device_id: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> Result<Twin, TwinError>;

    /// Runs an IoT Hub query (`SELECT * FROM devices WHERE ...`), one page at a time.
    async fn query(&self, query: &str, continuation: Option<&str>) -> Result<QueryPage, TwinError>;

    /// Twin change and connection events from `from` on. The stream ends only when the
    /// event source fails; the caller resumes from the last checkpoint it saw.
    fn subscribe(&self, from: Checkpoint) -> BoxStream<'static, Result<TwinEvent, TwinError>>;

    /// The device's primary symmetric key as the hub's registry holds it; `None` when the
    /// device authenticates with a certificate.
    async fn device_key(&self, device_id: &str) -> Result<Option<String>, TwinError>;

    /// Queues `message` for the device under `message_id`. The edge hub takes service-side
    /// C2D messages over REST; Azure IoT Hub takes them over AMQP only and refuses this call.
    async fn send_c2d(
        &self,
        device_id: &str,
        message: &C2dMessage,
        message_id: &str,
    ) -> Result<(), TwinError>;
}

/// A device identity to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Device id in the hub.
    pub device_id: String,
    /// How the device authenticates.
    pub auth: IdentityAuth,
}

/// Credentials of a device identity.
#[derive(Clone, PartialEq, Eq)]
pub enum IdentityAuth {
    /// Symmetric keys (base64).
    Sas {
        /// Primary key.
        primary_key: String,
        /// Secondary key.
        secondary_key: String,
    },
    /// A self-signed X.509 client certificate, by thumbprint.
    X509 {
        /// Hex thumbprint of the certificate.
        thumbprint: String,
    },
}

impl Debug for IdentityAuth {
    /// Names the method only: keys never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sas { .. } => f.write_str("Sas { .. }"),
            Self::X509 { thumbprint } => write!(f, "X509 {{ thumbprint: {thumbprint} }}"),
        }
    }
}

/// A device identity as the hub's registry returns it (credentials left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    /// Device id.
    pub device_id: String,
    /// ETag of the identity.
    #[serde(default)]
    pub etag: String,
    /// `enabled` or `disabled`.
    #[serde(default)]
    pub status: String,
    /// `Connected` or `Disconnected`.
    #[serde(default)]
    pub connection_state: String,
    /// Whether the identity was created by this call (only set by `ensure_device`).
    #[serde(skip)]
    pub created: bool,
}

/// A merge patch of a twin's tags and desired properties (RFC 7396: `null` deletes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TwinPatch {
    /// Patch of `tags`, if any.
    pub tags: Option<Value>,
    /// Patch of `properties.desired`, if any.
    pub desired: Option<Value>,
}

impl TwinPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.tags.is_none() && self.desired.is_none()
    }

    /// The request body IoT Hub expects for `PATCH /twins/{id}`.
    pub fn to_body(&self) -> Value {
        let mut body = serde_json::Map::new();
        if let Some(tags) = &self.tags {
            body.insert("tags".into(), tags.clone());
        }
        if let Some(desired) = &self.desired {
            body.insert(
                "properties".into(),
                serde_json::json!({ "desired": desired }),
            );
        }
        Value::Object(body)
    }
}

/// One page of query results.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryPage {
    /// Matching documents (twins for `FROM devices`).
    pub items: Vec<Value>,
    /// Token for the next page; `None` on the last page.
    pub continuation: Option<String>,
}

/// Where to start reading events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Only events committed after the subscription starts.
    Latest,
    /// From this sequence number on (inclusive), in every partition.
    Sequence(u64),
    /// From a position per partition.
    Positions(EventPositions),
}

/// A consumer's place in a partitioned event stream: the next sequence number of each
/// partition it has read from, and for the others the instant its reading began.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventPositions {
    /// Partitions without a position start after this instant (milliseconds since 1970).
    pub since_ms: u64,
    /// Next sequence number to read, by partition id.
    pub next: BTreeMap<String, u64>,
}

impl EventPositions {
    /// Key of the edge hub's unpartitioned `/events` log.
    pub const WHOLE_LOG: &'static str = "log";

    /// Positions that start every partition at `since_ms`.
    pub fn starting_at(since_ms: u64) -> Self {
        Self {
            since_ms,
            next: BTreeMap::new(),
        }
    }

    /// Moves past `event`.
    pub fn record(&mut self, event: &TwinEvent) {
        let partition = event.partition.as_deref().unwrap_or(Self::WHOLE_LOG);
        let next = self.next.entry(partition.to_owned()).or_default();
        *next = (*next).max(event.sequence + 1);
    }
}

/// What a twin event says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwinEventKind {
    /// Tags or properties changed; the body holds only what changed.
    TwinChanged,
    /// The device connected.
    Connected,
    /// The device disconnected.
    Disconnected,
    /// Any other event (telemetry and the like).
    Other,
}

impl TwinEventKind {
    /// The kind of an event from its `iothub-message-source` and `opType`.
    pub fn of(source: &str, op_type: Option<&str>) -> Self {
        match (source, op_type) {
            ("twinChangeEvents", _) => Self::TwinChanged,
            ("deviceConnectionStateEvents", Some("deviceConnected")) => Self::Connected,
            ("deviceConnectionStateEvents", Some("deviceDisconnected")) => Self::Disconnected,
            // Creating or deleting an identity changes what the twin read returns.
            ("deviceLifecycleEvents", _) => Self::TwinChanged,
            _ => Self::Other,
        }
    }
}

/// A twin change or connection event from the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinEvent {
    /// Position in its partition (or in the edge hub's log); resume from `sequence + 1`.
    pub sequence: u64,
    /// The partition it came from; `None` for the edge hub's unpartitioned `/events` log.
    pub partition: Option<String>,
    /// The device it is about.
    pub device_id: String,
    /// What happened.
    pub kind: TwinEventKind,
    /// The event body, when it is JSON.
    pub body: Option<Value>,
}

/// A hub call that failed. Variants carry the device id; sources are kept.
#[derive(Debug, thiserror::Error)]
pub enum TwinError {
    /// The hub does not know the device (HTTP 404).
    #[error("device {device_id} not found in the hub")]
    NotFound {
        /// Device id.
        device_id: String,
    },
    /// The twin or identity changed since it was read (HTTP 412).
    #[error("twin of {device_id} changed since it was read (etag mismatch)")]
    EtagMismatch {
        /// Device id.
        device_id: String,
    },
    /// The hub kept throttling or failing after every retry (HTTP 429 or 5xx).
    #[error("hub kept answering {status} for {operation} on {device_id} after retries")]
    Unavailable {
        /// What was attempted.
        operation: &'static str,
        /// Device id, or `-` for hub-wide calls.
        device_id: String,
        /// Last HTTP status.
        status: u16,
    },
    /// The hub refused the request (another 4xx). The device id is left out when the hub's
    /// message names it already.
    #[error(
        "hub refused {operation}{} with {status}: {message}",
        on_device(device_id, message)
    )]
    Refused {
        /// What was attempted.
        operation: &'static str,
        /// Device id, or `-` for hub-wide calls.
        device_id: String,
        /// HTTP status.
        status: u16,
        /// The hub's message (see [`refusal_message`]).
        message: String,
    },
    /// The request did not reach the hub or the answer did not arrive.
    #[error("could not reach the hub for {operation} on {device_id}")]
    Transport {
        /// What was attempted.
        operation: &'static str,
        /// Device id, or `-` for hub-wide calls.
        device_id: String,
        /// The client error.
        #[source]
        source: reqwest::Error,
    },
    /// The hub's answer was not the JSON expected.
    #[error("unexpected answer to {operation} on {device_id}")]
    Decode {
        /// What was attempted.
        operation: &'static str,
        /// Device id, or `-` for hub-wide calls.
        device_id: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A SAS token could not be made from the policy key.
    #[error("the shared access policy key is not valid base64")]
    BadPolicyKey,
    /// A cloud-to-device message could not be encoded.
    #[error("message for {device_id} could not be encoded")]
    Encode {
        /// Device id.
        device_id: String,
        /// The protocol's refusal.
        #[source]
        source: MessageError,
    },
    /// The Event Hubs-compatible endpoint could not be reached or read.
    #[error("event hub endpoint {host} failed to {operation}: {reason}")]
    EventHub {
        /// What was attempted.
        operation: &'static str,
        /// Host of the endpoint.
        host: String,
        /// What went wrong, as the AMQP client tells it.
        reason: String,
    },
    /// The Event Hubs-compatible endpoint refused the credentials or the request.
    #[error("event hub endpoint {host} refused {operation}: {reason}")]
    EventHubRefused {
        /// What was attempted.
        operation: &'static str,
        /// Host of the endpoint.
        host: String,
        /// The endpoint's status and description.
        reason: String,
    },
    /// The hub gives no event stream this client can read.
    #[error("hub {host} offers no event stream to this client")]
    EventsUnsupported {
        /// Service host of the hub.
        host: String,
    },
}

/// ` on DEVICE_ID`, unless `message` names the device already.
fn on_device(device_id: &str, message: &str) -> String {
    match device_id == "-" || message.contains(device_id) {
        true => String::new(),
        false => format!(" on {device_id}"),
    }
}

/// The reason in a refusal's body, cut to 512 characters. IoT Hub answers
/// `{"Message":"ErrorCode:CODE;REASON","ExceptionMessage":"..."}`, whose exception message
/// repeats the reason or only carries a tracking id: this gives `CODE: REASON`. Any other
/// body is kept as it is.
pub(crate) fn refusal_message(body: &str) -> String {
    let azure = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("Message").and_then(Value::as_str).map(str::to_owned));
    let message = match azure {
        Some(text) => match text
            .strip_prefix("ErrorCode:")
            .and_then(|rest| rest.split_once(';'))
        {
            Some((code, reason)) => format!("{code}: {reason}"),
            None => text,
        },
        None => body.to_owned(),
    };
    message.chars().take(512).collect()
}

impl TwinError {
    /// Whether retrying later may succeed (throttling, outages, transport errors).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable { .. } | Self::Transport { .. } | Self::EventHub { .. }
        )
    }

    /// The hub's own words when it refused the request for good: a 4xx answer other than
    /// throttling (429), timeouts (408), conflicts (409, 412) and authorization (401, 403),
    /// which a retry or a fixed hub configuration may clear. Azure's and the edge hub's body
    /// `{"Message":"ErrorCode:<code>;<words>", ...}` gives `<words>`.
    pub fn lasting_refusal(&self) -> Option<String> {
        let Self::Refused {
            status, message, ..
        } = self
        else {
            return None;
        };
        if !(400..500).contains(status) || matches!(status, 401 | 403 | 408 | 409 | 412 | 429) {
            return None;
        }
        // The message is IoT Hub's `Code: reason` (or its raw body): the reason is the words.
        let text = refusal_message(message);
        let words = match text.split_once(": ") {
            Some((code, reason))
                if !code.is_empty() && code.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                reason
            }
            _ => text.as_str(),
        };
        Some(words.trim().to_owned())
    }
}

/// How long a SAS token the client makes stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The edge hub's answer to registering `id` when it is no valid device id, in IoT Hub's
    /// error shape (the reason twice).
    pub(crate) fn invalid_id_refused(id: &str) -> TwinError {
        let body = serde_json::json!({
            "Message": format!("ErrorCode:ArgumentInvalid;invalid device id {id:?}"),
            "ExceptionMessage": format!("ArgumentInvalid invalid device id {id:?}"),
        });
        TwinError::Refused {
            operation: "register device",
            device_id: id.to_owned(),
            status: 400,
            message: refusal_message(&body.to_string()),
        }
    }

    fn refused(status: u16, message: &str) -> TwinError {
        TwinError::Refused {
            operation: "patch twin",
            device_id: "pc-01".into(),
            status,
            message: message.into(),
        }
    }

    #[test]
    fn a_refusal_names_the_device_id_once() {
        let id = "a".repeat(200);
        let text = invalid_id_refused(&id).to_string();
        assert_eq!(text.matches(&id).count(), 1, "{text}");
        assert!(
            text.starts_with("hub refused register device with 400: ArgumentInvalid: invalid"),
            "{text}"
        );
    }

    #[test]
    fn a_refusal_that_does_not_name_the_device_says_which() {
        let body = r#"{"Message":"ErrorCode:ThrottleBacklogLimitExceeded;too many requests",
                       "ExceptionMessage":"Tracking ID:1f-G:3-TimeStamp:05/23/2023 13:40:21"}"#;
        let error = TwinError::Refused {
            operation: "patch twin",
            device_id: "pc-02".into(),
            status: 429,
            message: refusal_message(body),
        };
        assert_eq!(
            error.to_string(),
            "hub refused patch twin on pc-02 with 429: ThrottleBacklogLimitExceeded: too many \
             requests"
        );
        assert_eq!(refusal_message("bad gateway"), "bad gateway");
    }

    #[test]
    fn a_lasting_refusal_gives_the_hubs_words_and_a_passing_one_gives_none() {
        let body = r#"{"Message":"ErrorCode:MessageTooLarge;twin section is 35137 bytes, more than 32768","ExceptionMessage":"MessageTooLarge twin section is 35137 bytes, more than 32768"}"#;
        assert_eq!(
            refused(413, body).lasting_refusal().as_deref(),
            Some("twin section is 35137 bytes, more than 32768")
        );
        assert_eq!(
            refused(400, "not json").lasting_refusal().as_deref(),
            Some("not json")
        );
        for status in [401, 403, 408, 409, 412, 429, 500] {
            assert_eq!(refused(status, body).lasting_refusal(), None, "{status}");
        }
        let gone = TwinError::NotFound {
            device_id: "pc-01".into(),
        };
        assert_eq!(gone.lasting_refusal(), None);
    }
}
