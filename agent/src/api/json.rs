//! Strict JSON bodies and error answers of the local API.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest request body the API reads; a larger one answers 413 with the reason.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Error body of every refused call.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Why the call was refused.
    pub error: String,
}

/// An error answer: status and reason.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    /// 400 with `reason`.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, reason.into())
    }

    /// 409 with `reason`.
    pub fn conflict(reason: impl Into<String>) -> Self {
        Self(StatusCode::CONFLICT, reason.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(ErrorBody { error: self.1 })).into_response()
    }
}

/// A JSON body parsed strictly: unknown fields, wrong types and bad syntax answer 400 with
/// the parser's reason (axum's own extractor would answer 422); a body over [`BODY_LIMIT`]
/// answers 413.
#[derive(Debug)]
pub struct StrictJson<T>(pub T, pub axum::body::Bytes);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::bad_request(
                "content-type must be application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body is over the limit of {BODY_LIMIT} bytes"),
                ),
                _ => ApiError::bad_request(format!("failed to read body: {e}")),
            })?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?;
        Ok(Self(value, bytes))
    }
}
