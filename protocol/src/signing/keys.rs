//! P-521 signing and verifying keys with their key ids.

use p521::ecdsa::signature::hazmat::PrehashVerifier;
use p521::ecdsa::signature::{DigestSigner, Signer, Verifier};
use p521::elliptic_curve::Generate;
use p521::elliptic_curve::common::getrandom;
use p521::pkcs8::spki::{DecodePublicKey, EncodePublicKey};
use p521::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use super::{Signature, SignatureError, canonical_json};
use crate::encoding::{Base64Error, decode_base64_strict};
use crate::hex::lower_hex;

/// Key material could not be read, written or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyMaterialError {
    /// The private key PEM is neither PKCS#8 (`PRIVATE KEY`) nor SEC1 (`EC PRIVATE KEY`) P-521.
    #[error("private key PEM is not a P-521 PKCS#8 or SEC1 key")]
    ReadPrivateKeyPem {
        /// Decoder error.
        #[source]
        source: p521::elliptic_curve::DecodeError,
    },
    /// The private key could not be written as PKCS#8 PEM.
    #[error("private key could not be written as PKCS#8 PEM")]
    WritePrivateKeyPem {
        /// Encoder error.
        #[source]
        source: p521::pkcs8::Error,
    },
    /// The system random source failed while generating a key.
    #[error("random source failed while generating a key")]
    GenerateKey {
        /// Random source error.
        #[source]
        source: getrandom::Error,
    },
    /// The bytes are not a SEC1 P-521 public point.
    #[error("public key is not a SEC1 P-521 point ({length} bytes)")]
    ReadPublicKey {
        /// Length of the bytes given.
        length: usize,
        /// Library error.
        #[source]
        source: p521::ecdsa::Error,
    },
    /// The public key text is not strict base64.
    #[error("public key text is not strict base64")]
    ReadPublicKeyBase64 {
        /// Decoder error.
        #[source]
        source: Base64Error,
    },
    /// The public key PEM is not a P-521 `PUBLIC KEY` (SubjectPublicKeyInfo).
    #[error("public key PEM is not a P-521 SubjectPublicKeyInfo")]
    ReadPublicKeyPem {
        /// Decoder error.
        #[source]
        source: p521::pkcs8::spki::Error,
    },
    /// The public key could not be written as PEM.
    #[error("public key could not be written as PEM")]
    WritePublicKeyPem {
        /// Encoder error.
        #[source]
        source: p521::pkcs8::spki::Error,
    },
}

/// A P-521 private key that signs with ECDSA and SHA-512 (RFC 6979 deterministic nonces).
#[derive(Clone)]
pub struct SigningKey {
    inner: p521::ecdsa::SigningKey,
    verifying: VerifyingKey,
}

impl std::fmt::Debug for SigningKey {
    /// Shows the key id only, never the secret.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .finish()
    }
}

impl SigningKey {
    /// A new random key from the system random source.
    pub fn generate() -> Result<Self, KeyMaterialError> {
        let inner = p521::ecdsa::SigningKey::try_generate()
            .map_err(|source| KeyMaterialError::GenerateKey { source })?;
        Ok(Self::from_inner(inner))
    }

    /// Reads a PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`) PEM P-521 key.
    pub fn from_pem(text: &str) -> Result<Self, KeyMaterialError> {
        let secret = p521::SecretKey::from_pem(text)
            .map_err(|source| KeyMaterialError::ReadPrivateKeyPem { source })?;
        Ok(Self::from_inner(p521::ecdsa::SigningKey::from(secret)))
    }

    /// Writes the key as PKCS#8 PEM with LF line endings. The text is a secret.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyMaterialError> {
        let pem = self
            .inner
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|source| KeyMaterialError::WritePrivateKeyPem { source })?;
        Ok(pem.as_str().to_owned())
    }

    fn from_inner(inner: p521::ecdsa::SigningKey) -> Self {
        let verifying = VerifyingKey::from_inner(*inner.verifying_key());
        Self { inner, verifying }
    }

    /// The matching public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    /// Key id of the matching public key (see [`VerifyingKey::key_id`]).
    pub fn key_id(&self) -> &str {
        self.verifying.key_id()
    }

    /// Signs `message` (hashed with SHA-512).
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature::from_inner(self.inner.sign(message))
    }

    /// Signs the canonical bytes of a JSON value (see [`canonical_json`]).
    pub fn sign_json(&self, value: &Value) -> Signature {
        self.sign(&canonical_json(value))
    }

    /// Signs a blob hashed piece by piece: feed the blob to `hasher`, then pass it here.
    /// The result equals [`SigningKey::sign`] over the whole blob.
    pub fn sign_digest(&self, hasher: Sha512) -> Signature {
        // The library asks for a closure that fills a fresh digest; hand it the state so far.
        Signature::from_inner(self.inner.sign_digest(|digest: &mut Sha512| {
            *digest = hasher.clone();
        }))
    }
}

/// A P-521 public key with its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    inner: p521::ecdsa::VerifyingKey,
    key_id: String,
}

impl VerifyingKey {
    fn from_inner(inner: p521::ecdsa::VerifyingKey) -> Self {
        let uncompressed = inner.to_sec1_point(false);
        let digest = Sha256::digest(uncompressed.as_bytes());
        let key_id = lower_hex(&digest[..8]);
        Self { inner, key_id }
    }

    /// Reads a SEC1 point, uncompressed (`04 || x || y`, 133 bytes) or compressed.
    pub fn from_sec1_bytes(bytes: &[u8]) -> Result<Self, KeyMaterialError> {
        p521::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
            .map(Self::from_inner)
            .map_err(|source| KeyMaterialError::ReadPublicKey {
                length: bytes.len(),
                source,
            })
    }

    /// Reads strict base64 of a SEC1 point.
    pub fn from_base64(text: &str) -> Result<Self, KeyMaterialError> {
        let bytes = decode_base64_strict("publicKey", text)
            .map_err(|source| KeyMaterialError::ReadPublicKeyBase64 { source })?;
        Self::from_sec1_bytes(&bytes)
    }

    /// Reads a `BEGIN PUBLIC KEY` (SubjectPublicKeyInfo) PEM.
    pub fn from_pem(text: &str) -> Result<Self, KeyMaterialError> {
        p521::ecdsa::VerifyingKey::from_public_key_pem(text)
            .map(Self::from_inner)
            .map_err(|source| KeyMaterialError::ReadPublicKeyPem { source })
    }

    /// Writes a `BEGIN PUBLIC KEY` PEM with LF line endings.
    pub fn to_pem(&self) -> Result<String, KeyMaterialError> {
        self.inner
            .to_public_key_pem(LineEnding::LF)
            .map_err(|source| KeyMaterialError::WritePublicKeyPem { source })
    }

    /// The uncompressed SEC1 point: `04 || x || y`, 133 bytes.
    pub fn to_sec1_bytes(&self) -> Vec<u8> {
        self.inner.to_sec1_point(false).as_bytes().to_vec()
    }

    /// First 16 lowercase hex digits of SHA-256 over the uncompressed SEC1 point.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Checks a parsed signature over `message`.
    pub fn verify_signature(
        &self,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        self.inner
            .verify(message, signature.inner())
            .map_err(|_| self.bad_signature())
    }

    /// Checks base64 signature text (raw or DER) over `message`.
    pub fn verify(&self, message: &[u8], text: &str) -> Result<(), SignatureError> {
        self.verify_signature(message, &Signature::from_base64(text)?)
    }

    /// Checks base64 signature text over the canonical bytes of a JSON value.
    pub fn verify_json(&self, value: &Value, text: &str) -> Result<(), SignatureError> {
        self.verify(&canonical_json(value), text)
    }

    /// Checks a signature over a blob hashed piece by piece into `hasher`.
    pub fn verify_digest(&self, hasher: Sha512, text: &str) -> Result<(), SignatureError> {
        let signature = Signature::from_base64(text)?;
        self.verify_prehashed(&hasher.finalize(), &signature)
    }

    pub(crate) fn verify_prehashed(
        &self,
        digest: &[u8],
        signature: &Signature,
    ) -> Result<(), SignatureError> {
        self.inner
            .verify_prehash(digest, signature.inner())
            .map_err(|_| self.bad_signature())
    }

    fn bad_signature(&self) -> SignatureError {
        SignatureError::BadSignature {
            key_id: Some(self.key_id.clone()),
        }
    }
}
