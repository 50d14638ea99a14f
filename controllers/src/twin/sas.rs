//! Service SAS tokens signed from a shared access policy key.
//!
//! The token format and signature are those of [`cloudpillar_protocol::sas`]; the service
//! side signs the hub's host name in lower case and always names its policy.

use cloudpillar_protocol::sas;

use super::TwinError;

/// A token for `resource` (for example the hub host) valid until `expiry` (seconds since 1970).
pub fn service_token(
    policy_key_b64: &str,
    policy_name: &str,
    resource: &str,
    expiry: u64,
) -> Result<String, TwinError> {
    let resource = resource.to_lowercase();
    sas::token(policy_key_b64, &resource, expiry, Some(policy_name)).map_err(|error| {
        tracing::warn!(%error, policy = policy_name, "shared access policy key refused");
        TwinError::BadPolicyKey
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// base64 of `cloudpillar-known-answer-key-32b`.
    const KEY: &str = "Y2xvdWRwaWxsYXIta25vd24tYW5zd2VyLWtleS0zMmI=";

    #[test]
    fn token_signs_the_lowercased_host_and_names_its_policy() {
        let token =
            service_token(KEY, "iothubowner", "Hub.Example.NET", 1_800_000_000).expect("valid key");
        // Computed with Python's hmac, base64 and urllib.parse.quote(safe="-_.~").
        assert_eq!(
            token,
            "SharedAccessSignature sr=hub.example.net\
             &sig=mDpxgDXUZpQcxFr2y5jObnyV280%2B9ZrgAwgTu%2FXcLFA%3D&se=1800000000\
             &skn=iothubowner"
        );
    }

    #[test]
    fn a_port_in_the_resource_is_url_encoded() {
        let token = service_token(KEY, "p", "h:8443", 1).expect("valid key");
        assert!(token.starts_with("SharedAccessSignature sr=h%3A8443&sig="));
    }

    #[test]
    fn refuses_a_key_that_is_not_base64() {
        assert!(matches!(
            service_token("not base64!", "p", "h", 1),
            Err(TwinError::BadPolicyKey)
        ));
    }
}
