//! The edge hub's REST service API as a [`HubLink`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{C2dSend, EventPage, HubLink, HubLinkError};

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

    async fn c2d_pending(&self, device: &str) -> Result<Option<usize>, HubLinkError> {
        // The device identity carries the pending count, as Azure's registry does.
        let action = "read device";
        let url = format!("{}{}", self.base, device_path(device, &[])?);
        let response = self
            .http
            .get(url)
            .header("authorization", (self.auth)())
            .send()
            .await
            .map_err(|e| Self::failure(action, "no response".into(), Some(e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(HubLinkError::DeviceNotFound {
                device: device.to_owned(),
            });
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(Self::failure(action, format!("{status}: {body}"), None));
        }
        let identity: serde_json::Value = response
            .json()
            .await
            .map_err(|e| Self::failure(action, "bad body".into(), Some(e)))?;
        Ok(identity
            .get("cloudToDeviceMessageCount")
            .and_then(serde_json::Value::as_u64)
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
    }
}

/// `/devices/{device}/{tail...}` with the device id percent-encoded as one segment.
fn device_path(device: &str, tail: &[&str]) -> Result<String, HubLinkError> {
    let bad = || HubLinkError::DeviceNotFound {
        device: device.to_owned(),
    };
    let mut url = reqwest::Url::parse("http://localhost/").map_err(|_| bad())?;
    url.path_segments_mut()
        .map_err(|()| bad())?
        .push("devices")
        .push(device)
        .extend(tail);
    Ok(url.path().to_owned())
}
