//! Trusted keys for verification across key rotations, and signature text naming its key.

use serde_json::Value;
use sha2::{Digest, Sha512};

use super::{EncodingProblem, Signature, SignatureError, SigningKey, VerifyingKey, canonical_json};

/// Signature text, optionally naming the key that made it.
///
/// Convention: `kid:base64`, where `kid` is the signer's 16 lowercase hex digit key id and
/// `base64` the raw (or DER) signature, for example `3f2a9c0d11e4b765:AKJDxI...`. Base64 never
/// contains `:`, so text without a colon is a bare signature that names no key; a verifier then
/// tries every trusted key. Writers that know their key id should always name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedText {
    /// Key id of the signer, when named.
    pub key_id: Option<String>,
    /// Base64 of the signature.
    pub signature: String,
}

impl SignedText {
    /// Text for `signature`, naming the key that made it.
    pub fn new(key: &SigningKey, signature: &Signature) -> Self {
        Self {
            key_id: Some(key.key_id().to_owned()),
            signature: signature.to_base64(),
        }
    }

    /// Splits `kid:base64` text; checks the key id's form but not the base64.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let Some((key_id, signature)) = text.split_once(':') else {
            return Ok(Self {
                key_id: None,
                signature: text.to_owned(),
            });
        };
        let well_formed = key_id.len() == 16
            && key_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(SignatureError::BadSignatureEncoding {
                problem: EncodingProblem::KeyId {
                    key_id: key_id.to_owned(),
                },
            });
        }
        Ok(Self {
            key_id: Some(key_id.to_owned()),
            signature: signature.to_owned(),
        })
    }
}

impl std::fmt::Display for SignedText {
    /// Writes `kid:base64`, or the bare base64 when no key is named.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key_id {
            Some(key_id) => write!(formatter, "{key_id}:{}", self.signature),
            None => formatter.write_str(&self.signature),
        }
    }
}

/// The public keys a verifier accepts; several at once while keys rotate.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: Vec<VerifyingKey>,
}

impl TrustStore {
    /// An empty store, which trusts nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key` (replacing a key with the same id).
    pub fn add(&mut self, key: VerifyingKey) {
        self.keys.retain(|known| known.key_id() != key.key_id());
        self.keys.push(key);
    }

    /// Stops trusting the key with `key_id`; true when it was there.
    pub fn remove(&mut self, key_id: &str) -> bool {
        let before = self.keys.len();
        self.keys.retain(|known| known.key_id() != key_id);
        self.keys.len() != before
    }

    /// The trusted key with `key_id`.
    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.iter().find(|known| known.key_id() == key_id)
    }

    /// Ids of every trusted key, oldest first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(VerifyingKey::key_id)
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks signature text (`kid:base64` or bare base64) over `message`; returns the id of the
    /// key that verified it.
    pub fn verify(&self, message: &[u8], text: &str) -> Result<&str, SignatureError> {
        let digest = Sha512::digest(message);
        self.verify_prehashed(&digest, text)
    }

    /// Checks signature text over the canonical bytes of a JSON value.
    pub fn verify_json(&self, value: &Value, text: &str) -> Result<&str, SignatureError> {
        self.verify(&canonical_json(value), text)
    }

    /// Checks signature text over a blob hashed piece by piece into `hasher`.
    pub fn verify_digest(&self, hasher: Sha512, text: &str) -> Result<&str, SignatureError> {
        self.verify_prehashed(&hasher.finalize(), text)
    }

    fn verify_prehashed(&self, digest: &[u8], text: &str) -> Result<&str, SignatureError> {
        let signed = SignedText::parse(text)?;
        let signature = Signature::from_base64(&signed.signature)?;
        match signed.key_id {
            Some(key_id) => {
                let key = self
                    .get(&key_id)
                    .ok_or(SignatureError::UnknownKeyId { key_id })?;
                key.verify_prehashed(digest, &signature)?;
                Ok(key.key_id())
            }
            None => self
                .keys
                .iter()
                .find(|key| key.verify_prehashed(digest, &signature).is_ok())
                .map(VerifyingKey::key_id)
                .ok_or(SignatureError::BadSignature { key_id: None }),
        }
    }
}
