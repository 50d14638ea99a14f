//! The key holder: signs recipes and blobs with ECDSA P-521 / SHA-512.
//!
//! Signing keys come from a PEM file or a Kubernetes Secret ([`LocalSigner`]) or stay in Azure
//! Key Vault ([`KeyVaultSigner`], ES512). Canonical JSON, signature encoding, key ids and the
//! `kid:base64` signature text are the protocol crate's; this module only decides which key
//! signs and streams blobs into the digest.
//!
//! Key rotation: the holder signs with one active key and keeps publishing retired public keys,
//! so agents holding the published set verify old signatures (which name the old key id) and
//! new ones (which name the new key id) alike.

mod http;
mod keyvault;
mod local;

pub use http::{
    KeyEntry, PublishedKeys, SignAccess, SignBlobRequest, SignRecipeRequest, SignResponse, router,
};
pub use keyvault::{FileToken, KeyVaultSigner, StaticToken, TokenProvider};
pub use local::{LocalSigner, SECRET_ACTIVE_KEY, retired_key};

use std::sync::Arc;

use async_trait::async_trait;
use cloudpillar_protocol::signing::{
    KeyMaterialError, Signature, SignedText, TrustStore, VerifyingKey, canonical_json,
};
use futures::TryStreamExt;
use serde_json::Value;
use sha2::{Digest, Sha512};

use crate::blob::{BlobError, Container};

/// Errors of the key holder.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key material could not be read.
    #[error("loading signing key from {origin} failed")]
    Load {
        /// File, Secret or vault key the material came from.
        origin: String,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Key material is not a P-521 key.
    #[error("key material from {origin} is not a P-521 key")]
    Material {
        /// File, Secret or vault key the material came from.
        origin: String,
        /// Parse error.
        #[source]
        source: KeyMaterialError,
    },
    /// The remote signer refused or failed.
    #[error("signing with {key} failed: {reason}")]
    Sign {
        /// Key name or id.
        key: String,
        /// What went wrong.
        reason: String,
        /// Underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The blob to sign could not be read.
    #[error("reading blob to sign failed")]
    ReadBlob {
        /// Blob error.
        #[source]
        source: Box<BlobError>,
    },
}

/// Something that signs SHA-512 digests with a P-521 key.
#[async_trait]
pub trait Signer: Send + Sync + std::fmt::Debug {
    /// The public key of the signing key.
    fn verifying_key(&self) -> &VerifyingKey;

    /// Signs the digest accumulated in `hasher`.
    async fn sign_digest(&self, hasher: Sha512) -> Result<Signature, KeyError>;
}

/// A signature with what was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// `kid:base64` text naming the signing key (store it as `changeSign` or `sign`).
    pub text: String,
    /// Key id of the signing key.
    pub key_id: String,
    /// SHA-512 of the signed bytes, lowercase hex.
    pub sha512: String,
    /// Number of signed bytes.
    pub size: u64,
}

/// Signs with the active key and publishes every trusted public key.
#[derive(Debug, Clone)]
pub struct KeyHolder {
    active: Arc<dyn Signer>,
    trusted: TrustStore,
}

impl KeyHolder {
    /// A holder signing with `active` and trusting only it.
    pub fn new(active: Arc<dyn Signer>) -> Self {
        let mut trusted = TrustStore::new();
        trusted.add(active.verifying_key().clone());
        Self { active, trusted }
    }

    /// Keeps trusting (and publishing) a retired key, so signatures it made stay valid.
    pub fn with_retired(mut self, key: VerifyingKey) -> Self {
        self.trusted.add(key);
        self
    }

    /// Key id of the key new signatures use.
    pub fn active_key_id(&self) -> &str {
        self.active.verifying_key().key_id()
    }

    /// Every key a verifier should trust, the active one included.
    pub fn trust_store(&self) -> &TrustStore {
        &self.trusted
    }

    /// Signs the canonical JSON of a recipe's `changeSpec` (`SignRecipe`).
    pub async fn sign_recipe(&self, change_spec: &Value) -> Result<Signed, KeyError> {
        let bytes = canonical_json(change_spec);
        let mut hasher = Sha512::new();
        hasher.update(&bytes);
        self.finish(hasher, bytes.len() as u64).await
    }

    /// Signs a blob of any size, hashing it as it streams by (`SignBlob`).
    pub async fn sign_blob(&self, container: &Container, path: &str) -> Result<Signed, KeyError> {
        let mut pieces =
            container
                .read_stream(path)
                .await
                .map_err(|source| KeyError::ReadBlob {
                    source: Box::new(source),
                })?;
        let mut hasher = Sha512::new();
        let mut size = 0u64;
        while let Some(piece) = pieces
            .try_next()
            .await
            .map_err(|source| KeyError::ReadBlob {
                source: Box::new(source),
            })?
        {
            hasher.update(&piece);
            size += piece.len() as u64;
        }
        let signed = self.finish(hasher, size).await?;
        let key = &signed.key_id;
        tracing::info!(container = container.name(), path, size, %key, "blob signed");
        Ok(signed)
    }

    async fn finish(&self, hasher: Sha512, size: u64) -> Result<Signed, KeyError> {
        let sha512 = hex::encode(hasher.clone().finalize());
        let signature = self.active.sign_digest(hasher).await?;
        let key_id = self.active_key_id().to_owned();
        let text = SignedText {
            key_id: Some(key_id.clone()),
            signature: signature.to_base64(),
        }
        .to_string();
        Ok(Signed {
            text,
            key_id,
            sha512,
            size,
        })
    }
}
