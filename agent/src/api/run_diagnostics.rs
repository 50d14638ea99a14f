//! `GET /api/v1/RunDiagnostics`: the transfer round trip, one run at a time.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

use super::ApiState;
use super::json::ApiError;

/// RunDiagnostics.
#[utoipa::path(get, path = "/api/v1/RunDiagnostics", responses(
    (status = 200, body = Object), (status = 409), (status = 502), (status = 503), (status = 401)))]
pub async fn handle(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let Ok(_running) = state.diagnostics.try_lock() else {
        return Err(ApiError::conflict("diagnostics are already running"));
    };
    let Some(link) = state.link.clone() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no hub link configured".into(),
        ));
    };
    link.run_diagnostics()
        .await
        .map(Json)
        .map_err(|reason| ApiError(StatusCode::BAD_GATEWAY, reason))
}
