//! `POST /api/v1/InitiateProvisioning`: provision through DPS (refused while BUSY).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::ApiState;
use super::auth::CallerId;
use super::json::ApiError;
use super::set_busy::{StateAnswer, apply};
use crate::state::{Command, DeviceState};

/// InitiateProvisioning.
#[utoipa::path(post, path = "/api/v1/InitiateProvisioning", responses(
    (status = 202, body = StateAnswer), (status = 401), (status = 409), (status = 503)))]
pub async fn handle(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<CallerId>,
) -> Result<(StatusCode, Json<StateAnswer>), ApiError> {
    if state.device.is_busy() {
        return Err(ApiError::conflict("provisioning is not allowed while BUSY"));
    }
    let Some(link) = state.link.clone() else {
        return Err(ApiError::conflict(
            "no DPS or hub is configured on this device",
        ));
    };
    if state.device.state() == DeviceState::Provisioning {
        return Err(ApiError::conflict("provisioning is already in progress"));
    }
    let answer = apply(&state, Command::InitiateProvisioning)?;
    let registration_id = state.device_id().unwrap_or(caller.0);
    let device = Arc::clone(&state.device);
    tokio::spawn(async move {
        match link.provision(registration_id).await {
            Ok(()) => device.try_apply(Command::Provisioned),
            Err(reason) => tracing::warn!(%reason, "provisioning failed; still PROVISIONING"),
        }
    });
    Ok((StatusCode::ACCEPTED, answer))
}
