//! `PUT/GET/DELETE /devices/{id}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{ApiError, if_match, json_body, with_etag};
use crate::core::Core;
use crate::error::Refusal;
use crate::registry::DeviceRecord;

pub(super) async fn put_device(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let value = json_body(&body)?;
    let wanted: DeviceRecord = serde_json::from_value(value)
        .map_err(|e| Refusal::bad_request(format!("device body: {e}")))?;
    let device = core.put_device(&id, wanted, if_match(&headers)).await?;
    let etag = device.etag.clone();
    Ok(with_etag(
        serde_json::to_value(device).unwrap_or_default(),
        &etag,
    ))
}

pub(super) async fn get_device(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let device = core.get_device(&id)?;
    let etag = device.etag.clone();
    Ok(with_etag(
        serde_json::to_value(device).unwrap_or_default(),
        &etag,
    ))
}

pub(super) async fn delete_device(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    core.delete_device(&id, if_match(&headers)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
