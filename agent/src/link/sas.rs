//! Shared access signature tokens for IoT Hub and DPS, and the renewal policy (F10).
//!
//! Tokens are signed by [`cloudpillar_protocol::sas`], as the hub checks them. The policy renews at 80 % of the lifetime, never connects with a
//! token that expires within five minutes, and treats an authentication failure while
//! the clock is before this release's date as a wrong clock, not a wrong key.

pub use cloudpillar_protocol::sas::derive_device_key;

use crate::keystore::{DeviceKey, KeyStoreError};

/// Skew the service tolerates; a token must outlive `now` by more than this.
pub const MIN_REMAINING_SECS: u64 = 300;

/// No correct clock shows a time before this release was built (2026-01-01T00:00:00Z).
pub const CLOCK_FLOOR_UNIX: u64 = 1_767_225_600;

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

/// Builds a token for `resource_uri` valid for `ttl_secs` from `now`, signed by `key`.
pub async fn token(
    resource_uri: &str,
    key: &DeviceKey,
    key_name: Option<&str>,
    now: u64,
    ttl_secs: u64,
) -> Result<SasToken, KeyStoreError> {
    let expiry = now + ttl_secs;
    let token = key.token(resource_uri, expiry, key_name).await?;
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

    fn key() -> DeviceKey {
        DeviceKey::Plain(KEY.into())
    }

    #[tokio::test]
    async fn f10_expiry_and_renewal_follow_the_ttl() {
        let t = token("hub.local/devices/dev-1", &key(), None, 1000, 3600)
            .await
            .expect("token");
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

    #[tokio::test]
    async fn f10_never_connects_with_a_token_expiring_within_five_minutes() {
        let t = token("hub.local/devices/dev-1", &key(), None, 1000, 400)
            .await
            .expect("token");
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

    #[tokio::test]
    async fn token_names_the_encoded_resource_its_expiry_and_policy() {
        let t = token(
            "hub.local/devices/dev 1",
            &key(),
            Some("registration"),
            10,
            20,
        )
        .await
        .expect("tok");
        let expected = cloudpillar_protocol::sas::token(
            KEY,
            "hub.local/devices/dev 1",
            30,
            Some("registration"),
        )
        .expect("token");
        assert_eq!(t.token, expected);
        assert!(
            t.token
                .starts_with("SharedAccessSignature sr=hub.local%2Fdevices%2Fdev%201&sig=")
        );
        assert!(t.token.ends_with("&se=30&skn=registration"));
        let bad = DeviceKey::Plain("not base64!".into());
        assert!(token("x", &bad, None, 0, 1).await.is_err());
    }
}
