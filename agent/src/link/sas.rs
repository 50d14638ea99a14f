//! Shared access signature tokens for IoT Hub and DPS, and the renewal policy (F10).
//!
//! A token signs `url_encode(resource_uri) + "\n" + expiry` with HMAC-SHA256 under the
//! base64-decoded key. The policy renews at 80 % of the lifetime, never connects with a
//! token that expires within five minutes, and treats an authentication failure while
//! the clock is before this release's date as a wrong clock, not a wrong key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::Sha256;

/// Skew the service tolerates; a token must outlive `now` by more than this.
pub const MIN_REMAINING_SECS: u64 = 300;

/// No correct clock shows a time before this release was built (2026-01-01T00:00:00Z).
pub const CLOCK_FLOOR_UNIX: u64 = 1_767_225_600;

/// Characters left unescaped in token fields: RFC 3986 unreserved.
const FIELD: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Errors building a token.
#[derive(Debug, thiserror::Error)]
pub enum SasError {
    /// The key is not base64.
    #[error("failed to decode the shared access key")]
    DecodeKey(#[source] base64::DecodeError),
    /// HMAC refused the key length (it accepts any; kept for completeness).
    #[error("failed to initialise HMAC with the shared access key")]
    Hmac,
}

/// A generated token and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// The `SharedAccessSignature sr=…&sig=…&se=…` text.
    pub token: String,
    /// Expiry, seconds since the Unix epoch.
    pub expiry: u64,
    /// When it was made.
    pub issued_at: u64,
}

/// Percent-encodes a token field.
pub fn url_encode(text: &str) -> String {
    utf8_percent_encode(text, FIELD).to_string()
}

/// Base64 HMAC-SHA256 of `message` under the base64 `key`.
pub fn sign(key_b64: &str, message: &[u8]) -> Result<String, SasError> {
    let key = STANDARD
        .decode(key_b64.trim())
        .map_err(SasError::DecodeKey)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SasError::Hmac)?;
    mac.update(message);
    Ok(STANDARD.encode(mac.finalize().into_bytes()))
}

/// Derives a device key from an enrollment-group key: HMAC-SHA256(group key, registration id).
pub fn derive_device_key(group_key_b64: &str, registration_id: &str) -> Result<String, SasError> {
    sign(group_key_b64, registration_id.as_bytes())
}

/// Builds a token for `resource_uri` valid for `ttl_secs` from `now`.
pub fn token(
    resource_uri: &str,
    key_b64: &str,
    key_name: Option<&str>,
    now: u64,
    ttl_secs: u64,
) -> Result<SasToken, SasError> {
    let expiry = now + ttl_secs;
    let encoded_uri = url_encode(resource_uri);
    let signature = sign(key_b64, format!("{encoded_uri}\n{expiry}").as_bytes())?;
    let mut token = format!(
        "SharedAccessSignature sr={encoded_uri}&sig={}&se={expiry}",
        url_encode(&signature)
    );
    if let Some(name) = key_name {
        token.push_str(&format!("&skn={}", url_encode(name)));
    }
    Ok(SasToken {
        token,
        expiry,
        issued_at: now,
    })
}

impl SasToken {
    /// When to replace the token: at 80 % of its lifetime.
    pub fn renew_at(&self) -> u64 {
        let lifetime = self.expiry.saturating_sub(self.issued_at);
        self.issued_at + lifetime * 8 / 10
    }

    /// Whether a new connection may use this token at `now`.
    pub fn usable_for_connect(&self, now: u64) -> bool {
        self.expiry > now + MIN_REMAINING_SECS && now < self.renew_at()
    }
}

/// Whether `now` can be a real time; an auth failure before this date means the clock is
/// wrong (health `clock_invalid`).
pub fn clock_is_plausible(now: u64) -> bool {
    now >= CLOCK_FLOOR_UNIX
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU=";

    #[test]
    fn f10_expiry_and_renewal_follow_the_ttl() {
        let t = token("hub.local/devices/dev-1", KEY, None, 1000, 3600).expect("token");
        assert_eq!(t.expiry, 4600);
        assert_eq!(t.renew_at(), 3880);
        assert!(t.usable_for_connect(1000));
        assert!(t.usable_for_connect(3879));
        assert!(
            !t.usable_for_connect(3880),
            "renew no later than 80 % of the ttl"
        );
        assert!(t.token.ends_with("&se=4600"));
    }

    #[test]
    fn f10_never_connects_with_a_token_expiring_within_five_minutes() {
        let t = token("hub.local/devices/dev-1", KEY, None, 1000, 400).expect("token");
        // renew_at = 1320, expiry 1400: at 1100 the token has 300 s left, which is not enough.
        assert!(!t.usable_for_connect(1100));
        assert!(t.usable_for_connect(1099));
    }

    #[test]
    fn f10_clock_before_the_release_date_is_implausible() {
        assert!(!clock_is_plausible(0), "1970 after a lost RTC");
        assert!(!clock_is_plausible(CLOCK_FLOOR_UNIX - 1));
        assert!(clock_is_plausible(CLOCK_FLOOR_UNIX));
    }

    #[test]
    fn token_fields_are_url_encoded_and_signed_over_the_encoded_uri() {
        let t = token("hub.local/devices/dev 1", KEY, Some("registration"), 10, 20).expect("tok");
        assert!(
            t.token
                .starts_with("SharedAccessSignature sr=hub.local%2Fdevices%2Fdev%201&sig=")
        );
        assert!(t.token.ends_with("&se=30&skn=registration"));
        let expected = sign(KEY, b"hub.local%2Fdevices%2Fdev%201\n30").expect("sig");
        assert!(t.token.contains(&format!("sig={}", url_encode(&expected))));
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        // Key "Jefe", data "what do ya want for nothing?".
        let sig = sign(&STANDARD.encode("Jefe"), b"what do ya want for nothing?").expect("sig");
        let bytes = STANDARD.decode(sig).expect("b64");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn group_key_derivation_is_hmac_of_the_registration_id() {
        let derived = derive_device_key(KEY, "dev-1").expect("derive");
        assert_eq!(derived, sign(KEY, b"dev-1").expect("sig"));
        assert!(derive_device_key("not base64!", "dev-1").is_err());
    }
}
