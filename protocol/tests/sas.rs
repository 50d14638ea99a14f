//! SAS tokens against answers computed outside this code (Python's `hmac`, `base64` and
//! `urllib.parse.quote(safe="-_.~")`) and RFC 4231.

use cloudpillar_protocol::encoding::{decode_base64_strict, encode_base64};
use cloudpillar_protocol::sas::{
    SasError, derive_device_key, encode_field, hmac_base64, signature, signature_matches, token,
};

/// base64 of `cloudpillar-known-answer-key-32b`.
const KEY: &str = "Y2xvdWRwaWxsYXIta25vd24tYW5zd2VyLWtleS0zMmI=";

#[test]
fn device_token_matches_the_known_answer() {
    let made = token(
        KEY,
        "myhub.azure-devices.net/devices/dev-1",
        1_767_225_600,
        None,
    )
    .expect("key is base64");
    assert_eq!(
        made,
        "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev-1\
         &sig=Gt9SPuaFtEL5qr%2BH2vL4NO%2BbORmH8wFWGaVaU%2BjNOAs%3D&se=1767225600"
    );
}

#[test]
fn policy_token_names_its_policy_last() {
    let made = token(KEY, "hub.example.net", 1_800_000_000, Some("iothubowner")).expect("token");
    assert_eq!(
        made,
        "SharedAccessSignature sr=hub.example.net\
         &sig=mDpxgDXUZpQcxFr2y5jObnyV280%2B9ZrgAwgTu%2FXcLFA%3D&se=1800000000&skn=iothubowner"
    );
}

#[test]
fn signature_covers_the_encoded_resource_and_the_expiry() {
    let sig = signature(KEY, "hub.example.net", 1_800_000_000).expect("signature");
    assert_eq!(sig, "mDpxgDXUZpQcxFr2y5jObnyV280+9ZrgAwgTu/XcLFA=");
    let bytes = decode_base64_strict("sig", &sig).expect("base64");
    assert_eq!(
        signature_matches(KEY, "hub.example.net", 1_800_000_000, &bytes),
        Ok(true)
    );
    assert_eq!(
        signature_matches(KEY, "hub.example.net", 1_800_000_001, &bytes),
        Ok(false),
        "another expiry is another signed text"
    );
    assert_eq!(
        signature_matches(KEY, "hub.example.NET", 1_800_000_000, &bytes),
        Ok(false)
    );
}

#[test]
fn hmac_matches_rfc_4231_test_case_2() {
    let key = encode_base64(b"Jefe");
    let mac = hmac_base64(&key, b"what do ya want for nothing?").expect("mac");
    let bytes = decode_base64_strict("mac", &mac).expect("base64");
    assert_eq!(
        hex::encode(bytes),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn group_key_derivation_matches_the_known_answer() {
    assert_eq!(
        derive_device_key(KEY, "reg-01").expect("derive"),
        "HAekvuDpTdjDxRdE3je00oAIt7EBIIOGCOOFkOSa2U4="
    );
}

#[test]
fn fields_keep_only_unreserved_characters() {
    assert_eq!(encode_field("a-b_c.d~e"), "a-b_c.d~e");
    assert_eq!(
        encode_field("h:8443/devices/d 1+x"),
        "h%3A8443%2Fdevices%2Fd%201%2Bx"
    );
}

#[test]
fn a_key_that_is_not_base64_is_refused() {
    assert!(matches!(
        token("not base64!", "h", 1, None),
        Err(SasError::DecodeKey { .. })
    ));
    assert!(derive_device_key("***", "reg").is_err());
}
