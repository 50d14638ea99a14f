//! The key holder's HTTP API (version `v1`).
//!
//! - `GET /v1/keys`: every trusted public key and the active key id (public, no auth);
//! - `POST /v1/sign/recipe` `{"changeSpec": {...}}`: `SignRecipe`;
//! - `POST /v1/sign/blob` `{"container": "patches", "path": "..."}`: `SignBlob`.
//!
//! The signing routes require `Authorization: Bearer {token}` when a token is configured; serve
//! them on loopback or behind a NetworkPolicy otherwise.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloudpillar_protocol::encoding::encode_base64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{KeyError, KeyHolder, Signed};
use crate::blob::{BlobError, BlobStores};

/// Answer of `GET /v1/keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedKeys {
    /// Key id new signatures name.
    pub active_key_id: String,
    /// Every trusted key, oldest first.
    pub keys: Vec<KeyEntry>,
}

/// One published public key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyEntry {
    /// 16 hex digit key id.
    pub key_id: String,
    /// Base64 of the uncompressed SEC1 point.
    pub public_key: String,
    /// `BEGIN PUBLIC KEY` PEM.
    pub public_key_pem: String,
}

/// Body of `POST /v1/sign/recipe`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignRecipeRequest {
    /// The recipe's `changeSpec` exactly as written.
    pub change_spec: Value,
}

/// Body of `POST /v1/sign/blob`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignBlobRequest {
    /// `patches` or `uploads`.
    pub container: String,
    /// Object path inside the container.
    pub path: String,
}

/// Answer of both signing routes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignResponse {
    /// `kid:base64` signature text.
    pub signature: String,
    /// Key id of the signing key.
    pub key_id: String,
    /// SHA-512 of the signed bytes, hex.
    pub sha512: String,
    /// Number of signed bytes.
    pub size: u64,
}

impl From<Signed> for SignResponse {
    fn from(signed: Signed) -> Self {
        Self {
            signature: signed.text,
            key_id: signed.key_id,
            sha512: signed.sha512,
            size: signed.size,
        }
    }
}

impl KeyHolder {
    /// The trusted public keys as `GET /v1/keys` publishes them.
    pub fn published_keys(&self) -> Result<PublishedKeys, KeyError> {
        let mut keys = Vec::new();
        for key_id in self.trust_store().key_ids() {
            let Some(key) = self.trust_store().get(key_id) else {
                continue;
            };
            let public_key_pem = key.to_pem().map_err(|source| KeyError::Material {
                origin: format!("trusted key {key_id}"),
                source,
            })?;
            keys.push(KeyEntry {
                key_id: key_id.to_owned(),
                public_key: encode_base64(&key.to_sec1_bytes()),
                public_key_pem,
            });
        }
        Ok(PublishedKeys {
            active_key_id: self.active_key_id().to_owned(),
            keys,
        })
    }
}

#[derive(Debug, Clone)]
struct Api {
    holder: KeyHolder,
    blobs: BlobStores,
    token: Option<Arc<str>>,
}

/// The key holder's routes; `token`, when set, guards the signing routes.
pub fn router(holder: KeyHolder, blobs: BlobStores, token: Option<String>) -> Router {
    let api = Api {
        holder,
        blobs,
        token: token.map(Arc::from),
    };
    Router::new()
        .route("/v1/keys", get(keys))
        .route("/v1/sign/recipe", post(sign_recipe))
        .route("/v1/sign/blob", post(sign_blob))
        .with_state(api)
}

async fn keys(State(api): State<Api>) -> Response {
    match api.holder.published_keys() {
        Ok(keys) => Json(keys).into_response(),
        Err(error) => failure(StatusCode::INTERNAL_SERVER_ERROR, &error),
    }
}

async fn sign_recipe(
    State(api): State<Api>,
    headers: HeaderMap,
    Json(request): Json<SignRecipeRequest>,
) -> Response {
    if let Some(refused) = api.refuse_unauthorized(&headers) {
        return refused;
    }
    match api.holder.sign_recipe(&request.change_spec).await {
        Ok(signed) => Json(SignResponse::from(signed)).into_response(),
        Err(error) => failure(StatusCode::BAD_GATEWAY, &error),
    }
}

async fn sign_blob(
    State(api): State<Api>,
    headers: HeaderMap,
    Json(request): Json<SignBlobRequest>,
) -> Response {
    if let Some(refused) = api.refuse_unauthorized(&headers) {
        return refused;
    }
    let container = match request.container.as_str() {
        "patches" => &api.blobs.patches,
        "uploads" => &api.blobs.uploads,
        other => {
            let reason = format!("unknown container {other:?}");
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "error": reason })),
            )
                .into_response();
        }
    };
    match api.holder.sign_blob(container, &request.path).await {
        Ok(signed) => Json(SignResponse::from(signed)).into_response(),
        Err(KeyError::ReadBlob { source }) => match *source {
            BlobError::NotFound { .. } => failure(StatusCode::NOT_FOUND, &*source),
            BlobError::InvalidPath { .. } => failure(StatusCode::BAD_REQUEST, &*source),
            _ => failure(StatusCode::BAD_GATEWAY, &*source),
        },
        Err(error) => failure(StatusCode::BAD_GATEWAY, &error),
    }
}

impl Api {
    fn refuse_unauthorized(&self, headers: &HeaderMap) -> Option<Response> {
        let wanted = self.token.as_deref()?;
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given == Some(wanted) {
            return None;
        }
        let body = Json(serde_json::json!({ "error": "missing or wrong bearer token" }));
        Some((StatusCode::UNAUTHORIZED, body).into_response())
    }
}

fn failure(status: StatusCode, error: &dyn std::error::Error) -> Response {
    let text = cloudpillar_protocol::causes::with_causes(error);
    tracing::warn!(%status, error = %text, "key holder request failed");
    (status, Json(serde_json::json!({ "error": text }))).into_response()
}
