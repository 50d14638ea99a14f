//! Canonical JSON and ECDSA P-521 / SHA-512 signatures (field cases F14, F15).
//!
//! What gets signed for a recipe is [`canonical_json`] of its `changeSpec`. Signatures travel
//! as base64 text of the raw form: `r || s`, each scalar left-padded with zeros to 66 bytes, so
//! always 132 bytes. Verification also takes DER (`30 ...`), told apart by the first byte since
//! a raw P-521 signature always starts with `00` or `01`. Both forms are parsed only by the
//! `p521`/`ecdsa` library, never by length, and nothing is ever padded by guesswork.
//!
//! Several trusted keys may be active during a key rotation: see [`TrustStore`] and the
//! `kid:base64` convention of [`SignedText`].

mod keys;
mod trust;

pub use keys::{KeyMaterialError, SigningKey, VerifyingKey};
pub use trust::{SignedText, TrustStore};

use p521::ecdsa::Signature as EcdsaSignature;
use serde_json::{Map, Value};

use crate::encoding::{Base64Error, decode_base64_strict, encode_base64};

/// Length of a raw `r || s` P-521 signature.
pub const RAW_SIGNATURE_BYTES: usize = 132;

/// Canonical bytes of a JSON value, the input of every JSON signature.
///
/// The rule: object members sorted by key, comparing keys as UTF-8 byte strings; no whitespace
/// outside strings; strings escaped and numbers written exactly as `serde_json` writes them
/// (integers as digits, floats in their shortest round-trip form); arrays keep their order.
/// Two documents that parse to the same `serde_json::Value` give the same bytes.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    sorted(value).to_string().into_bytes()
}

/// A copy whose objects list their members in key order (also when `serde_json` keeps
/// insertion order, as it does with its `preserve_order` feature).
fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(members) => {
            let mut keys: Vec<&String> = members.keys().collect();
            keys.sort();
            let mut ordered = Map::new();
            for key in keys {
                if let Some(member) = members.get(key) {
                    ordered.insert(key.clone(), sorted(member));
                }
            }
            Value::Object(ordered)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// An ECDSA P-521 signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature(EcdsaSignature);

impl Signature {
    /// Raw `r || s`, always [`RAW_SIGNATURE_BYTES`] long.
    pub fn to_raw(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }

    /// DER encoding (`SEQUENCE { INTEGER r, INTEGER s }`), 137 to 139 bytes.
    pub fn to_der(&self) -> Vec<u8> {
        self.0.to_der().as_bytes().to_vec()
    }

    /// Base64 of the raw form: the text stored in `changeSign` and `sign` fields.
    pub fn to_base64(&self) -> String {
        encode_base64(&self.to_raw())
    }

    /// Reads raw (132 bytes starting `00`/`01`) or DER (starting `30`) bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        let bad = |problem| SignatureError::BadSignatureEncoding { problem };
        match bytes.first() {
            Some(0x00 | 0x01) if bytes.len() == RAW_SIGNATURE_BYTES => {
                EcdsaSignature::from_slice(bytes)
                    .map(Self)
                    .map_err(|source| bad(EncodingProblem::Raw { source }))
            }
            Some(0x30) => EcdsaSignature::from_der(bytes).map(Self).map_err(|source| {
                bad(EncodingProblem::Der {
                    length: bytes.len(),
                    source,
                })
            }),
            first => Err(bad(EncodingProblem::UnknownForm {
                length: bytes.len(),
                first: first.copied(),
            })),
        }
    }

    /// Reads strict base64 text of the raw or DER form.
    pub fn from_base64(text: &str) -> Result<Self, SignatureError> {
        let bytes = decode_base64_strict("signature", text).map_err(|source| {
            SignatureError::BadSignatureEncoding {
                problem: EncodingProblem::Base64 { source },
            }
        })?;
        Self::from_bytes(&bytes)
    }

    pub(crate) fn inner(&self) -> &EcdsaSignature {
        &self.0
    }

    pub(crate) fn from_inner(signature: EcdsaSignature) -> Self {
        Self(signature)
    }
}

impl std::fmt::Display for Signature {
    /// Writes the base64 text of the raw form.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.to_base64())
    }
}

/// A signature could not be checked, or did not verify.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The signature text or bytes are not a well-formed P-521 signature.
    #[error("signature encoding refused")]
    BadSignatureEncoding {
        /// What was wrong.
        #[source]
        problem: EncodingProblem,
    },
    /// The signature is well formed but does not match the message and key.
    #[error("signature does not verify (key {})", key_id.as_deref().unwrap_or("any trusted"))]
    BadSignature {
        /// Key tried, or `None` when every trusted key was tried.
        key_id: Option<String>,
    },
    /// The signature names a key the verifier does not trust.
    #[error("no trusted key has id {key_id}")]
    UnknownKeyId {
        /// The key id named by the signature.
        key_id: String,
    },
}

impl SignatureError {
    /// Stable machine-readable code for reports: `bad_signature_encoding`, `bad_signature` or
    /// `unknown_key_id`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadSignatureEncoding { .. } => "bad_signature_encoding",
            Self::BadSignature { .. } => "bad_signature",
            Self::UnknownKeyId { .. } => "unknown_key_id",
        }
    }
}

/// Why signature bytes or text were refused.
#[derive(Debug, thiserror::Error)]
pub enum EncodingProblem {
    /// The text is not strict base64.
    #[error("signature text is not strict base64")]
    Base64 {
        /// Decoder error.
        #[source]
        source: Base64Error,
    },
    /// Neither a 132-byte raw signature nor DER.
    #[error("{length} bytes starting with {first:02x?} are neither raw r||s (132 bytes) nor DER")]
    UnknownForm {
        /// Length found.
        length: usize,
        /// First byte, if any.
        first: Option<u8>,
    },
    /// 132 bytes whose `r` or `s` is zero or not below the group order.
    #[error("raw r||s holds a scalar outside [1, n-1]")]
    Raw {
        /// Library error.
        #[source]
        source: p521::ecdsa::Error,
    },
    /// DER the library refused (bad structure, trailing bytes, scalar out of range).
    #[error("DER signature of {length} bytes refused")]
    Der {
        /// Length found.
        length: usize,
        /// Library error.
        #[source]
        source: p521::ecdsa::Error,
    },
    /// A `kid:` prefix that is not 16 lowercase hex digits.
    #[error("key id {key_id:?} is not 16 lowercase hex digits")]
    KeyId {
        /// The prefix found.
        key_id: String,
    },
}
