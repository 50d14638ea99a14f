//! Signing keys held in this process: from a PEM file or a Kubernetes Secret.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use cloudpillar_protocol::signing::{Signature, SigningKey, VerifyingKey};
use k8s_openapi::api::core::v1::Secret;
use sha2::Sha512;

use super::{KeyError, KeyHolder, Signer};

/// Field of the signing-key Secret holding the active private key (PEM).
pub const SECRET_ACTIVE_KEY: &str = "signing.pem";
/// Prefix of Secret fields holding retired keys (public or private PEM) that stay trusted.
const SECRET_RETIRED_PREFIX: &str = "retired-";

/// A P-521 private key in memory.
#[derive(Debug, Clone)]
pub struct LocalSigner {
    key: SigningKey,
}

impl LocalSigner {
    /// Wraps a key.
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    /// Reads a PKCS#8 or SEC1 PEM private key; `origin` names it in errors.
    pub fn from_pem(origin: &str, pem: &[u8]) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|source| KeyError::Load {
            origin: origin.to_owned(),
            source: Box::new(source),
        })?;
        let key = SigningKey::from_pem(text).map_err(|source| KeyError::Material {
            origin: origin.to_owned(),
            source,
        })?;
        Ok(Self { key })
    }

    /// Reads a PEM private key file.
    pub async fn from_file(path: &Path) -> Result<Self, KeyError> {
        let origin = path.display().to_string();
        let pem = tokio::fs::read(path)
            .await
            .map_err(|source| KeyError::Load {
                origin: origin.clone(),
                source: Box::new(source),
            })?;
        Self::from_pem(&origin, &pem)
    }
}

#[async_trait]
impl Signer for LocalSigner {
    fn verifying_key(&self) -> &VerifyingKey {
        self.key.verifying_key()
    }

    async fn sign_digest(&self, hasher: Sha512) -> Result<Signature, KeyError> {
        Ok(self.key.sign_digest(hasher))
    }
}

/// Reads a retired key: a public key PEM, or a private key PEM whose public half is kept.
pub fn retired_key(origin: &str, pem: &[u8]) -> Result<VerifyingKey, KeyError> {
    let text = std::str::from_utf8(pem).map_err(|source| KeyError::Load {
        origin: origin.to_owned(),
        source: Box::new(source),
    })?;
    if let Ok(key) = VerifyingKey::from_pem(text) {
        return Ok(key);
    }
    SigningKey::from_pem(text)
        .map(|key| key.verifying_key().clone())
        .map_err(|source| KeyError::Material {
            origin: origin.to_owned(),
            source,
        })
}

impl KeyHolder {
    /// A holder from PEM files: the active private key and retired keys still trusted.
    pub async fn from_files(active: &Path, retired: &[&Path]) -> Result<Self, KeyError> {
        let mut holder = Self::new(Arc::new(LocalSigner::from_file(active).await?));
        for path in retired {
            let origin = path.display().to_string();
            let pem = tokio::fs::read(path)
                .await
                .map_err(|source| KeyError::Load {
                    origin: origin.clone(),
                    source: Box::new(source),
                })?;
            holder = holder.with_retired(retired_key(&origin, &pem)?);
        }
        Ok(holder)
    }

    /// A holder from a Secret's data: `signing.pem` is the active private key, every
    /// `retired-*.pem` field a retired key still trusted. `origin` names the Secret in errors.
    pub fn from_secret_data(origin: &str, secret: &Secret) -> Result<Self, KeyError> {
        let data = secret.data.clone().unwrap_or_default();
        let active = data.get(SECRET_ACTIVE_KEY).ok_or_else(|| KeyError::Load {
            origin: origin.to_owned(),
            source: format!("the Secret has no {SECRET_ACTIVE_KEY} field").into(),
        })?;
        let field = |name: &str| format!("{origin} field {name}");
        let signer = LocalSigner::from_pem(&field(SECRET_ACTIVE_KEY), &active.0)?;
        let mut holder = Self::new(Arc::new(signer));
        for (name, value) in &data {
            if name.starts_with(SECRET_RETIRED_PREFIX) {
                holder = holder.with_retired(retired_key(&field(name), &value.0)?);
            }
        }
        Ok(holder)
    }

    /// A holder from the Kubernetes Secret `namespace/name` (see [`Self::from_secret_data`]).
    pub async fn from_secret(
        client: kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Self, KeyError> {
        let origin = format!("Secret {namespace}/{name}");
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client, namespace);
        let secret = secrets.get(name).await.map_err(|source| KeyError::Load {
            origin: origin.clone(),
            source: Box::new(source),
        })?;
        Self::from_secret_data(&origin, &secret)
    }
}
