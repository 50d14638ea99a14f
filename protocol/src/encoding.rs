//! Strict base64 for signatures, chunks and keys (field case F16).
//!
//! Policy: the standard alphabet (`+` and `/`), canonical `=` padding, no whitespace, no
//! URL-safe letters and no stray trailing bits, exactly as `base64`'s `STANDARD` engine decodes.
//! So every byte string has one accepted spelling. Anything keyed on base64 content (dedup,
//! identity) must still compare the decoded bytes, never the text.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A base64 field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field} is not canonical standard base64")]
pub struct Base64Error {
    /// Name of the field that held the text.
    pub field: String,
    /// What the decoder found.
    #[source]
    pub source: base64::DecodeError,
}

/// Decodes `text` under the strict policy; errors name `field`.
pub fn decode_base64_strict(field: &str, text: &str) -> Result<Vec<u8>, Base64Error> {
    STANDARD.decode(text).map_err(|source| Base64Error {
        field: field.to_owned(),
        source,
    })
}

/// Encodes `bytes` as canonical standard base64 with padding.
pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Serde helpers for a `Vec<u8>` field carried as strict base64 text
/// (`#[serde(with = "encoding::base64_bytes")]`).
pub mod base64_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Writes the bytes as canonical standard base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::encode_base64(bytes))
    }

    /// Reads strict base64; the error message names the text's role as `data`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        super::decode_base64_strict("data", &text).map_err(D::Error::custom)
    }
}
