//! `POST /api/v1/SetReady`: clinical work ended; reconnect, run `onResume`, resume transfers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;

use super::ApiState;
use super::json::ApiError;
use super::set_busy::{StateAnswer, apply};
use crate::state::Command;

/// SetReady.
#[utoipa::path(post, path = "/api/v1/SetReady", responses(
    (status = 200, body = StateAnswer), (status = 401), (status = 409)))]
pub async fn handle(State(state): State<Arc<ApiState>>) -> Result<Json<StateAnswer>, ApiError> {
    if let Some(link) = &state.link {
        link.resume().await;
    }
    apply(&state, Command::SetReady)
}
