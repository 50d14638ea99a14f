//! `CP-DEVICE-ID` and `CP-SECRET-KEY` checks, and the BUSY gate.
//!
//! Every call names the device and carries the local API secret. Before the agent knows
//! its device id (DPS not run yet) any id is accepted, and becomes the registration id.
//! While BUSY only GetDeviceState, InitiateProvisioning and SetReady pass; the rest
//! answer 503.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::json::ApiError;

/// Header naming the device.
pub const DEVICE_ID_HEADER: &str = "CP-DEVICE-ID";
/// Header carrying the local API secret.
pub const SECRET_HEADER: &str = "CP-SECRET-KEY";

/// Routes that stay open while BUSY.
const OPEN_WHILE_BUSY: [&str; 3] = ["GetDeviceState", "InitiateProvisioning", "SetReady"];

/// Compares without an early exit, so timing does not reveal the prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Some((header(DEVICE_ID_HEADER)?, header(SECRET_HEADER)?))
}

/// Middleware for every API route.
pub async fn guard(State(state): State<Arc<ApiState>>, mut req: Request, next: Next) -> Response {
    let Some((device_id, secret)) = credentials(req.headers()) else {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing CP-DEVICE-ID or CP-SECRET-KEY".into(),
        )
        .into_response();
    };
    let known_id = state.device_id();
    let id_ok = known_id
        .as_deref()
        .is_none_or(|known| same(known.as_bytes(), device_id.as_bytes()));
    if !id_ok || !same(state.secret.as_bytes(), secret.as_bytes()) {
        tracing::warn!(%device_id, "local API call with wrong credentials");
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong device id or secret key".into(),
        )
        .into_response();
    }
    let route = req
        .uri()
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    if state.device.is_busy() && !OPEN_WHILE_BUSY.contains(&route.as_str()) {
        return ApiError(StatusCode::SERVICE_UNAVAILABLE, "device is BUSY".into()).into_response();
    }
    req.extensions_mut().insert(CallerId(device_id));
    next.run(req).await
}

/// The device id the caller sent, for lazy provisioning.
#[derive(Debug, Clone)]
pub struct CallerId(pub String);
