//! `GET /api/v1/RunDiagnostics`: the transfer and signing round trip, one run at a time.
//!
//! 200 with the report when every step passed; 502 with the same report, the failing step in
//! `failedStep` and the reason in `error`, when one did not; 409 while another run is going on;
//! 503 without a hub link.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::ApiState;
use super::json::ApiError;

/// A diagnostics run that did not pass.
#[derive(Debug, Clone, PartialEq)]
pub struct DiagnosticsFailed {
    /// Name of the step that failed (`upload`, `sign`, `download`, `verify`, `compare`).
    pub step: String,
    /// Why it failed.
    pub reason: String,
    /// The whole report: every step's outcome and timing, `failedStep` and `error` included.
    pub report: Value,
}

impl std::fmt::Display for DiagnosticsFailed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "diagnostics failed at {}: {}",
            self.step, self.reason
        )
    }
}

/// RunDiagnostics.
#[utoipa::path(get, path = "/api/v1/RunDiagnostics", responses(
    (status = 200, body = Object, description = "every step passed; outcome and timing per step"),
    (status = 502, body = Object, description = "a step failed: `failedStep`, `error`, `steps`"),
    (status = 409, description = "another run is going on"),
    (status = 503), (status = 401)))]
pub async fn handle(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let Ok(_running) = state.diagnostics.try_lock() else {
        return Err(ApiError::conflict("diagnostics are already running"));
    };
    let Some(link) = state.link.clone() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no hub link configured".into(),
        ));
    };
    Ok(match link.run_diagnostics().await {
        Ok(report) => Json(report).into_response(),
        Err(failed) => (StatusCode::BAD_GATEWAY, Json(failed.report)).into_response(),
    })
}
