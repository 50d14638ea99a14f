//! Twin key codec: field case F05.

use cloudpillar_protocol::keys::{
    HASHED_KEY_PREFIX, KeyError, MAX_KEY_BYTES, decode_key, encode_key, hashed_key, is_hashed_key,
    validate_document_keys, validate_key,
};
use proptest::prelude::*;
use serde_json::json;

const FIELD_NAMES: [&str; 6] = ["a.b", "$x", "a b", "100%.txt", "ü.txt", "\u{1}"];

#[test]
fn field_names_round_trip_through_the_codec() {
    for name in FIELD_NAMES {
        let key = encode_key(name);
        assert_eq!(decode_key(&key).as_deref(), Ok(name), "key {key:?}");
    }
}

#[test]
fn encoded_keys_hold_no_forbidden_character() {
    for name in FIELD_NAMES
        .iter()
        .copied()
        .chain(["v1.2 hotfix", "$pre", "firmware.bin", "\u{85}"])
    {
        let key = encode_key(name);
        assert_eq!(validate_key(&key), Ok(()), "key {key:?} for {name:?}");
        assert!(!key.contains(['.', '$', ' ']) && !key.chars().any(char::is_control));
        assert!(key.len() <= MAX_KEY_BYTES);
    }
}

#[test]
fn escapes_are_uppercase_percent_hex_per_utf8_byte() {
    assert_eq!(encode_key("firmware.bin"), "firmware%2Ebin");
    assert_eq!(encode_key("v1.2 hotfix"), "v1%2E2%20hotfix");
    assert_eq!(encode_key("$pre"), "%24pre");
    assert_eq!(encode_key("100%.txt"), "100%25%2Etxt");
    assert_eq!(encode_key("ü.txt"), "ü%2Etxt");
    assert_eq!(encode_key("\u{85}"), "%C2%85");
    assert_eq!(encode_key("plain_name-1"), "plain_name-1");
}

#[test]
fn forbidden_characters_in_keys_are_refused() {
    let report = json!({"files": {"firmware.bin": {"crc": "0943260c"}}});
    let error = validate_document_keys(&report).expect_err("a dot in a key is refused");
    let KeyError::InDocument { path, source } = error else {
        panic!("wrong error {error:?}")
    };
    assert_eq!(path, "files");
    assert!(matches!(
        *source,
        KeyError::ForbiddenCharacter {
            character: '.',
            position: 8,
            ..
        }
    ));

    for bad in ["v1.2 hotfix", "$pre", "tab\there", "c1\u{9f}"] {
        assert!(
            matches!(validate_key(bad), Err(KeyError::ForbiddenCharacter { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn document_with_encoded_keys_is_accepted() {
    let report = json!({"files": {encode_key("firmware.bin"): {"crc": "0943260c"}}});
    assert_eq!(validate_document_keys(&report), Ok(()));
}

#[test]
fn version_and_metadata_are_allowed_only_at_the_top() {
    assert_eq!(
        validate_document_keys(&json!({"$version": 3, "$metadata": {}, "a": 1})),
        Ok(())
    );
    let nested = json!({"a": {"$version": 3}});
    assert!(validate_document_keys(&nested).is_err());
    let in_array = json!({"list": [{"ok": 1}, {"bad key": 2}]});
    let Err(KeyError::InDocument { path, .. }) = validate_document_keys(&in_array) else {
        panic!("a space inside an array element is refused")
    };
    assert_eq!(path, "list[1]");
}

#[test]
fn keys_over_1024_bytes_are_refused() {
    assert_eq!(validate_key(&"k".repeat(MAX_KEY_BYTES)), Ok(()));
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    assert!(matches!(
        validate_key(&long),
        Err(KeyError::TooLong {
            bytes: 1025,
            max: 1024,
            ..
        })
    ));
}

#[test]
fn too_long_names_become_hash_keys() {
    let at_limit = "k".repeat(MAX_KEY_BYTES);
    assert_eq!(encode_key(&at_limit), at_limit);

    // 342 dots encode to 1026 bytes.
    let dotted = ".".repeat(342);
    let key = encode_key(&dotted);
    assert_eq!(key, hashed_key(&dotted));
    assert!(is_hashed_key(&key) && key.starts_with(HASHED_KEY_PREFIX));
    assert_eq!(key.len(), 66);
    assert_eq!(validate_key(&key), Ok(()));
    assert!(matches!(decode_key(&key), Err(KeyError::HashedKey { .. })));
    assert_ne!(encode_key(&".".repeat(343)), key);
}

#[test]
fn non_canonical_or_malformed_escapes_are_refused() {
    assert!(matches!(
        decode_key("a%2eb"),
        Err(KeyError::NonCanonicalEscape { position: 1, .. })
    ));
    assert!(matches!(
        decode_key("%41"),
        Err(KeyError::NonCanonicalEscape { position: 0, .. })
    ));
    assert!(matches!(
        decode_key("ab%2"),
        Err(KeyError::MalformedEscape { position: 2, .. })
    ));
    assert!(matches!(
        decode_key("%zz"),
        Err(KeyError::MalformedEscape { .. })
    ));
    assert!(matches!(decode_key("%FF"), Err(KeyError::NotUtf8 { .. })));
    assert!(matches!(
        decode_key("a.b"),
        Err(KeyError::ForbiddenCharacter { .. })
    ));
}

#[test]
fn the_empty_name_has_a_key_of_its_own_and_an_empty_key_is_refused() {
    assert_eq!(validate_key(""), Err(KeyError::Empty));
    let key = encode_key("");
    assert_eq!(validate_key(&key), Ok(()));
    assert_eq!(decode_key(&key), Ok(String::new()));
    assert_ne!(decode_key(&encode_key("%E")), Ok(String::new()));
}

proptest! {
    #[test]
    fn any_name_encodes_to_a_valid_key_that_decodes_back(name in any::<String>()) {
        let key = encode_key(&name);
        prop_assert_eq!(validate_key(&key), Ok(()));
        if is_hashed_key(&key) {
            prop_assert_eq!(key, hashed_key(&name));
        } else {
            prop_assert_eq!(decode_key(&key), Ok(name));
        }
    }
}
