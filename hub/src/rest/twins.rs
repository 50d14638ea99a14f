//! `GET/PATCH/PUT /twins/{id}`, `POST /devices/query`, `POST /twins/{id}/methods`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, if_match, json_body, with_etag};
use crate::core::Core;
use crate::error::Refusal;
use crate::query::Query;

/// Page size when the caller sets no `x-ms-max-item-count`.
const DEFAULT_PAGE: usize = 100;

fn twin_id(twin: &Value) -> &str {
    twin["deviceId"].as_str().unwrap_or_default()
}

/// The device id a continuation token resumes after.
fn continuation_id(token: &str) -> Result<String, Refusal> {
    STANDARD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Refusal::bad_request("bad continuation token"))
}

fn etag_of(twin: &Value) -> String {
    twin["etag"].as_str().unwrap_or_default().to_string()
}

pub(super) async fn get_twin(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let twin = core.get_twin(&id)?;
    let etag = etag_of(&twin);
    Ok(with_etag(twin, &etag))
}

pub(super) async fn patch_twin(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let twin = core
        .write_twin(&id, json_body(&body)?, if_match(&headers), false)
        .await?;
    let etag = etag_of(&twin);
    Ok(with_etag(twin, &etag))
}

pub(super) async fn replace_twin(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let twin = core
        .write_twin(&id, json_body(&body)?, if_match(&headers), true)
        .await?;
    let etag = etag_of(&twin);
    Ok(with_etag(twin, &etag))
}

#[derive(Debug, Deserialize)]
struct QueryBody {
    query: String,
}

pub(super) async fn query(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: QueryBody = serde_json::from_value(json_body(&body)?)
        .map_err(|e| Refusal::bad_request(format!("query body: {e}")))?;
    let query = Query::parse(&body.query)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let page = header("x-ms-max-item-count")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_PAGE);
    let after = header("x-ms-continuation")
        .map(continuation_id)
        .transpose()?;

    // Twins come in device id order, so a page resumes after the last id the previous page
    // returned, whatever was registered or deleted in between.
    let mut matching = core
        .all_twins()?
        .into_iter()
        .filter(|t| after.as_deref().is_none_or(|last| twin_id(t) > last))
        .filter(|t| query.matches(t));
    let items: Vec<Value> = matching.by_ref().take(page).collect();
    let next = match (matching.next(), items.last()) {
        (Some(_), Some(last)) => Some(STANDARD.encode(twin_id(last))),
        _ => None,
    };
    let mut resp = axum::Json(Value::Array(items)).into_response();
    let h = resp.headers_mut();
    h.insert("x-ms-item-type", HeaderValue::from_static("Twin"));
    if let Some(token) = next
        && let Ok(v) = HeaderValue::from_str(&token)
    {
        h.insert("x-ms-continuation", v);
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodBody {
    method_name: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    response_timeout_in_seconds: Option<u64>,
}

pub(super) async fn invoke_method(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: MethodBody = serde_json::from_value(json_body(&body)?)
        .map_err(|e| Refusal::bad_request(format!("method body: {e}")))?;
    core.get_device(&id)?;
    let timeout = Duration::from_secs(body.response_timeout_in_seconds.unwrap_or(30).clamp(5, 300));
    let (status, payload) = core
        .invoke_method(&id, &body.method_name, &body.payload, timeout)
        .await?;
    Ok(axum::Json(json!({ "status": status, "payload": payload })).into_response())
}
