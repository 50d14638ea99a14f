//! `GET /api/v1/GetDeviceState`: the twin as the agent knows it; provisions lazily.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::Value;

use super::ApiState;
use super::auth::CallerId;
use crate::state::{Command, DeviceState};

/// The twin as the agent holds it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceTwin {
    /// Current state.
    #[serde(rename = "deviceState")]
    pub device_state: DeviceState,
    /// Desired section last applied.
    #[schema(value_type = Object)]
    pub desired: Value,
    /// Reported section the agent maintains.
    #[schema(value_type = Object)]
    pub reported: Value,
}

/// GetDeviceState.
#[utoipa::path(get, path = "/api/v1/GetDeviceState", responses(
    (status = 200, body = DeviceTwin), (status = 401)))]
pub async fn handle(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<CallerId>,
) -> Json<DeviceTwin> {
    // Lazy provisioning: a device without an identity provisions on first read.
    if let Some(link) = state.link.clone()
        && link.device_id().is_none()
        && state.device.state() != DeviceState::Provisioning
        && state.device.apply(Command::InitiateProvisioning).is_ok()
    {
        let device = Arc::clone(&state.device);
        tokio::spawn(async move {
            match link.provision(caller.0).await {
                Ok(()) => device.try_apply(Command::Provisioned),
                Err(reason) => tracing::warn!(%reason, "lazy provisioning failed"),
            }
        });
    }
    let desired = match &state.link {
        Some(link) => link.desired(),
        None => state
            .offline_desired
            .read()
            .map(|d| d.clone())
            .unwrap_or_default(),
    };
    Json(DeviceTwin {
        device_state: state.device.state(),
        desired,
        reported: state.reported.wanted(),
    })
}
