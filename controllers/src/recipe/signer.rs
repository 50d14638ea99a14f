//! Who signs recipes: a P-521 key from a Kubernetes Secret by default, or any [`Signer`].

use std::fmt::Debug;

use async_trait::async_trait;
use cloudpillar_protocol::signing::{SignedText, SigningKey};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

use crate::config::SecretLocation;

/// A signature over a recipe's canonical `changeSpec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeSignature {
    /// Id of the key that signed.
    pub key_id: String,
    /// `desired.changeSign` text: `kid:base64` of the raw 132-byte ECDSA P-521 signature.
    pub text: String,
}

/// Signs canonical recipe bytes with ECDSA P-521 / SHA-512.
#[async_trait]
pub trait Signer: Send + Sync + Debug {
    /// Signs `canonical` (the canonical JSON of a `changeSpec`).
    async fn sign(&self, canonical: &[u8]) -> Result<RecipeSignature, SignError>;
}

/// Signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// No signing key is configured.
    #[error("no recipe signing key is configured")]
    NotConfigured,
    /// The Secret holding the key could not be read.
    #[error("could not read signing key secret {secret}")]
    ReadSecret {
        /// `namespace/name` of the Secret.
        secret: String,
        /// Client error.
        #[source]
        source: kube::Error,
    },
    /// The Secret lacks the key.
    #[error("signing key secret {secret} has no key {key}")]
    MissingKey {
        /// `namespace/name` of the Secret.
        secret: String,
        /// The data key looked for.
        key: String,
    },
    /// The key is not a P-521 private key in PEM.
    #[error("signing key in secret {secret} is not a P-521 PEM private key")]
    BadKey {
        /// `namespace/name` of the Secret.
        secret: String,
        /// Parse error.
        #[source]
        source: cloudpillar_protocol::signing::KeyMaterialError,
    },
    /// Another signer (for example a remote key holder) failed.
    #[error("signer failed")]
    Remote {
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Signs with the PEM P-521 key in a Secret key, re-read when the Secret changes.
pub struct SecretSigner {
    client: Client,
    location: SecretLocation,
    cached: Mutex<Option<(Option<String>, SigningKey)>>,
}

impl Debug for SecretSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSigner")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl SecretSigner {
    /// A signer over the key at `location`.
    pub fn new(client: Client, location: SecretLocation) -> Self {
        Self {
            client,
            location,
            cached: Mutex::new(None),
        }
    }

    async fn key(&self) -> Result<SigningKey, SignError> {
        let secret_name = format!("{}/{}", self.location.namespace, self.location.name);
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.location.namespace);
        let secret =
            api.get(&self.location.name)
                .await
                .map_err(|source| SignError::ReadSecret {
                    secret: secret_name.clone(),
                    source,
                })?;
        let mut cached = self.cached.lock().await;
        if let Some((version, key)) = cached.as_ref()
            && *version == secret.resource_version()
        {
            return Ok(key.clone());
        }
        let missing = || SignError::MissingKey {
            secret: secret_name.clone(),
            key: self.location.key.clone(),
        };
        let pem = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&self.location.key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(missing)?;
        let key = SigningKey::from_pem(&pem).map_err(|source| SignError::BadKey {
            secret: secret_name,
            source,
        })?;
        *cached = Some((secret.resource_version(), key.clone()));
        Ok(key)
    }
}

#[async_trait]
impl Signer for SecretSigner {
    async fn sign(&self, canonical: &[u8]) -> Result<RecipeSignature, SignError> {
        let key = self.key().await?;
        let signature = key.sign(canonical);
        Ok(RecipeSignature {
            key_id: key.key_id().to_owned(),
            text: SignedText::new(&key, &signature).to_string(),
        })
    }
}

/// A signer with a key held in memory (tests, single-binary setups).
#[derive(Debug, Clone)]
pub struct KeySigner(pub SigningKey);

#[async_trait]
impl Signer for KeySigner {
    async fn sign(&self, canonical: &[u8]) -> Result<RecipeSignature, SignError> {
        let signature = self.0.sign(canonical);
        Ok(RecipeSignature {
            key_id: self.0.key_id().to_owned(),
            text: SignedText::new(&self.0, &signature).to_string(),
        })
    }
}

/// Used when no key is configured: every recipe gets `Signed=False, NotConfigured`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSigner;

#[async_trait]
impl Signer for NoSigner {
    async fn sign(&self, _canonical: &[u8]) -> Result<RecipeSignature, SignError> {
        Err(SignError::NotConfigured)
    }
}
