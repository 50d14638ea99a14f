//! P-521 signatures: appendix S1 and field cases F14, F15.

use cloudpillar_protocol::encoding::encode_base64;
use cloudpillar_protocol::signing::{
    RAW_SIGNATURE_BYTES, Signature, SignatureError, SignedText, SigningKey, TrustStore,
    VerifyingKey,
};
use sha2::{Digest, Sha256, Sha512};

const S1_MESSAGE: &[u8] = b"recipe:fw-2.1:rev4:6";
const S1_PUBLIC: &str = "\
    0401feeffc001e21cc8778f84a48ecea96555efa0e6415741d0a88d22cd628828ac9f94cdea6483a725a9b01\
    95f03503d2bca5ba3c1db9bd416eebfa30f80b9480bedb0190222b771e52eaeb3207b6da674fb9e171e4d3f2\
    30cacb71c10b8770b36ded3370d52dc501e142c9ea41c34d245b052135b34ebd705139a4460c3818414f5af2\
    71";
const S1_RAW: &str = "\
    00a243c48c08934fefb789d4e88cc3f6f092237ce6159a293e3013c7d78cf1fb78c4e7263f5f5f85a5aef265\
    a67e0b94b555f6f4a3229df17daad75d8e36cc3f6d57012a16e1db3d397fcd1ebb3c1765c3857bdfb063db89\
    c13326dc76fce0f0f52ce95cb9c4891740ca975c035ccfbbd5091a43bf12a5eee599294669b9575dca1a14e1";
const S1_DER: &str = "\
    308188024200a243c48c08934fefb789d4e88cc3f6f092237ce6159a293e3013c7d78cf1fb78c4e7263f5f5f\
    85a5aef265a67e0b94b555f6f4a3229df17daad75d8e36cc3f6d570242012a16e1db3d397fcd1ebb3c1765c3\
    857bdfb063db89c13326dc76fce0f0f52ce95cb9c4891740ca975c035ccfbbd5091a43bf12a5eee599294669\
    b9575dca1a14e1";
/// Order n of the P-521 group, 66 bytes.
const ORDER: &str = "\
    01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc\
    0148f709a5d03bb5c9b8899c47aebb6fb71e91386409";

fn bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).expect("fixture hex")
}

fn s1_key() -> VerifyingKey {
    VerifyingKey::from_sec1_bytes(&bytes(S1_PUBLIC)).expect("S1 public key")
}

fn is_encoding_error(result: Result<impl std::fmt::Debug, SignatureError>) -> bool {
    matches!(result, Err(SignatureError::BadSignatureEncoding { .. }))
}

#[test]
fn s1_raw_signature_verifies() {
    let raw = bytes(S1_RAW);
    assert_eq!(raw.len(), RAW_SIGNATURE_BYTES);
    s1_key()
        .verify(S1_MESSAGE, &encode_base64(&raw))
        .expect("S1 raw verifies");
}

#[test]
fn s1_der_signature_verifies_and_decodes_to_the_raw_one() {
    let der = bytes(S1_DER);
    assert_eq!(der.len(), 139);
    s1_key()
        .verify(S1_MESSAGE, &encode_base64(&der))
        .expect("S1 DER verifies");

    let from_der = Signature::from_bytes(&der).expect("DER parses");
    let from_raw = Signature::from_bytes(&bytes(S1_RAW)).expect("raw parses");
    assert_eq!(from_der, from_raw);
    assert_eq!(from_der.to_raw(), bytes(S1_RAW));
    assert_eq!(from_raw.to_der(), der);
}

#[test]
fn flipped_last_raw_byte_fails_verification() {
    let mut raw = bytes(S1_RAW);
    raw[131] ^= 0x01;
    let result = s1_key().verify(S1_MESSAGE, &encode_base64(&raw));
    assert!(
        matches!(result, Err(SignatureError::BadSignature { .. })),
        "{result:?}"
    );
}

#[test]
fn raw_shortened_to_131_bytes_is_refused_as_bad_encoding() {
    // F14: a minimal-length converter drops the leading zero of r.
    let short = &bytes(S1_RAW)[1..];
    assert_eq!(short.len(), 131);
    let error = s1_key()
        .verify(S1_MESSAGE, &encode_base64(short))
        .expect_err("refused");
    assert_eq!(error.code(), "bad_signature_encoding");
    assert!(p521::ecdsa::Signature::from_slice(short).is_err());
}

#[test]
fn library_refuses_each_form_given_as_the_other() {
    assert!(p521::ecdsa::Signature::from_der(&bytes(S1_RAW)).is_err());
    assert!(p521::ecdsa::Signature::from_slice(&bytes(S1_DER)).is_err());
}

#[test]
fn der_with_a_trailing_byte_is_refused() {
    let mut der = bytes(S1_DER);
    der.push(0x00);
    assert!(is_encoding_error(Signature::from_bytes(&der)));
    assert!(is_encoding_error(
        s1_key().verify(S1_MESSAGE, &encode_base64(&der))
    ));
}

#[test]
fn der_with_r_equal_to_the_order_is_refused_and_next_check_passes() {
    // F15: 30 81 88 | 02 42 n | 02 42 s
    let s = &bytes(S1_RAW)[66..];
    let mut der = vec![0x30, 0x81, 0x88, 0x02, 0x42];
    der.extend(bytes(ORDER));
    der.extend([0x02, 0x42]);
    der.extend(s);
    assert_eq!(der.len(), 139);

    let key = s1_key();
    assert!(is_encoding_error(
        key.verify(S1_MESSAGE, &encode_base64(&der))
    ));
    assert!(is_encoding_error(
        key.verify(S1_MESSAGE, &encode_base64(&[0x30, 0x80]))
    ));
    key.verify(S1_MESSAGE, &encode_base64(&bytes(S1_RAW)))
        .expect("valid check still passes");
}

#[test]
fn raw_scalars_outside_one_to_n_minus_one_are_refused() {
    let s = bytes(S1_RAW)[66..].to_vec();
    let with_r = |r: Vec<u8>| [r, s.clone()].concat();

    assert!(is_encoding_error(Signature::from_bytes(&with_r(vec![
        0;
        66
    ]))));
    assert!(is_encoding_error(Signature::from_bytes(&with_r(bytes(
        ORDER
    )))));

    let mut below_order = bytes(ORDER);
    below_order[65] -= 1;
    let in_range = Signature::from_bytes(&with_r(below_order)).expect("n-1 is a valid scalar");
    let result = s1_key().verify_signature(S1_MESSAGE, &in_range);
    assert!(matches!(result, Err(SignatureError::BadSignature { .. })));
}

#[test]
fn bytes_of_neither_form_are_refused() {
    for junk in [vec![], vec![0x02; 132], vec![0x00; 133], vec![0xa2; 131]] {
        assert!(
            is_encoding_error(Signature::from_bytes(&junk)),
            "{} bytes",
            junk.len()
        );
    }
    assert!(is_encoding_error(Signature::from_base64("AAECAw")));
}

#[test]
fn raw_signatures_are_always_132_bytes() {
    let key = SigningKey::generate().expect("key");
    let mut short_scalars = 0;
    for round in 0..300u32 {
        let message = round.to_be_bytes();
        let raw = key.sign(&message).to_raw();
        assert_eq!(raw.len(), RAW_SIGNATURE_BYTES);
        // r or s shorter than 66 bytes as a minimal integer: a leading zero byte.
        if raw[0] == 0 || raw[66] == 0 {
            short_scalars += 1;
        }
        key.verifying_key()
            .verify(&message, &encode_base64(&raw))
            .expect("own signature");
    }
    assert!(
        short_scalars > 100,
        "padding was exercised ({short_scalars} of 300)"
    );
}

#[test]
fn key_id_is_sha256_prefix_of_the_uncompressed_point() {
    let key = s1_key();
    let expected = hex::encode(Sha256::digest(bytes(S1_PUBLIC)))[..16].to_owned();
    assert_eq!(key.key_id(), expected);
    assert_eq!(key.to_sec1_bytes(), bytes(S1_PUBLIC));
}

#[test]
fn keys_round_trip_through_pem_and_base64() {
    let key = SigningKey::generate().expect("key");
    let pkcs8 = key.to_pkcs8_pem().expect("pkcs8 pem");
    assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        SigningKey::from_pem(&pkcs8).expect("reads pkcs8").key_id(),
        key.key_id()
    );

    let secret = p521::SecretKey::from_pem(&pkcs8).expect("secret");
    let sec1 = secret
        .to_sec1_pem(p521::pkcs8::LineEnding::LF)
        .expect("sec1 pem");
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    assert_eq!(
        SigningKey::from_pem(&sec1).expect("reads sec1").key_id(),
        key.key_id()
    );

    let public = key.verifying_key();
    let from_pem = VerifyingKey::from_pem(&public.to_pem().expect("public pem")).expect("pem");
    let from_b64 = VerifyingKey::from_base64(&encode_base64(&public.to_sec1_bytes())).expect("b64");
    assert_eq!((&from_pem, &from_b64), (public, public));

    assert!(
        SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .is_err()
    );
    assert!(VerifyingKey::from_sec1_bytes(&[0x04; 133]).is_err());
}

#[test]
fn streaming_digest_signature_matches_whole_message_signature() {
    let key = SigningKey::generate().expect("key");
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut hasher = Sha512::new();
    for piece in blob.chunks(4096) {
        hasher.update(piece);
    }
    let streamed = key.sign_digest(hasher.clone());
    assert_eq!(
        streamed,
        key.sign(&blob),
        "RFC 6979 signatures are deterministic"
    );
    key.verifying_key()
        .verify_digest(hasher, &streamed.to_base64())
        .expect("digest verifies");
    key.verifying_key()
        .verify(&blob, &streamed.to_base64())
        .expect("whole blob verifies");

    let mut other = Sha512::new();
    other.update(&blob[1..]);
    assert!(
        key.verifying_key()
            .verify_digest(other, &streamed.to_base64())
            .is_err()
    );
}

#[test]
fn trust_store_verifies_across_a_key_rotation() {
    let old = SigningKey::generate().expect("old key");
    let new = SigningKey::generate().expect("new key");
    let mut store = TrustStore::new();
    store.add(old.verifying_key().clone());
    store.add(new.verifying_key().clone());
    assert_eq!(store.len(), 2);

    let message = b"changeSpec bytes";
    let named = SignedText::new(&new, &new.sign(message)).to_string();
    assert!(named.starts_with(&format!("{}:", new.key_id())));
    assert_eq!(
        store.verify(message, &named).expect("named key"),
        new.key_id()
    );

    let bare = old.sign(message).to_base64();
    assert_eq!(
        store.verify(message, &bare).expect("any trusted key"),
        old.key_id()
    );

    // A signature naming the wrong key fails even though that key is trusted.
    let mislabeled = format!("{}:{}", old.key_id(), new.sign(message));
    let error = store.verify(message, &mislabeled).expect_err("wrong key");
    assert_eq!(error.code(), "bad_signature");

    assert!(store.remove(old.key_id()));
    let error = store.verify(
        message,
        &SignedText::new(&old, &old.sign(message)).to_string(),
    );
    assert!(matches!(error, Err(SignatureError::UnknownKeyId { .. })));
    assert_eq!(
        store
            .verify(message, &bare)
            .expect_err("old key gone")
            .code(),
        "bad_signature"
    );
}

#[test]
fn malformed_key_id_prefix_is_a_bad_encoding() {
    let store = TrustStore::new();
    let error = store
        .verify(b"m", "NOT-A-KID:AAECAw==")
        .expect_err("refused");
    assert_eq!(error.code(), "bad_signature_encoding");
    assert_eq!(SignedText::parse("AAECAw==").expect("bare").key_id, None);
}

#[test]
fn empty_trust_store_refuses_every_signature() {
    let key = SigningKey::generate().expect("key");
    let text = key.sign(b"m").to_base64();
    let error = TrustStore::new()
        .verify(b"m", &text)
        .expect_err("nothing trusted");
    assert_eq!(error.code(), "bad_signature");
}
