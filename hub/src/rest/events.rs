//! `GET /events` (long-poll event stream) and `POST /devices/{id}/messages/deviceBound`
//! (C2D send, an extension: Azure sends C2D from the service side over AMQP only).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::ApiError;
use crate::core::Core;
use crate::events::HubEvent;

/// Most events one read returns.
const MAX_LIMIT: usize = 1000;
/// Longest long-poll wait, seconds.
const MAX_WAIT: u64 = 60;

#[derive(Debug, Deserialize)]
pub(super) struct EventsParams {
    #[serde(default)]
    from: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    wait: Option<u64>,
}

pub(super) async fn read_events(
    State(core): State<Arc<Core>>,
    Query(p): Query<EventsParams>,
) -> Result<Response, ApiError> {
    let from = p.from.unwrap_or(1).max(1);
    let limit = p.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let wait = Duration::from_secs(p.wait.unwrap_or(0).min(MAX_WAIT));
    let mut watch = core.bus.last_sequence();
    let mut events: Vec<HubEvent> = core.store.events_from(from, limit)?;
    if events.is_empty() && !wait.is_zero() {
        let deadline = tokio::time::Instant::now() + wait;
        while *watch.borrow_and_update() < from {
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        events = core.store.events_from(from, limit)?;
    }
    let next = events.last().map_or(from, |e| e.sequence_number + 1);
    Ok(axum::Json(json!({ "events": events, "nextSequenceNumber": next })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct C2dParams {
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

pub(super) async fn send_c2d(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    Query(p): Query<C2dParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut properties = BTreeMap::new();
    for (name, value) in &headers {
        if let (Some(key), Ok(v)) = (name.as_str().strip_prefix("iothub-app-"), value.to_str()) {
            properties.insert(key.to_string(), v.to_string());
        }
    }
    let mid = core
        .send_c2d(
            &id,
            body.to_vec(),
            properties,
            text("iothub-messageid"),
            text("iothub-correlationid"),
            p.ttl_seconds.map(Duration::from_secs),
        )
        .await?;
    Ok(axum::Json(json!({ "messageId": mid })).into_response())
}
