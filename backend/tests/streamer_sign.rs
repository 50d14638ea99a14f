//! The streamer signs a device's own upload on request (`SignFile`), against a real embedded
//! edge hub and a real key holder, and refuses everything else with a reason.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cloudpillar_backend::blob::{BlobConfig, BlobStores};
use cloudpillar_backend::keys::{KeyHolder, LocalSigner};
use cloudpillar_backend::partition::Partition;
use cloudpillar_backend::streamer::{Streamer, StreamerOptions};
use cloudpillar_hub::core::Core;
use cloudpillar_protocol::messages::{C2dMessage, D2cMessage, SignFileRequest, UploadFileChunk};
use cloudpillar_protocol::signing::SigningKey;
use common::rig::HubRig;
use sha2::{Digest, Sha512};

const CHUNK: usize = 48 * 1024;

fn options() -> StreamerOptions {
    StreamerOptions {
        wait: Duration::from_millis(200),
        checkpoint_every: Duration::from_millis(50),
        retry_ceiling: Duration::from_secs(1),
        sign_upload_wait: Duration::from_secs(2),
        ..StreamerOptions::default()
    }
}

fn holder() -> KeyHolder {
    KeyHolder::new(Arc::new(LocalSigner::new(
        SigningKey::generate().expect("key"),
    )))
}

struct Running {
    rig: HubRig,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A hub with `devices` and a streamer signing with `keys` (none: no key holder).
async fn start(devices: &[&str], keys: Option<KeyHolder>) -> Running {
    let rig = HubRig::start().await;
    for device in devices {
        rig.add_device(device).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .expect("stores");
    let streamer = Streamer::new(rig.link(), stores, None, Partition::all(), options());
    let streamer = match keys {
        Some(holder) => streamer.with_key_holder(holder),
        None => streamer,
    };
    let task = tokio::spawn(streamer.run());
    Running {
        rig,
        _dir: dir,
        task,
    }
}

/// Sends `data` from `device` as upload chunks of `file_id`.
async fn upload(rig: &HubRig, device: &str, file_id: &str, data: &[u8]) {
    let pieces: Vec<&[u8]> = data.chunks(CHUNK).collect();
    for (index, piece) in pieces.iter().enumerate() {
        let chunk = UploadFileChunk {
            file_id: file_id.into(),
            upload_id: None,
            offset: (index * CHUNK) as u64,
            data: piece.to_vec(),
            last: index + 1 == pieces.len(),
        };
        rig.send_d2c(device, &D2cMessage::UploadFileChunk(chunk))
            .await;
    }
}

async fn ask_to_sign(rig: &HubRig, device: &str, file_id: &str) {
    let request = SignFileRequest {
        file_id: file_id.into(),
    };
    rig.send_d2c(device, &D2cMessage::SignFile(request)).await;
}

/// The first C2D message queued for `device`, taken off the queue.
async fn next_answer(core: &Core, device: &str) -> C2dMessage {
    for _ in 0..1500 {
        let pending = core.c2d_pending(device).expect("queue readable");
        if let Some((seq, message)) = pending.into_iter().next() {
            core.c2d_complete(device, seq).await.expect("completed");
            return C2dMessage::decode(&message.body).expect("protocol message");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no answer for {device}");
}

#[tokio::test]
async fn sign_file_signs_the_devices_own_upload_with_the_key_holder() {
    let keys = holder();
    let trust = keys.trust_store().clone();
    let running = start(&["dev-a"], Some(keys)).await;
    let data = common::pattern(128 * 1024, 71);
    upload(&running.rig, "dev-a", "diagnostics/one.bin", &data).await;
    ask_to_sign(&running.rig, "dev-a", "uploads/dev-a/diagnostics/one.bin").await;

    let C2dMessage::FileSigned(signed) = next_answer(&running.rig.core(), "dev-a").await else {
        panic!("expected FileSigned");
    };
    assert_eq!(signed.file_id, "uploads/dev-a/diagnostics/one.bin");
    assert_eq!(signed.size, data.len() as u64);
    let mut hasher = Sha512::new();
    hasher.update(&data);
    trust
        .verify_digest(hasher, &signed.sign)
        .expect("signature over the uploaded bytes verifies");
    let mut tampered = data.clone();
    tampered[5] ^= 1;
    assert!(trust.verify(&tampered, &signed.sign).is_err());
}

#[tokio::test]
async fn sign_file_for_another_devices_upload_is_refused_with_the_reason() {
    let running = start(&["dev-a", "dev-b"], Some(holder())).await;
    let data = common::pattern(1000, 72);
    upload(&running.rig, "dev-a", "diagnostics/mine.bin", &data).await;
    ask_to_sign(&running.rig, "dev-b", "uploads/dev-a/diagnostics/mine.bin").await;
    ask_to_sign(&running.rig, "dev-b", "fw/app.bin").await;

    for file in ["uploads/dev-a/diagnostics/mine.bin", "fw/app.bin"] {
        let C2dMessage::SignFileFailed(failed) = next_answer(&running.rig.core(), "dev-b").await
        else {
            panic!("expected SignFileFailed for {file}");
        };
        assert_eq!(failed.file_id, file);
        assert!(
            failed
                .reason
                .contains(&format!("{file} is not one of device dev-b's uploads")),
            "{}",
            failed.reason
        );
    }
    assert!(
        running
            .rig
            .core()
            .c2d_pending("dev-a")
            .expect("queue")
            .is_empty(),
        "the owner is not told anything"
    );
}

#[tokio::test]
async fn sign_file_arriving_before_its_upload_is_answered_once_the_upload_commits() {
    let keys = holder();
    let trust = keys.trust_store().clone();
    let running = start(&["dev-a"], Some(keys)).await;
    ask_to_sign(&running.rig, "dev-a", "uploads/dev-a/diagnostics/late.bin").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        running
            .rig
            .core()
            .c2d_pending("dev-a")
            .expect("queue")
            .is_empty(),
        "no answer before the upload is there"
    );
    let data = common::pattern(100_000, 73);
    upload(&running.rig, "dev-a", "diagnostics/late.bin", &data).await;

    let C2dMessage::FileSigned(signed) = next_answer(&running.rig.core(), "dev-a").await else {
        panic!("expected FileSigned");
    };
    assert_eq!(signed.file_id, "uploads/dev-a/diagnostics/late.bin");
    trust
        .verify(&data, &signed.sign)
        .expect("signature verifies");
}

#[tokio::test]
async fn sign_file_for_an_upload_that_never_completes_is_refused_after_the_wait() {
    let running = start(&["dev-a"], Some(holder())).await;
    // Only the first of two chunks arrives.
    let chunk = UploadFileChunk {
        file_id: "diagnostics/half.bin".into(),
        upload_id: None,
        offset: 0,
        data: vec![1; CHUNK],
        last: false,
    };
    running
        .rig
        .send_d2c("dev-a", &D2cMessage::UploadFileChunk(chunk))
        .await;
    ask_to_sign(&running.rig, "dev-a", "uploads/dev-a/diagnostics/half.bin").await;
    let C2dMessage::SignFileFailed(failed) = next_answer(&running.rig.core(), "dev-a").await else {
        panic!("expected SignFileFailed");
    };
    assert_eq!(
        failed.reason,
        "upload dev-a/diagnostics/half.bin was not complete within 2s"
    );
}

#[tokio::test]
async fn sign_file_with_a_path_escaping_the_upload_area_is_refused() {
    let running = start(&["dev-a", "dev-b"], Some(holder())).await;
    upload(&running.rig, "dev-b", "secret.bin", b"not yours").await;
    ask_to_sign(&running.rig, "dev-a", "uploads/dev-a/../dev-b/secret.bin").await;
    let C2dMessage::SignFileFailed(failed) = next_answer(&running.rig.core(), "dev-a").await else {
        panic!("expected SignFileFailed");
    };
    // Refused before any key holder is asked, in the same words whether it runs in this
    // process or behind HTTP (where its own refusal would reach the device only as "could
    // not sign").
    assert!(
        failed
            .reason
            .contains("is not a blob name: a segment is empty, \".\" or \"..\""),
        "{}",
        failed.reason
    );
}

#[tokio::test]
async fn sign_file_without_a_key_holder_is_refused_with_the_reason() {
    let running = start(&["dev-a"], None).await;
    upload(&running.rig, "dev-a", "diagnostics/x.bin", b"abc").await;
    ask_to_sign(&running.rig, "dev-a", "uploads/dev-a/diagnostics/x.bin").await;
    let C2dMessage::SignFileFailed(failed) = next_answer(&running.rig.core(), "dev-a").await else {
        panic!("expected SignFileFailed");
    };
    assert_eq!(failed.reason, "this streamer has no key holder configured");
}
