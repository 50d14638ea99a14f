//! The key holder's HTTP API (version `v1`).
//!
//! - `GET /v1/keys`: every trusted public key and the active key id (public, no auth);
//! - `POST /v1/sign/recipe` `{"changeSpec": {...}}`: `SignRecipe`;
//! - `POST /v1/sign/blob` `{"container": "patches", "path": "..."}`: `SignBlob`.
//!
//! The signing routes require `Authorization: Bearer {token}` (scheme in any case), checked
//! before the body is read, unless [`SignAccess::Open`] (loopback only, see the role settings).
//! A token file is read again for every request, so a rotated Kubernetes Secret counts at once.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloudpillar_protocol::encoding::encode_base64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

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

/// Who may use the signing routes.
#[derive(Debug, Clone)]
pub enum SignAccess {
    /// Callers presenting this token.
    Token(Arc<str>),
    /// Callers presenting the token this file holds now (read for every request).
    TokenFile(PathBuf),
    /// Anyone who reaches the listener.
    Open,
}

impl SignAccess {
    /// `None` when `headers` carry the wanted bearer token, else the answer refusing them.
    async fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let wanted: Arc<str> = match self {
            Self::Open => return None,
            Self::Token(token) => token.clone(),
            Self::TokenFile(path) => match tokio::fs::read_to_string(path).await {
                Ok(text) if !text.trim().is_empty() => Arc::from(text.trim()),
                read => {
                    let reason = read
                        .err()
                        .map_or("it is empty".to_owned(), |e| e.to_string());
                    tracing::warn!(path = %path.display(), %reason, "sign token file unusable");
                    let body = Json(serde_json::json!({ "error": "sign token unavailable" }));
                    return Some((StatusCode::SERVICE_UNAVAILABLE, body).into_response());
                }
            },
        };
        if bearer(headers).is_some_and(|given| same_token(given, &wanted)) {
            return None;
        }
        let body = Json(serde_json::json!({ "error": "missing or wrong bearer token" }));
        Some((StatusCode::UNAUTHORIZED, body).into_response())
    }
}

/// The token of an `Authorization: Bearer {token}` header, the scheme in any case.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Compares digests, so the time taken tells nothing about how much of a guess was right.
fn same_token(given: &str, wanted: &str) -> bool {
    let (given, wanted) = (Sha256::digest(given), Sha256::digest(wanted));
    given
        .iter()
        .zip(wanted.iter())
        .fold(0u8, |differ, (a, b)| differ | (a ^ b))
        == 0
}

async fn require_token(
    State(access): State<Arc<SignAccess>>,
    request: Request,
    next: Next,
) -> Response {
    match access.refusal(request.headers()).await {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

#[derive(Debug, Clone)]
struct Api {
    holder: KeyHolder,
    blobs: BlobStores,
}

/// The key holder's routes; `access` guards the signing routes.
pub fn router(holder: KeyHolder, blobs: BlobStores, access: SignAccess) -> Router {
    let api = Api { holder, blobs };
    let signing = Router::new()
        .route("/v1/sign/recipe", post(sign_recipe))
        .route("/v1/sign/blob", post(sign_blob))
        .route_layer(middleware::from_fn_with_state(
            Arc::new(access),
            require_token,
        ));
    Router::new()
        .route("/v1/keys", get(keys))
        .merge(signing)
        .with_state(api)
}

async fn keys(State(api): State<Api>) -> Response {
    match api.holder.published_keys() {
        Ok(keys) => Json(keys).into_response(),
        Err(error) => failure(StatusCode::INTERNAL_SERVER_ERROR, &error),
    }
}

async fn sign_recipe(State(api): State<Api>, Json(request): Json<SignRecipeRequest>) -> Response {
    match api.holder.sign_recipe(&request.change_spec).await {
        Ok(signed) => Json(SignResponse::from(signed)).into_response(),
        Err(error) => failure(StatusCode::BAD_GATEWAY, &error),
    }
}

async fn sign_blob(State(api): State<Api>, Json(request): Json<SignBlobRequest>) -> Response {
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

fn failure(status: StatusCode, error: &dyn std::error::Error) -> Response {
    let text = cloudpillar_protocol::causes::with_causes(error);
    tracing::warn!(%status, error = %text, "key holder request failed");
    (status, Json(serde_json::json!({ "error": text }))).into_response()
}
