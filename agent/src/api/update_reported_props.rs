//! `PUT /api/v1/UpdateReportedProps`: the application patches its own reported properties.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use cloudpillar_protocol::keys::encode_key;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::ApiState;
use super::json::{ApiError, StrictJson};

/// Reported members the agent owns; the application may not overwrite them.
const AGENT_OWNED: [&str; 8] = [
    "deviceState",
    "changeSpec",
    "changeCancel",
    "desiredVersionApplied",
    "health",
    "provisioning",
    "d2cDropped",
    "lastUploadDenial",
];

/// The request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateReportedProps {
    /// Properties to set.
    pub properties: Vec<Property>,
}

/// One property.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Property {
    /// Property name (encoded into a valid twin key).
    pub name: String,
    /// Any JSON value; `null` deletes the property.
    #[schema(value_type = Object)]
    pub value: Value,
}

/// UpdateReportedProps.
#[utoipa::path(put, path = "/api/v1/UpdateReportedProps", request_body = UpdateReportedProps,
    responses((status = 204), (status = 400), (status = 401), (status = 413), (status = 503)))]
pub async fn handle(
    State(state): State<Arc<ApiState>>,
    StrictJson(body, _): StrictJson<UpdateReportedProps>,
) -> Result<StatusCode, ApiError> {
    if body.properties.is_empty() {
        return Err(ApiError::bad_request("properties must not be empty"));
    }
    let mut patch = Map::new();
    for property in body.properties {
        if property.name.is_empty() {
            return Err(ApiError::bad_request("property name must not be empty"));
        }
        if AGENT_OWNED.contains(&property.name.as_str()) {
            return Err(ApiError::bad_request(format!(
                "property {:?} is maintained by the agent",
                property.name
            )));
        }
        patch.insert(encode_key(&property.name), property.value);
    }
    let patch = Value::Object(patch);
    let mut candidate = state.reported.wanted();
    cloudpillar_protocol::twin::merge_patch(&mut candidate, &patch);
    cloudpillar_protocol::limits::TwinLimits::default()
        .check_reported(&candidate)
        .map_err(|e| ApiError::bad_request(format!("reported would break a twin limit: {e}")))?;
    state.reported.merge(&patch);
    Ok(StatusCode::NO_CONTENT)
}
