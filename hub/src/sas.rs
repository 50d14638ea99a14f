//! Shared access signatures as IoT Hub and DPS use them.
//!
//! Token: `SharedAccessSignature sr={url-encoded resource URI}&sig={url-encoded base64
//! signature}&se={expiry, seconds since 1970}[&skn={policy name}]`. Signing is
//! [`cloudpillar_protocol::sas`], shared with the agent and the operator; this module parses
//! tokens and decides what they grant.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloudpillar_protocol::sas as signing;
use percent_encoding::percent_decode_str;
use thiserror::Error;

/// Clock skew Azure tolerates past a token's expiry, in seconds.
pub const EXPIRY_TOLERANCE_SECS: u64 = 300;

/// Why a token was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SasError {
    /// The text is not a `SharedAccessSignature` token with `sr`, `sig` and `se`.
    #[error("malformed shared access signature: {0}")]
    Malformed(&'static str),
    /// The token expired more than the tolerance ago.
    #[error("token expired at {expiry}, now {now}")]
    Expired {
        /// The token's `se`.
        expiry: u64,
        /// The hub's clock.
        now: u64,
    },
    /// The token was issued for another resource.
    #[error("token resource {resource} does not grant {wanted}")]
    WrongResource {
        /// The decoded `sr`.
        resource: String,
        /// What the caller needs.
        wanted: String,
    },
    /// The signature matches none of the keys.
    #[error("signature does not match")]
    BadSignature,
    /// A key is not valid base64.
    #[error("key is not base64")]
    BadKey,
}

/// A parsed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as it appears in the token (still URL-encoded): the signed text.
    pub resource_raw: String,
    /// `sr` decoded.
    pub resource: String,
    /// The decoded base64 signature.
    pub signature: String,
    /// Expiry, seconds since 1970.
    pub expiry: u64,
    /// Policy name, when present.
    pub key_name: Option<String>,
}

/// URL-encodes a resource URI the way the signing string expects.
pub fn encode_uri(uri: &str) -> String {
    signing::encode_field(uri)
}

/// Computes the base64 signature of `{encoded_resource}\n{expiry}` with a base64 key.
pub fn signature(key_b64: &str, encoded_resource: &str, expiry: u64) -> Result<String, SasError> {
    signing::signature(key_b64, encoded_resource, expiry).map_err(|_| SasError::BadKey)
}

/// Builds a token for `resource` (unencoded, e.g. `host/devices/dev1`) valid until `expiry`.
pub fn generate(
    key_b64: &str,
    resource: &str,
    expiry: u64,
    key_name: Option<&str>,
) -> Result<String, SasError> {
    signing::token(key_b64, resource, expiry, key_name).map_err(|_| SasError::BadKey)
}

/// Parses a token.
pub fn parse(token: &str) -> Result<SasToken, SasError> {
    let rest = token
        .trim()
        .strip_prefix("SharedAccessSignature ")
        .ok_or(SasError::Malformed("missing SharedAccessSignature prefix"))?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for pair in rest.split('&') {
        let (k, v) = pair
            .split_once('=')
            .ok_or(SasError::Malformed("field without '='"))?;
        match k {
            "sr" => sr = Some(v.to_string()),
            "sig" => sig = Some(decode(v)?),
            "se" => se = Some(v.parse::<u64>().map_err(|_| SasError::Malformed("se"))?),
            "skn" => skn = Some(decode(v)?),
            _ => {}
        }
    }
    let resource_raw = sr.ok_or(SasError::Malformed("missing sr"))?;
    Ok(SasToken {
        resource: decode(&resource_raw)?,
        resource_raw,
        signature: sig.ok_or(SasError::Malformed("missing sig"))?,
        expiry: se.ok_or(SasError::Malformed("missing se"))?,
        key_name: skn,
    })
}

fn decode(text: &str) -> Result<String, SasError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| SasError::Malformed("not UTF-8 after URL decoding"))
}

impl SasToken {
    /// Checks expiry (with [`EXPIRY_TOLERANCE_SECS`]), that the resource grants `wanted`
    /// (equal, or `wanted` lies below it; host compared without case), and the signature
    /// against any of `keys`.
    pub fn verify(&self, wanted: &str, keys: &[&str], now: u64) -> Result<(), SasError> {
        if self.expiry.saturating_add(EXPIRY_TOLERANCE_SECS) <= now {
            return Err(SasError::Expired {
                expiry: self.expiry,
                now,
            });
        }
        if !grants(&self.resource, wanted) {
            return Err(SasError::WrongResource {
                resource: self.resource.clone(),
                wanted: wanted.to_string(),
            });
        }
        let given = STANDARD
            .decode(self.signature.as_bytes())
            .map_err(|_| SasError::BadSignature)?;
        for key in keys.iter().filter(|k| !k.is_empty()) {
            let matches = signing::signature_matches(key, &self.resource_raw, self.expiry, &given)
                .map_err(|_| SasError::BadKey)?;
            if matches {
                return Ok(());
            }
        }
        Err(SasError::BadSignature)
    }
}

fn grants(resource: &str, wanted: &str) -> bool {
    let norm = |s: &str| {
        let s = s.trim_end_matches('/');
        match s.split_once('/') {
            Some((host, path)) => format!("{}/{path}", host.to_ascii_lowercase()),
            None => s.to_ascii_lowercase(),
        }
    };
    let (have, want) = (norm(resource), norm(wanted));
    want == have || want.starts_with(&format!("{have}/"))
}

/// Derives a device key from a DPS group enrollment key:
/// base64(HMAC-SHA256(base64-decoded group key, registration id)).
pub fn derive_device_key(group_key_b64: &str, registration_id: &str) -> Result<String, SasError> {
    signing::derive_device_key(group_key_b64, registration_id).map_err(|_| SasError::BadKey)
}

/// Generates a fresh random 32-byte base64 key.
pub fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    STANDARD.encode(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdGluZy0wMTIzNDU2Nzg5";

    #[test]
    fn generated_token_verifies_for_its_device() {
        let token = generate(KEY, "Hub.Local/devices/dev1", 2000, None).unwrap();
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.resource, "Hub.Local/devices/dev1");
        assert_eq!(parsed.resource_raw, "Hub.Local%2Fdevices%2Fdev1");
        parsed
            .verify("hub.local/devices/dev1", &[KEY], 1000)
            .unwrap();
    }

    #[test]
    fn token_for_other_device_is_refused() {
        let token = generate(KEY, "hub/devices/dev1", 2000, None).unwrap();
        let err = parse(&token)
            .unwrap()
            .verify("hub/devices/dev10", &[KEY], 1000)
            .unwrap_err();
        assert!(matches!(err, SasError::WrongResource { .. }));
    }

    #[test]
    fn expiry_is_tolerated_for_five_minutes_only() {
        let token = parse(&generate(KEY, "hub/devices/d", 4600, None).unwrap()).unwrap();
        token.verify("hub/devices/d", &[KEY], 4600 + 299).unwrap();
        let err = token
            .verify("hub/devices/d", &[KEY], 4600 + 300)
            .unwrap_err();
        assert_eq!(
            err,
            SasError::Expired {
                expiry: 4600,
                now: 4900
            }
        );
    }

    #[test]
    fn wrong_key_fails_signature() {
        let token = parse(&generate(KEY, "hub/devices/d", 4600, None).unwrap()).unwrap();
        let other = random_key();
        assert_eq!(
            token.verify("hub/devices/d", &[&other], 10),
            Err(SasError::BadSignature)
        );
        token.verify("hub/devices/d", &[&other, KEY], 10).unwrap();
    }

    #[test]
    fn group_key_derivation_matches_the_known_answer() {
        // Computed with Python's hmac and base64.
        let key = "Y2xvdWRwaWxsYXIta25vd24tYW5zd2VyLWtleS0zMmI=";
        let derived = derive_device_key(key, "reg-01").unwrap();
        assert_eq!(derived, "HAekvuDpTdjDxRdE3je00oAIt7EBIIOGCOOFkOSa2U4=");
        assert_ne!(derived, derive_device_key(key, "reg-02").unwrap());
        assert_eq!(derive_device_key("***", "reg-01"), Err(SasError::BadKey));
    }
}
