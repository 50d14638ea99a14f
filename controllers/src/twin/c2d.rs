//! Cloud-to-device messages and device keys over the service REST API.
//!
//! The edge hub queues a service-side C2D message on `POST /devices/{id}/messages/deviceBound`
//! (its REST extension). Azure IoT Hub offers service-side C2D over AMQP only, so there the
//! call is refused and the refusal reaches the Device's status.

use cloudpillar_protocol::messages::{C2dMessage, MESSAGE_TYPE_PROPERTY};
use serde_json::Value;

use super::TwinError;
use super::azure::{API_VERSION, AzureTwinService, device_path};

impl AzureTwinService {
    /// The primary symmetric key the registry holds for `device_id`.
    pub(super) async fn registry_key(&self, device_id: &str) -> Result<Option<String>, TwinError> {
        let identity = self.identity(device_id).await?;
        Ok(identity
            .pointer("/authentication/symmetricKey/primaryKey")
            .and_then(Value::as_str)
            .filter(|key| !key.is_empty())
            .map(str::to_owned))
    }

    /// Queues one C2D message; a failed send is retried by the caller's next reconcile.
    pub(super) async fn queue_c2d(
        &self,
        device_id: &str,
        message: &C2dMessage,
        message_id: &str,
    ) -> Result<(), TwinError> {
        let operation = "send c2d";
        let body = message.encode().map_err(|source| TwinError::Encode {
            device_id: device_id.to_owned(),
            source,
        })?;
        let url = format!(
            "{}{}/messages/deviceBound?api-version={API_VERSION}",
            self.base_url(),
            device_path("devices", device_id)
        );
        let transport = |source| TwinError::Transport {
            operation,
            device_id: device_id.to_owned(),
            source,
        };
        let response = self
            .http
            .post(url)
            .header("Authorization", self.token()?)
            .header("content-type", "application/json")
            .header("iothub-messageid", message_id)
            .header(
                format!("iothub-app-{MESSAGE_TYPE_PROPERTY}"),
                message.message_type(),
            )
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.map_err(transport)?;
        Err(match status.as_u16() {
            404 => TwinError::NotFound {
                device_id: device_id.to_owned(),
            },
            code => TwinError::Refused {
                operation,
                device_id: device_id.to_owned(),
                status: code,
                message: super::refusal_message(&text),
            },
        })
    }
}
