//! The service REST API (IoT Hub service paths, `api-version` accepted and ignored), behind
//! shared-access-policy SAS tokens.

mod devices;
mod events;
mod twins;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

use crate::core::Core;
use crate::error::{HubError, Refusal};
use crate::sas;

/// Builds the router.
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route(
            "/devices/{id}",
            put(devices::put_device)
                .get(devices::get_device)
                .delete(devices::delete_device),
        )
        .route("/devices/query", post(twins::query))
        .route("/devices/{id}/messages/deviceBound", post(events::send_c2d))
        .route(
            "/twins/{id}",
            get(twins::get_twin)
                .patch(twins::patch_twin)
                .put(twins::replace_twin),
        )
        .route("/twins/{id}/methods", post(twins::invoke_method))
        .route("/events", get(events::read_events))
        .merge(crate::dps::rest::routes())
        .layer(middleware::from_fn_with_state(core.clone(), authorize))
        .with_state(core)
}

/// Refuses requests without a valid service SAS token in `Authorization`.
async fn authorize(State(core): State<Arc<Core>>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match token.map(|t| check_service_token(&core, t)) {
        Some(Ok(())) => next.run(req).await,
        Some(Err(reason)) => unauthorized(&reason),
        None => unauthorized("missing Authorization header"),
    }
}

fn check_service_token(core: &Core, token: &str) -> Result<(), String> {
    let parsed = sas::parse(token).map_err(|e| e.to_string())?;
    if parsed.key_name.as_deref() != Some(core.config.policy_name.as_str()) {
        return Err("unknown shared access policy".into());
    }
    parsed
        .verify(&core.config.hostname, &[&core.policy_key], unix_now())
        .map_err(|e| e.to_string())
}

fn unauthorized(reason: &str) -> Response {
    refusal_response(&Refusal::new(401, "IotHubUnauthorizedAccess", reason))
}

/// Seconds since 1970.
pub fn unix_now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0)
}

/// Azure's error shape: status, `iothub-errorcode` header and
/// `{"Message":"ErrorCode:{code};{reason}","ExceptionMessage":"..."}`.
pub fn refusal_response(r: &Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({
        "Message": format!("ErrorCode:{};{}", r.code, r.message),
        "ExceptionMessage": format!("{} {}", r.code, r.message),
    });
    let mut resp = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(r.code) {
        resp.headers_mut().insert("iothub-errorcode", v);
    }
    resp
}

/// Maps a hub error to a response.
#[derive(Debug)]
pub struct ApiError(HubError);

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        Self(e)
    }
}

impl From<crate::error::StoreError> for ApiError {
    fn from(e: crate::error::StoreError) -> Self {
        Self(HubError::Store(e))
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        Self(HubError::Refused(r))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.0 {
            HubError::Refused(r) => refusal_response(&r),
            HubError::Store(error) => {
                tracing::error!(%error, "store failure answering a service request");
                refusal_response(&Refusal::new(500, "ServerError", "store failure"))
            }
        }
    }
}

/// The `If-Match` header, when present.
pub fn if_match(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A JSON response with a weak `ETag: W/"{etag}"` header.
pub fn with_etag(body: serde_json::Value, etag: &str) -> Response {
    let mut resp = axum::Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{etag}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// Parses a JSON body, answering 400 with the parser's reason when it is malformed.
pub fn json_body(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| Refusal::bad_request(format!("malformed JSON: {e}")).into())
}
