//! `POST /api/v1/SetBusy`: clinical work starts; pause transfers, run `onPause`, disconnect.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::ApiState;
use super::json::ApiError;
use crate::state::{Command, DeviceState};

/// The state after a state call.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StateAnswer {
    /// The device state now.
    #[serde(rename = "deviceState")]
    pub device_state: DeviceState,
}

/// Applies `command` and answers the new state (409 when not allowed now).
pub(super) fn apply(state: &ApiState, command: Command) -> Result<Json<StateAnswer>, ApiError> {
    let device_state = state
        .device
        .apply(command)
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    Ok(Json(StateAnswer { device_state }))
}

/// SetBusy.
#[utoipa::path(post, path = "/api/v1/SetBusy", responses(
    (status = 200, body = StateAnswer), (status = 401), (status = 503), (status = 409)))]
pub async fn handle(State(state): State<Arc<ApiState>>) -> Result<Json<StateAnswer>, ApiError> {
    let answer = apply(&state, Command::SetBusy)?;
    if let Some(link) = &state.link {
        link.pause().await;
    }
    Ok(answer)
}
