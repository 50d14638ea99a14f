//! Strict base64: field case F16.

use cloudpillar_protocol::encoding::{decode_base64_strict, encode_base64};

#[test]
fn canonical_standard_base64_decodes() {
    assert_eq!(
        decode_base64_strict("sign", "AAECAw=="),
        Ok(vec![0x00, 0x01, 0x02, 0x03])
    );
    assert_eq!(decode_base64_strict("sign", "+/8="), Ok(vec![0xfb, 0xff]));
}

#[test]
fn other_spellings_are_refused_naming_the_field() {
    for text in [
        "AAECAw",
        "AAECAw=",
        "AAECAx==",
        "-_8=",
        "AAEC\nAw==",
        "AAEC\r\nAw==",
        " AAECAw==",
    ] {
        let error = decode_base64_strict("changeSign", text).expect_err(text);
        assert_eq!(error.field, "changeSign");
        assert!(error.to_string().contains("changeSign"), "{error}");
    }
}

#[test]
fn encoding_writes_the_one_accepted_spelling() {
    assert_eq!(encode_base64(&[0, 1, 2, 3]), "AAECAw==");
    assert_eq!(encode_base64(&[0xfb, 0xff]), "+/8=");
}
