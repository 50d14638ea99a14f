//! `POST /api/v1/AddRecipe`: queue a local recipe in the `changeSpec` format.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use cloudpillar_protocol::recipe::{Plan, section_order};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ApiState;
use super::json::{ApiError, StrictJson};
use crate::engine::journal::RecipeSource;
use crate::engine::{Delivery, Submitted};

/// The request body: the same shape as the desired twin members.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRecipe {
    /// The recipe.
    #[serde(rename = "changeSpec")]
    #[schema(value_type = Object)]
    pub change_spec: Value,
    /// Optional signature; verified when present.
    #[serde(rename = "changeSign", default)]
    pub change_sign: Option<String>,
}

/// What happened to the recipe.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AddRecipeAnswer {
    /// `changeSpec.id`.
    pub id: String,
    /// `started`, `already_running` or `already_ended`.
    pub result: String,
}

/// AddRecipe.
#[utoipa::path(post, path = "/api/v1/AddRecipe", request_body = AddRecipe, responses(
    (status = 202, body = AddRecipeAnswer), (status = 200, body = AddRecipeAnswer),
    (status = 400), (status = 401), (status = 413), (status = 503)))]
pub async fn handle(
    State(state): State<Arc<ApiState>>,
    StrictJson(body, raw): StrictJson<AddRecipe>,
) -> Result<(StatusCode, Json<AddRecipeAnswer>), ApiError> {
    let order = section_order(&raw, &["changeSpec"]).unwrap_or_default();
    // Refuse a malformed recipe here, before it replaces the running one.
    let plan = Plan::from_value(&body.change_spec, Some(&order))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let delivery = Delivery {
        spec: body.change_spec,
        order,
        sign: body.change_sign,
        source: RecipeSource::Local,
    };
    let (status, result) = match state.engine.submit(delivery).await {
        Submitted::Started => (StatusCode::ACCEPTED, "started".to_owned()),
        Submitted::AlreadyRunning => (StatusCode::OK, "already_running".to_owned()),
        Submitted::AlreadyEnded(s) => (StatusCode::OK, format!("already_ended: {s:?}")),
        Submitted::Refused(code, text) => {
            return Err(ApiError::bad_request(format!("{code}: {text}")));
        }
    };
    Ok((
        status,
        Json(AddRecipeAnswer {
            id: plan.id,
            result,
        }),
    ))
}
