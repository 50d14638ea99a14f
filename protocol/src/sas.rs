//! Shared access signature (SAS) tokens as IoT Hub and DPS accept them.
//!
//! A token reads `SharedAccessSignature sr={resource}&sig={signature}&se={expiry}` with an
//! optional `&skn={policy}`. Every field is URL-encoded, keeping only RFC 3986 unreserved
//! characters. The signature is the base64 HMAC-SHA256 of `{encoded resource}\n{expiry}`,
//! keyed with the base64-decoded shared access key; expiry counts seconds since 1970.
//!
//! Devices, the edge hub and the operator all sign through these functions, so a token one
//! part makes is a token every other part checks the same way.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

/// Characters a token field keeps as they are: RFC 3986 unreserved.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A key could not be used for signing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The shared access key is not base64.
    #[error("failed to decode the shared access key as base64")]
    DecodeKey {
        /// What the decoder found.
        #[source]
        source: base64::DecodeError,
    },
    /// HMAC refused the key (it takes keys of any length, so this is not expected).
    #[error("failed to key HMAC-SHA256 with the shared access key")]
    KeyHmac {
        /// What HMAC reported.
        #[source]
        source: hmac::digest::InvalidLength,
    },
}

/// URL-encodes one token field (resource URI, signature or policy name).
pub fn encode_field(text: &str) -> String {
    utf8_percent_encode(text, UNRESERVED).to_string()
}

/// The bytes of a base64 shared access key (surrounding whitespace ignored).
pub fn decode_key(key_b64: &str) -> Result<Vec<u8>, SasError> {
    STANDARD
        .decode(key_b64.trim())
        .map_err(|source| SasError::DecodeKey { source })
}

fn mac(key_b64: &str) -> Result<Hmac<Sha256>, SasError> {
    let key = decode_key(key_b64)?;
    Hmac::<Sha256>::new_from_slice(&key).map_err(|source| SasError::KeyHmac { source })
}

/// Base64 HMAC-SHA256 of `message` under the base64 `key_b64`.
pub fn hmac_base64(key_b64: &str, message: &[u8]) -> Result<String, SasError> {
    let mut mac = mac(key_b64)?;
    mac.update(message);
    Ok(STANDARD.encode(mac.finalize().into_bytes()))
}

/// The text a token signs: `{encoded_resource}\n{expiry}`.
fn signed_text(encoded_resource: &str, expiry: u64) -> String {
    format!("{encoded_resource}\n{expiry}")
}

/// The base64 signature of a token for `encoded_resource` (already URL-encoded, as it
/// stands after `sr=`) expiring at `expiry`.
pub fn signature(key_b64: &str, encoded_resource: &str, expiry: u64) -> Result<String, SasError> {
    hmac_base64(key_b64, signed_text(encoded_resource, expiry).as_bytes())
}

/// Whether `signature` (decoded bytes) signs `encoded_resource` and `expiry` under
/// `key_b64`, compared in constant time.
pub fn signature_matches(
    key_b64: &str,
    encoded_resource: &str,
    expiry: u64,
    signature: &[u8],
) -> Result<bool, SasError> {
    let mut mac = mac(key_b64)?;
    mac.update(signed_text(encoded_resource, expiry).as_bytes());
    Ok(mac.verify_slice(signature).is_ok())
}

/// A token for `resource` (not encoded, e.g. `myhub.azure-devices.net/devices/dev-1`) valid
/// until `expiry`, naming the policy `key_name` when given.
pub fn token(
    key_b64: &str,
    resource: &str,
    expiry: u64,
    key_name: Option<&str>,
) -> Result<String, SasError> {
    token_signed_by(resource, expiry, key_name, |text| {
        hmac_base64(key_b64, text)
    })
}

/// Like [`token`], with the signature made by `sign`: the base64 HMAC-SHA256 of the text it
/// is given, computed wherever the key is held (a TPM, for instance).
pub fn token_signed_by<E>(
    resource: &str,
    expiry: u64,
    key_name: Option<&str>,
    sign: impl FnOnce(&[u8]) -> Result<String, E>,
) -> Result<String, E> {
    let resource = encode_field(resource);
    let signature = sign(signed_text(&resource, expiry).as_bytes())?;
    let mut token = format!(
        "SharedAccessSignature sr={resource}&sig={}&se={expiry}",
        encode_field(&signature)
    );
    if let Some(name) = key_name {
        token.push_str("&skn=");
        token.push_str(&encode_field(name));
    }
    Ok(token)
}

/// A device key derived from a DPS enrollment-group key: the base64 HMAC-SHA256 of the
/// registration id under the decoded group key.
pub fn derive_device_key(group_key_b64: &str, registration_id: &str) -> Result<String, SasError> {
    hmac_base64(group_key_b64, registration_id.as_bytes())
}
