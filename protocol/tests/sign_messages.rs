//! The SignFile request and its FileSigned / SignFileFailed answers: JSON shape and limits.

use cloudpillar_protocol::messages::{
    C2D_MAX_BYTES, C2dMessage, D2cMessage, FileSigned, MAX_FILE_ID_BYTES, MAX_REASON_BYTES,
    MAX_SIGN_TEXT_BYTES, MessageError, SignFileFailed, SignFileRequest,
};
use serde_json::{Value, json};

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("body is JSON")
}

#[test]
fn sign_file_request_is_a_d2c_message_named_sign_file() {
    let message = D2cMessage::SignFile(SignFileRequest {
        file_id: "uploads/dev-1/diagnostics/a.bin".into(),
    });
    let body = message.encode().expect("encodes");
    assert_eq!(
        body_json(&body),
        json!({"type": "SignFile", "fileId": "uploads/dev-1/diagnostics/a.bin"})
    );
    assert_eq!(message.message_type(), "SignFile");
    assert_eq!(D2cMessage::decode(&body).expect("decodes"), message);
}

#[test]
fn sign_file_request_without_a_file_id_is_refused() {
    let empty = br#"{"type":"SignFile","fileId":""}"#;
    assert!(matches!(
        D2cMessage::decode(empty),
        Err(MessageError::Invalid {
            message_type: "SignFile",
            ..
        })
    ));
}

#[test]
fn file_signed_answer_round_trips_with_the_longest_fields_within_the_c2d_limit() {
    let message = C2dMessage::FileSigned(FileSigned {
        file_id: "f".repeat(MAX_FILE_ID_BYTES),
        sign: "s".repeat(MAX_SIGN_TEXT_BYTES),
        size: u64::MAX,
    });
    let body = message.encode().expect("encodes");
    assert!(body.len() < C2D_MAX_BYTES / 64, "{} bytes", body.len());
    assert_eq!(message.message_type(), "FileSigned");
    assert_eq!(body_json(&body)["type"], "FileSigned");
    assert_eq!(C2dMessage::decode(&body).expect("decodes"), message);
}

#[test]
fn file_signed_answer_with_an_empty_or_oversized_sign_is_refused() {
    for sign in [String::new(), "s".repeat(MAX_SIGN_TEXT_BYTES + 1)] {
        let message = C2dMessage::FileSigned(FileSigned {
            file_id: "uploads/d/x".into(),
            sign,
            size: 1,
        });
        assert!(matches!(
            message.encode(),
            Err(MessageError::Invalid {
                message_type: "FileSigned",
                ..
            })
        ));
    }
}

#[test]
fn sign_file_failed_cuts_a_long_reason_at_a_character_boundary() {
    let reason = "é".repeat(MAX_REASON_BYTES);
    let failed = SignFileFailed::new("uploads/d/x", &reason);
    assert!(failed.reason.len() <= MAX_REASON_BYTES);
    assert!(failed.reason.len() >= MAX_REASON_BYTES - 1);
    assert!(failed.reason.chars().all(|c| c == 'é'));
    let message = C2dMessage::SignFileFailed(failed);
    let body = message.encode().expect("fits");
    assert_eq!(
        body_json(&body)["type"],
        "SignFileFailed",
        "the type names the answer"
    );
    assert_eq!(C2dMessage::decode(&body).expect("decodes"), message);
}

#[test]
fn sign_file_failed_with_an_oversized_reason_is_refused_when_decoded() {
    let body = json!({"type": "SignFileFailed", "fileId": "uploads/d/x",
        "reason": "r".repeat(MAX_REASON_BYTES + 1)})
    .to_string();
    assert!(matches!(
        C2dMessage::decode(body.as_bytes()),
        Err(MessageError::Invalid {
            message_type: "SignFileFailed",
            ..
        })
    ));
}
