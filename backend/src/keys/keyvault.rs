//! Signing with a key that never leaves Azure Key Vault (ES512 over the REST API).
//!
//! Requests, as Microsoft documents them for API version 7.4:
//! - public key: `GET {vault}/keys/{name}/{version}?api-version=7.4`, answered with a JSON Web
//!   Key `{"key": {"kid", "kty": "EC", "crv": "P-521", "x", "y"}}` (coordinates base64url);
//! - signature: `POST {vault}/keys/{name}/{version}/sign?api-version=7.4` with
//!   `{"alg": "ES512", "value": base64url(SHA-512 digest)}`, answered with
//!   `{"kid", "value": base64url(r || s)}`.
//!
//! Both carry `Authorization: Bearer {token}` for the `https://vault.azure.net` audience.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::URL_SAFE_NO_PAD};
use cloudpillar_protocol::signing::{Signature, VerifyingKey};
use serde::Deserialize;
use sha2::{Digest, Sha512};

use super::{KeyError, Signer};

/// Key Vault REST API version used for every call.
pub const API_VERSION: &str = "7.4";

/// base64url that accepts the value with or without padding.
const URL_SAFE_ANY_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Supplies bearer tokens for Key Vault (workload identity, managed identity, ...).
#[async_trait]
pub trait TokenProvider: Send + Sync + std::fmt::Debug {
    /// A currently valid access token for the Key Vault audience.
    async fn token(&self) -> Result<String, KeyError>;
}

/// A fixed token (tests, or tokens refreshed outside the process).
#[derive(Clone)]
pub struct StaticToken(pub String);

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

#[async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self) -> Result<String, KeyError> {
        Ok(self.0.clone())
    }
}

/// A token kept in a file that something else refreshes (a sidecar or a mounted Secret);
/// read again for every request.
#[derive(Debug, Clone)]
pub struct FileToken(pub std::path::PathBuf);

#[async_trait]
impl TokenProvider for FileToken {
    async fn token(&self) -> Result<String, KeyError> {
        tokio::fs::read_to_string(&self.0)
            .await
            .map(|text| text.trim().to_owned())
            .map_err(|source| KeyError::Load {
                origin: self.0.display().to_string(),
                source: Box::new(source),
            })
    }
}

/// One version of an EC P-521 key in Key Vault.
#[derive(Debug, Clone)]
pub struct KeyVaultSigner {
    key_url: String,
    tokens: Arc<dyn TokenProvider>,
    http: reqwest::Client,
    public: VerifyingKey,
}

#[derive(Deserialize)]
struct KeyBundle {
    key: JsonWebKey,
}

#[derive(Deserialize)]
struct JsonWebKey {
    kty: String,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct SignResult {
    value: String,
}

impl KeyVaultSigner {
    /// Reads the public key of `name`/`version` in the vault at `vault`
    /// (e.g. `https://example.vault.azure.net`) and returns a signer for it.
    pub async fn connect(
        vault: &str,
        name: &str,
        version: &str,
        tokens: Arc<dyn TokenProvider>,
        http: reqwest::Client,
    ) -> Result<Self, KeyError> {
        let key_url = format!("{}/keys/{name}/{version}", vault.trim_end_matches('/'));
        let origin = key_url.clone();
        let failed = |reason: String, source: Option<reqwest::Error>| KeyError::Load {
            origin: origin.clone(),
            source: match source {
                Some(source) => Box::new(source),
                None => reason.into(),
            },
        };
        let response = http
            .get(format!("{key_url}?api-version={API_VERSION}"))
            .bearer_auth(tokens.token().await?)
            .send()
            .await
            .map_err(|e| failed("no response".into(), Some(e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(failed(format!("key vault answered {status}: {body}"), None));
        }
        let bundle: KeyBundle = response
            .json()
            .await
            .map_err(|e| failed("bad key bundle".into(), Some(e)))?;
        let public = public_key_from_jwk(&bundle.key).map_err(|reason| failed(reason, None))?;
        tracing::info!(key = %key_url, key_id = public.key_id(), "key vault key loaded");
        Ok(Self {
            key_url,
            tokens,
            http,
            public,
        })
    }

    /// The URL requests for this key start with.
    pub fn key_url(&self) -> &str {
        &self.key_url
    }
}

/// SEC1 point `04 || x || y` from an EC P-521 JSON Web Key.
fn public_key_from_jwk(jwk: &JsonWebKey) -> Result<VerifyingKey, String> {
    if !jwk.kty.starts_with("EC") || jwk.crv.as_deref() != Some("P-521") {
        return Err(format!("key is {} {:?}, not EC P-521", jwk.kty, jwk.crv));
    }
    let coordinate = |value: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let text = value
            .as_deref()
            .ok_or_else(|| format!("key has no {name}"))?;
        let bytes = URL_SAFE_ANY_PAD
            .decode(text)
            .map_err(|_| format!("{name} is not base64url"))?;
        if bytes.len() > 66 {
            return Err(format!("{name} is {} bytes, more than 66", bytes.len()));
        }
        let mut padded = vec![0u8; 66 - bytes.len()];
        padded.extend_from_slice(&bytes);
        Ok(padded)
    };
    let mut point = vec![0x04];
    point.extend(coordinate(&jwk.x, "x")?);
    point.extend(coordinate(&jwk.y, "y")?);
    VerifyingKey::from_sec1_bytes(&point).map_err(|e| format!("not a P-521 point: {e}"))
}

#[async_trait]
impl Signer for KeyVaultSigner {
    fn verifying_key(&self) -> &VerifyingKey {
        &self.public
    }

    async fn sign_digest(&self, hasher: Sha512) -> Result<Signature, KeyError> {
        let failed = |reason: String, source: Option<reqwest::Error>| KeyError::Sign {
            key: self.key_url.clone(),
            reason,
            source: source.map(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
        };
        let digest = hasher.clone().finalize();
        let body = serde_json::json!({ "alg": "ES512", "value": URL_SAFE_NO_PAD.encode(digest) });
        let response = self
            .http
            .post(format!("{}/sign?api-version={API_VERSION}", self.key_url))
            .bearer_auth(self.tokens.token().await?)
            .json(&body)
            .send()
            .await
            .map_err(|e| failed("no response".into(), Some(e)))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(failed(format!("key vault answered {status}: {text}"), None));
        }
        let result: SignResult = response
            .json()
            .await
            .map_err(|e| failed("bad sign result".into(), Some(e)))?;
        let raw = URL_SAFE_ANY_PAD
            .decode(&result.value)
            .map_err(|_| failed("signature is not base64url".into(), None))?;
        let signature = Signature::from_bytes(&raw)
            .map_err(|e| failed(format!("signature encoding refused: {e}"), None))?;

        // A signature that does not verify under the published key must never leave here.
        self.public
            .verify_digest(hasher, &signature.to_base64())
            .map_err(|e| failed(format!("vault signature does not verify: {e}"), None))?;
        Ok(signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwk_coordinates_shorter_than_66_bytes_are_left_padded() {
        let key = cloudpillar_protocol::signing::SigningKey::generate().expect("key");
        let point = key.verifying_key().to_sec1_bytes();
        let (x, y) = (&point[1..67], &point[67..]);
        let trim = |c: &[u8]| {
            let start = c.iter().position(|&b| b != 0).unwrap_or(c.len());
            URL_SAFE_NO_PAD.encode(&c[start..])
        };
        let jwk = JsonWebKey {
            kty: "EC".into(),
            crv: Some("P-521".into()),
            x: Some(trim(x)),
            y: Some(trim(y)),
        };
        let public = public_key_from_jwk(&jwk).expect("jwk");
        assert_eq!(public.key_id(), key.key_id());
    }

    #[test]
    fn rsa_keys_are_refused() {
        let jwk = JsonWebKey {
            kty: "RSA".into(),
            crv: None,
            x: None,
            y: None,
        };
        assert!(public_key_from_jwk(&jwk).is_err());
    }
}
