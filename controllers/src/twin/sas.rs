//! Service SAS tokens signed from a shared access policy key.
//!
//! `SharedAccessSignature sr=<url-encoded host>&sig=<url-encoded base64 HMAC-SHA256>&se=<expiry
//! seconds>&skn=<policy>`; the HMAC is keyed with the base64-decoded policy key and covers
//! `<url-encoded host>\n<expiry>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

use super::TwinError;

/// Characters kept as they are when URL-encoding (RFC 3986 unreserved).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A token for `resource` (for example the hub host) valid until `expiry` (seconds since 1970).
pub fn service_token(
    policy_key_b64: &str,
    policy_name: &str,
    resource: &str,
    expiry: u64,
) -> Result<String, TwinError> {
    let sr = utf8_percent_encode(&resource.to_lowercase(), UNRESERVED).to_string();
    let key = STANDARD
        .decode(policy_key_b64.trim())
        .map_err(|_| TwinError::BadPolicyKey)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| TwinError::BadPolicyKey)?;
    mac.update(format!("{sr}\n{expiry}").as_bytes());
    let sig = STANDARD.encode(mac.finalize().into_bytes());
    Ok(format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={}",
        utf8_percent_encode(&sig, UNRESERVED),
        utf8_percent_encode(policy_name, UNRESERVED),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_carries_encoded_resource_signature_expiry_and_policy() {
        let key = STANDARD.encode(b"0123456789abcdef0123456789abcdef");
        let token =
            service_token(&key, "iothubowner", "Hub.Example.net:8443", 1000).expect("valid key");
        assert!(token.starts_with("SharedAccessSignature sr=hub.example.net%3A8443&sig="));
        assert!(token.ends_with("&se=1000&skn=iothubowner"));

        let mut mac = Hmac::<Sha256>::new_from_slice(b"0123456789abcdef0123456789abcdef")
            .expect("any key length");
        mac.update(b"hub.example.net%3A8443\n1000");
        let expected = STANDARD.encode(mac.finalize().into_bytes());
        let sig = token
            .split("&sig=")
            .nth(1)
            .and_then(|t| t.split('&').next())
            .expect("sig");
        let decoded = percent_encoding::percent_decode_str(sig)
            .decode_utf8()
            .expect("utf8");
        assert_eq!(decoded, expected);
    }

    #[test]
    fn refuses_a_key_that_is_not_base64() {
        assert!(matches!(
            service_token("not base64!", "p", "h", 1),
            Err(TwinError::BadPolicyKey)
        ));
    }
}
