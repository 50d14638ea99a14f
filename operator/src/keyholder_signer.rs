//! Signs recipes through the key holder's HTTP API (`POST /v1/sign/recipe`), so the signing
//! key never enters the operator (devices' uploads too, for the streamer: see
//! [`crate::keyholder_uploads`]). Every signature is checked against the keys the key holder
//! publishes (`GET /v1/keys`) before it is used: a key holder that canonicalised differently,
//! or signed with a key agents do not trust, is caught here rather than on the devices.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use cloudpillar_backend::keys::{PublishedKeys, SignRecipeRequest, SignResponse};
use cloudpillar_controllers::recipe::{RecipeSignature, SignError, Signer};
use cloudpillar_protocol::signing::{KeyMaterialError, SignatureError, TrustStore, VerifyingKey};
use tokio::sync::Mutex;

/// Calls to the key holder failed or gave an unusable answer.
#[derive(Debug, thiserror::Error)]
pub enum KeyholderError {
    /// The bearer token file could not be read.
    #[error("reading the key holder token file {path}")]
    ReadToken {
        /// The file.
        path: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The canonical recipe bytes are not JSON (a bug in the caller).
    #[error("the canonical recipe is not JSON")]
    Canonical(#[source] serde_json::Error),
    /// No answer from the key holder.
    #[error("calling the key holder at {url}")]
    Request {
        /// The URL called.
        url: String,
        /// Transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The key holder answered with an error status.
    #[error("the key holder refused {url}: {status}: {body}")]
    Refused {
        /// The URL called.
        url: String,
        /// HTTP status.
        status: u16,
        /// Its error text.
        body: String,
    },
    /// The answer was not the expected JSON.
    #[error("reading the key holder's answer from {url}")]
    Answer {
        /// The URL called.
        url: String,
        /// Decoding error.
        #[source]
        source: reqwest::Error,
    },
    /// A published key is not a P-521 public key.
    #[error("published key {key_id} is not a P-521 public key")]
    PublishedKey {
        /// Its key id.
        key_id: String,
        /// Parse error.
        #[source]
        source: KeyMaterialError,
    },
    /// The signature does not verify with any published key.
    #[error("the key holder's signature with key {key_id} does not verify over the recipe")]
    Verify {
        /// The key id the key holder named.
        key_id: String,
        /// Verification error.
        #[source]
        source: SignatureError,
    },
}

/// A [`Signer`] backed by the key holder's API.
pub struct KeyholderSigner {
    base: String,
    token_file: Option<PathBuf>,
    http: reqwest::Client,
    trusted: Mutex<TrustStore>,
}

impl std::fmt::Debug for KeyholderSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyholderSigner")
            .field("base", &self.base)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl KeyholderSigner {
    /// A signer calling the key holder at `base` (`http://keyholder:8090`), sending the token
    /// in `token_file` (re-read for every request, so a rotated Secret takes effect).
    pub fn new(base: &str, token_file: Option<PathBuf>) -> Result<Self, reqwest::Error> {
        cloudpillar_backend::install_tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token_file,
            http,
            trusted: Mutex::new(TrustStore::new()),
        })
    }

    async fn token(&self) -> Result<Option<String>, KeyholderError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text =
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| KeyholderError::ReadToken {
                    path: path.display().to_string(),
                    source,
                })?;
        Ok(Some(text.trim().to_owned()))
    }

    async fn request(&self, canonical: &[u8]) -> Result<SignResponse, KeyholderError> {
        let change_spec = serde_json::from_slice(canonical).map_err(KeyholderError::Canonical)?;
        self.post("/v1/sign/recipe", &SignRecipeRequest { change_spec })
            .await
    }

    /// `POST {route}` with `body` and the bearer token; the decoded answer.
    pub(crate) async fn post<B, T>(&self, route: &str, body: &B) -> Result<T, KeyholderError>
    where
        B: serde::Serialize + Sync,
        T: serde::de::DeserializeOwned,
    {
        let url = format!("{}{route}", self.base);
        let mut request = self.http.post(&url).json(body);
        if let Some(token) = self.token().await? {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|source| KeyholderError::Request {
                url: url.clone(),
                source,
            })?;
        answer(url, response).await
    }

    /// Replaces the trusted keys with what the key holder publishes now.
    async fn refresh_keys(&self) -> Result<(), KeyholderError> {
        let url = format!("{}/v1/keys", self.base);
        let response =
            self.http
                .get(&url)
                .send()
                .await
                .map_err(|source| KeyholderError::Request {
                    url: url.clone(),
                    source,
                })?;
        let published: PublishedKeys = answer(url, response).await?;
        let mut store = TrustStore::new();
        for entry in published.keys {
            let key = VerifyingKey::from_base64(&entry.public_key).map_err(|source| {
                KeyholderError::PublishedKey {
                    key_id: entry.key_id.clone(),
                    source,
                }
            })?;
            store.add(key);
        }
        let active = published.active_key_id;
        tracing::info!(keys = store.len(), %active, "key holder keys loaded");
        *self.trusted.lock().await = store;
        Ok(())
    }

    async fn sign_checked(&self, canonical: &[u8]) -> Result<RecipeSignature, KeyholderError> {
        let signed = self.request(canonical).await?;
        let known = self.trusted.lock().await.get(&signed.key_id).is_some();
        if !known {
            self.refresh_keys().await?;
        }
        let trusted = self.trusted.lock().await;
        let verify_error = |source| KeyholderError::Verify {
            key_id: signed.key_id.clone(),
            source,
        };
        let key_id = trusted
            .verify(canonical, &signed.signature)
            .map_err(verify_error)?;
        if key_id != signed.key_id {
            let mismatch = SignatureError::BadSignature {
                key_id: Some(key_id.to_owned()),
            };
            return Err(verify_error(mismatch));
        }
        Ok(RecipeSignature {
            key_id: signed.key_id,
            text: signed.signature,
        })
    }
}

/// Decodes a successful JSON answer, or turns an error status into [`KeyholderError::Refused`].
async fn answer<T: serde::de::DeserializeOwned>(
    url: String,
    response: reqwest::Response,
) -> Result<T, KeyholderError> {
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(KeyholderError::Refused {
            url,
            status: status.as_u16(),
            body: body.trim().to_owned(),
        });
    }
    response
        .json()
        .await
        .map_err(|source| KeyholderError::Answer { url, source })
}

#[async_trait]
impl Signer for KeyholderSigner {
    async fn sign(&self, canonical: &[u8]) -> Result<RecipeSignature, SignError> {
        self.sign_checked(canonical)
            .await
            .map_err(|error| SignError::Remote {
                source: Box::new(error),
            })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Json;
    use axum::routing::{get, post};
    use cloudpillar_backend::blob::{BlobConfig, BlobStores};
    use cloudpillar_backend::keys::{KeyHolder, LocalSigner};
    use cloudpillar_protocol::signing::{SigningKey, canonical_json};
    use serde_json::json;

    use super::*;

    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// The backend's key holder API with a fresh key and bearer token `secret-token`.
    async fn key_holder(dir: &std::path::Path) -> (String, SigningKey) {
        let key = SigningKey::generate().expect("key");
        let holder = KeyHolder::new(Arc::new(LocalSigner::new(key.clone())));
        let root = dir.join("blobs");
        let stores = BlobStores::open(&BlobConfig::Filesystem { root })
            .await
            .expect("blob stores");
        let app = cloudpillar_backend::keys::router(
            holder,
            stores,
            cloudpillar_backend::keys::SignAccess::Token("secret-token".into()),
        );
        (serve(app).await, key)
    }

    fn recipe() -> Vec<u8> {
        canonical_json(&json!({"id": "fw-2.4.0", "patch": {"installSteps": [{"x": 1.5}]}}))
    }

    #[tokio::test]
    async fn signs_through_the_key_holder_with_its_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (url, key) = key_holder(dir.path()).await;
        let token = dir.path().join("token");
        std::fs::write(&token, "secret-token\n").expect("write");
        let signer = KeyholderSigner::new(&url, Some(token)).expect("client");

        let canonical = recipe();
        let signature = signer.sign(&canonical).await.expect("signed");
        assert_eq!(signature.key_id, key.key_id());
        let mut trusted = TrustStore::new();
        trusted.add(key.verifying_key().clone());
        assert_eq!(
            trusted
                .verify(&canonical, &signature.text)
                .expect("verifies"),
            key.key_id()
        );
    }

    #[tokio::test]
    async fn a_wrong_token_is_reported_as_the_key_holders_refusal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (url, _) = key_holder(dir.path()).await;
        let token = dir.path().join("token");
        std::fs::write(&token, "not-the-token").expect("write");
        let signer = KeyholderSigner::new(&url, Some(token)).expect("client");
        match signer.sign_checked(&recipe()).await {
            Err(KeyholderError::Refused { status: 401, .. }) => {}
            other => panic!("expected a 401 refusal, got {other:?}"),
        }
        let missing = KeyholderSigner::new(&url, Some(dir.path().join("absent"))).expect("client");
        assert!(matches!(
            missing.sign_checked(&recipe()).await,
            Err(KeyholderError::ReadToken { .. })
        ));
    }

    /// A key holder publishing one key and signing with another: a real one cannot be made to
    /// do this, so a scripted peer stands in.
    #[tokio::test]
    async fn a_signature_the_published_keys_do_not_verify_is_refused() {
        let published = SigningKey::generate().expect("key");
        let other = SigningKey::generate().expect("key");
        let keys = KeyHolder::new(Arc::new(LocalSigner::new(published.clone())))
            .published_keys()
            .expect("keys");
        let canonical = recipe();
        let forged = other.sign(&canonical).to_base64();
        let text = format!("{}:{forged}", published.key_id());
        let response = json!({
            "signature": text, "keyId": published.key_id(), "sha512": "", "size": 0,
        });
        let app = axum::Router::new()
            .route("/v1/keys", get(move || async move { Json(keys) }))
            .route(
                "/v1/sign/recipe",
                post(move || async move { Json(response) }),
            );
        let signer = KeyholderSigner::new(&serve(app).await, None).expect("client");
        match signer.sign_checked(&canonical).await {
            Err(KeyholderError::Verify { key_id, .. }) => assert_eq!(key_id, published.key_id()),
            other => panic!("expected a verification failure, got {other:?}"),
        }
    }
}
