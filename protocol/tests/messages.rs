//! C2D and D2C messages: JSON shape, size limits and chunk sizing (F08).

use cloudpillar_protocol::messages::{
    AuthMethod, C2D_MAX_BYTES, C2dMessage, D2C_MAX_BYTES, D2cMessage, DownloadFileChunk,
    MAX_FILE_ID_BYTES, MAX_RAW_CHUNK, MAX_UPLOAD_CHUNK, MessageError, ProvisioningMode,
    StreamRangeRequest, UpgradeProvisioning, UploadFileChunk, VerifyRangeCrc,
};
use serde_json::{Value, json};

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("body is JSON")
}

#[test]
fn full_chunk_with_the_longest_file_id_fits_a_c2d_message() {
    let message = C2dMessage::DownloadFileChunk(DownloadFileChunk {
        file_id: "f".repeat(MAX_FILE_ID_BYTES),
        offset: u64::MAX - MAX_RAW_CHUNK as u64,
        data: vec![0xff; MAX_RAW_CHUNK],
        total_size: Some(u64::MAX),
    });
    let body = message.encode().expect("a full chunk fits");
    assert!(body.len() <= C2D_MAX_BYTES, "{} bytes", body.len());
    assert_eq!(C2dMessage::decode(&body).expect("decodes"), message);
}

#[test]
fn chunk_over_the_raw_limit_is_refused() {
    let message = C2dMessage::DownloadFileChunk(DownloadFileChunk {
        file_id: "f".into(),
        offset: 0,
        data: vec![0; MAX_RAW_CHUNK + 1],
        total_size: None,
    });
    assert!(matches!(
        message.encode(),
        Err(MessageError::Invalid { .. })
    ));
}

#[test]
fn download_chunk_uses_camel_case_and_base64() {
    let message = C2dMessage::DownloadFileChunk(DownloadFileChunk {
        file_id: "fw-2.1".into(),
        offset: 49_152,
        data: b"0123".to_vec(),
        total_size: None,
    });
    let body = message.encode().expect("encodes");
    assert_eq!(
        body_json(&body),
        json!({"type": "DownloadFileChunk", "fileId": "fw-2.1", "offset": 49152,
               "data": "MDEyMw=="})
    );
    assert_eq!(message.message_type(), "DownloadFileChunk");
}

#[test]
fn verify_range_crc_carries_eight_hex_digits() {
    let message = C2dMessage::VerifyRangeCrc(VerifyRangeCrc {
        file_id: "f1".into(),
        range_start: 8,
        range_end: 10,
        crc: 0x0943_260c,
    });
    let body = message.encode().expect("encodes");
    assert_eq!(
        body_json(&body),
        json!({"type": "VerifyRangeCRC", "fileId": "f1", "rangeStart": 8, "rangeEnd": 10,
               "crc": "0943260c"})
    );
    assert_eq!(C2dMessage::decode(&body).expect("decodes"), message);

    let short_crc =
        br#"{"type":"VerifyRangeCRC","fileId":"f1","rangeStart":0,"rangeEnd":1,"crc":"943260c"}"#;
    assert!(matches!(
        C2dMessage::decode(short_crc),
        Err(MessageError::Decode { .. })
    ));
    let backwards =
        br#"{"type":"VerifyRangeCRC","fileId":"f1","rangeStart":5,"rangeEnd":1,"crc":"0943260c"}"#;
    assert!(matches!(
        C2dMessage::decode(backwards),
        Err(MessageError::Invalid { .. })
    ));
}

#[test]
fn upgrade_provisioning_spells_method_and_mode_in_capitals_and_hides_the_key() {
    let text = br#"{"type":"UpgradeProvisioning","authMethod":"X509","hub":"hub.example",
        "mode":"STRICT","key":"secret-key"}"#;
    let C2dMessage::UpgradeProvisioning(upgrade) = C2dMessage::decode(text).expect("decodes")
    else {
        panic!("wrong message type")
    };
    assert_eq!(upgrade.auth_method, AuthMethod::X509);
    assert_eq!(upgrade.mode, ProvisioningMode::Strict);
    assert!(!format!("{upgrade:?}").contains("secret-key"));

    let sas = UpgradeProvisioning {
        auth_method: AuthMethod::Sas,
        mode: ProvisioningMode::Comm,
        ..upgrade
    };
    let body = C2dMessage::UpgradeProvisioning(sas)
        .encode()
        .expect("encodes");
    assert_eq!(body_json(&body)["authMethod"], "SAS");
    assert_eq!(body_json(&body)["mode"], "COMM");
    let lowercase = br#"{"type":"UpgradeProvisioning","authMethod":"sas","hub":"h",
        "mode":"FULL","key":"k"}"#;
    assert!(C2dMessage::decode(lowercase).is_err());
}

#[test]
fn upload_chunk_and_stream_range_round_trip() {
    let upload = D2cMessage::UploadFileChunk(UploadFileChunk {
        file_id: "log-1".into(),
        upload_id: None,
        offset: 0,
        data: vec![1, 2, 3],
        last: true,
    });
    let body = upload.encode().expect("encodes");
    assert_eq!(body_json(&body)["last"], true);
    assert!(
        body_json(&body).get("uploadId").is_none(),
        "absent when not set"
    );
    assert_eq!(D2cMessage::decode(&body).expect("decodes"), upload);

    let identified = D2cMessage::UploadFileChunk(UploadFileChunk {
        file_id: "log-1".into(),
        upload_id: Some("2026-12-05.run_7".into()),
        offset: 3,
        data: vec![4],
        last: false,
    });
    let body = identified.encode().expect("encodes");
    assert_eq!(body_json(&body)["uploadId"], "2026-12-05.run_7");
    assert_eq!(D2cMessage::decode(&body).expect("decodes"), identified);
    for bad in ["", "..", "a/b", "with space", &"x".repeat(65)] {
        let body = format!(
            r#"{{"type":"UploadFileChunk","fileId":"f","uploadId":"{bad}","offset":0,"data":""}}"#
        );
        assert!(
            matches!(
                D2cMessage::decode(body.as_bytes()),
                Err(MessageError::Invalid { .. })
            ),
            "uploadId {bad:?} accepted"
        );
    }

    let resume = D2cMessage::StreamRangeRequest(StreamRangeRequest {
        file_id: "fw".into(),
        from: 4_915_200,
        to: None,
    });
    let body = resume.encode().expect("encodes");
    assert_eq!(
        body_json(&body),
        json!({"type": "StreamRange", "fileId": "fw", "from": 4915200})
    );
    assert_eq!(resume.message_type(), "StreamRange");
    assert_eq!(D2cMessage::decode(&body).expect("decodes"), resume);

    let backwards = D2cMessage::StreamRangeRequest(StreamRangeRequest {
        file_id: "fw".into(),
        from: 10,
        to: Some(5),
    });
    assert!(matches!(
        backwards.encode(),
        Err(MessageError::Invalid { .. })
    ));
}

#[test]
fn oversize_bodies_are_refused_before_parsing() {
    let c2d = vec![b' '; C2D_MAX_BYTES + 1];
    assert!(matches!(
        C2dMessage::decode(&c2d),
        Err(MessageError::TooLarge {
            size: 65537,
            max: 65536,
            ..
        })
    ));
    let d2c = vec![b' '; D2C_MAX_BYTES + 1];
    assert!(matches!(
        D2cMessage::decode(&d2c),
        Err(MessageError::TooLarge { max: 262144, .. })
    ));
}

#[test]
fn messages_of_the_other_direction_or_bad_base64_are_refused() {
    let upload = br#"{"type":"UploadFileChunk","fileId":"f","offset":0,"data":"AAECAw=="}"#;
    assert!(matches!(
        C2dMessage::decode(upload),
        Err(MessageError::Decode { .. })
    ));
    let unpadded = br#"{"type":"UploadFileChunk","fileId":"f","offset":0,"data":"AAECAw"}"#;
    let error = D2cMessage::decode(unpadded).expect_err("unpadded base64 refused");
    assert!(format!("{:?}", error).contains("data"), "{error:?}");
    let empty_id = br#"{"type":"UploadFileChunk","fileId":"","offset":0,"data":""}"#;
    assert!(matches!(
        D2cMessage::decode(empty_id),
        Err(MessageError::Invalid { .. })
    ));
}

#[test]
fn a_48_kib_chunk_would_not_fit_with_its_envelope() {
    // Why MAX_RAW_CHUNK is 47 KiB: 48 KiB is exactly 64 KiB as base64, before any JSON.
    let message = C2dMessage::DownloadFileChunk(DownloadFileChunk {
        file_id: "f".into(),
        offset: 0,
        data: vec![0; 48 * 1024],
        total_size: None,
    });
    let body = serde_json::to_vec(&message).expect("serializes");
    assert!(body.len() > C2D_MAX_BYTES);
}

#[test]
fn full_upload_chunk_with_the_longest_file_id_fits_a_d2c_message() {
    let chunk = |size: usize| {
        D2cMessage::UploadFileChunk(UploadFileChunk {
            file_id: "f".repeat(MAX_FILE_ID_BYTES),
            upload_id: Some("u".repeat(64)),
            offset: u64::MAX - MAX_UPLOAD_CHUNK as u64,
            data: vec![0xff; size],
            last: true,
        })
    };
    let body = chunk(MAX_UPLOAD_CHUNK)
        .encode()
        .expect("a full upload chunk fits");
    assert!(body.len() <= D2C_MAX_BYTES, "{} bytes", body.len());
    assert!(matches!(
        chunk(MAX_UPLOAD_CHUNK + 1).encode(),
        Err(MessageError::Invalid { .. })
    ));
}
