//! Downloads through the edge hub with a scripted streamer peer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudpillar_protocol::twin::{CANCEL_KEY, cancel_request};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use common::streamer::{self, Script};
use common::{TestHub, parse_config};

fn random_file(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::fill(&mut bytes[..]);
    bytes
}

fn file_sign(hub: &TestHub, bytes: &[u8]) -> String {
    let signature = hub.signer.sign(bytes);
    cloudpillar_protocol::signing::SignedText::new(&hub.signer, &signature).to_string()
}

fn download_recipe(id: &str, sign: &str, extra_install: Value) -> Value {
    json!({"id": id, "patch": {
    "transitPackage": [{"action": "singularDownload", "source": "fw.bin",
        "protocol": "iotmqtt", "destinationPath": "./fw.bin", "sign": sign,
        "retransmissionRewind": 65536}],
    "installSteps": [
        {"shell": "bash", "command": "sha256sum fw.bin | cut -d' ' -f1 > fw.sha"},
        extra_install
    ]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linux_recipe_downloads_a_signed_file_installs_and_uploads_a_log() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("dl-1", dir.path(), "").await);
    let work = config.work_dir();
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("dl-1", "connected", |r| r["health"] == "connected")
        .await;

    let file = Arc::new(random_file(300_000));
    let seen = streamer::start(
        &hub,
        Script {
            device: "dl-1".into(),
            file_id: "fw.bin".into(),
            file: Arc::clone(&file),
            chunk: 47 * 1024,
            pace: Duration::ZERO,
            corrupt_crc: false,
        },
    );
    let mut events = hub.hub.events();
    let log = work.join("install.log");
    let upload = json!({"action": "periodicUpload", "filename": log.display().to_string(),
        "interval": 1, "enabled": true});
    let mut spec = download_recipe(
        "dl-recipe",
        &file_sign(&hub, &file),
        json!(
        {"shell": "bash", "command": "echo installed > install.log"}),
    );
    spec["patch"]["postInstallConfig"] = json!([upload]);
    hub.patch_desired(
        "dl-1",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;

    let reported = hub
        .wait_reported("dl-1", "recipe success", |r| {
            r["changeSpec"]["Status"] == "Success"
        })
        .await;
    let step = &reported["changeSpec"]["patch"]["transitPackage"][0];
    assert_eq!(step["status"], "Success");
    assert_eq!(step["ResultCode"], "FinishedTransit");
    let on_disk = std::fs::read(work.join("fw.bin")).unwrap();
    assert_eq!(Sha256::digest(&on_disk), Sha256::digest(&file[..]));
    let sha = std::fs::read_to_string(work.join("fw.sha")).unwrap();
    assert_eq!(sha.trim(), hex::encode(Sha256::digest(&file[..])));
    assert!(!work.join("fw.bin.cppart").exists());
    assert!(seen.requests.load(Ordering::SeqCst) >= 1);

    // The log written by the install step arrives as an UploadFileChunk.
    let chunk = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = events.recv().await.unwrap();
            if event.properties.get("messageType").map(String::as_str) == Some("UploadFileChunk") {
                return event.body.clone().unwrap();
            }
        }
    })
    .await
    .expect("upload chunk");
    assert!(chunk["fileId"].as_str().unwrap().ends_with("-install.log"));
    assert_eq!(
        chunk["data"],
        cloudpillar_protocol::encoding::encode_base64(b"installed\n")
    );
    assert_eq!(chunk["last"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f12_integrity_failure_on_every_attempt_fails_the_step_and_stops_the_recipe() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    // No stall re-requests: every request counted below comes from a CRC mismatch.
    let text = hub.agent_config("dl-2", dir.path(), "").await;
    let config = common::parse_config_with(&text, &[("CP_AGENT_TRANSFER__STALL_SECS", "600")]);
    let work = config.work_dir();
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("dl-2", "connected", |r| r["health"] == "connected")
        .await;

    let file = Arc::new(random_file(100_000));
    let seen = streamer::start(
        &hub,
        Script {
            device: "dl-2".into(),
            file_id: "fw.bin".into(),
            file: Arc::clone(&file),
            chunk: 47 * 1024,
            pace: Duration::ZERO,
            corrupt_crc: true,
        },
    );
    let spec = download_recipe(
        "dl-bad",
        &file_sign(&hub, &file),
        json!(
        {"shell": "bash", "command": "touch never-run"}),
    );
    hub.patch_desired(
        "dl-2",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    let reported = hub
        .wait_reported("dl-2", "recipe failure", |r| {
            r["changeSpec"]["Status"] == "Failure"
        })
        .await;
    let step = &reported["changeSpec"]["patch"]["transitPackage"][0];
    assert_eq!(step["status"], "Failure");
    assert_eq!(step["ResultCode"], "integrity_mismatch");
    assert_eq!(
        reported["changeSpec"]["patch"]["installSteps"][0]["status"],
        "Pending"
    );
    assert_eq!(
        reported["changeSpec"]["lastFaultedPath"],
        "changeSpec.patch.transitPackage[0]"
    );
    assert!(!work.join("fw.bin").exists() && !work.join("fw.bin.cppart").exists());
    assert!(!work.join("never-run").exists());
    // The first request and one re-request per mismatch but the last: three attempts.
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_in_the_middle_of_a_download_pauses_and_disconnects_ready_resumes_it() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("dl-3", dir.path(), "").await);
    let work = config.work_dir();
    let agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("dl-3", "connected", |r| r["health"] == "connected")
        .await;

    let file = Arc::new(random_file(47 * 1024 * 40));
    let seen = streamer::start(
        &hub,
        Script {
            device: "dl-3".into(),
            file_id: "fw.bin".into(),
            file: Arc::clone(&file),
            chunk: 47 * 1024,
            pace: Duration::from_millis(50),
            corrupt_crc: false,
        },
    );
    let spec = download_recipe(
        "dl-busy",
        &file_sign(&hub, &file),
        json!(
        {"shell": "bash", "command": "true"}),
    );
    hub.patch_desired(
        "dl-3",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    hub.wait_reported("dl-3", "some progress", |r| {
        r["changeSpec"]["patch"]["transitPackage"][0]["BytesDone"]
            .as_u64()
            .unwrap_or(0)
            > 0
    })
    .await;

    agent
        .device
        .apply(cloudpillar_agent::state::Command::SetBusy)
        .unwrap();
    let twin = hub.twin("dl-3").await;
    for _ in 0..50 {
        if hub.twin("dl-3").await["connectionState"] == "Disconnected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        hub.twin("dl-3").await["connectionState"],
        "Disconnected",
        "{twin}"
    );
    // The hub heard BUSY before the device left, so the operator defers rather than
    // calling it unreachable.
    let twin = hub.twin("dl-3").await;
    assert_eq!(
        twin["properties"]["reported"]["deviceState"], "BUSY",
        "{twin}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        agent.device.state(),
        cloudpillar_agent::state::DeviceState::Busy
    );

    agent
        .device
        .apply(cloudpillar_agent::state::Command::SetReady)
        .unwrap();
    hub.wait_reported("dl-3", "recipe success", |r| {
        r["changeSpec"]["Status"] == "Success"
    })
    .await;
    assert!(
        seen.resumes.load(Ordering::SeqCst) >= 1,
        "resumed from a verified offset"
    );
    let on_disk = std::fs::read(work.join("fw.bin")).unwrap();
    assert_eq!(Sha256::digest(&on_disk), Sha256::digest(&file[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f22_cancel_in_desired_stops_the_download_keeps_verified_bytes_and_reports_cancelled() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("dl-4", dir.path(), "").await);
    let work = config.work_dir();
    let agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("dl-4", "connected", |r| r["health"] == "connected")
        .await;

    let file = Arc::new(random_file(47 * 1024 * 200));
    let _seen = streamer::start(
        &hub,
        Script {
            device: "dl-4".into(),
            file_id: "fw.bin".into(),
            file: Arc::clone(&file),
            chunk: 47 * 1024,
            pace: Duration::from_millis(50),
            corrupt_crc: false,
        },
    );
    let spec = download_recipe(
        "ro-7",
        &file_sign(&hub, &file),
        json!(
        {"shell": "bash", "command": "touch never-run"}),
    );
    hub.patch_desired(
        "dl-4",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    hub.wait_reported("dl-4", "download under way", |r| {
        r["changeSpec"]["patch"]["transitPackage"][0]["ChunksDone"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    })
    .await;

    // The request exactly as the operator writes it.
    hub.patch_desired("dl-4", json!({ CANCEL_KEY: cancel_request("ro-7") }))
        .await;
    let reported = hub
        .wait_reported("dl-4", "cancelled", |r| {
            r["changeSpec"]["Status"] == "Cancelled"
        })
        .await;
    assert_eq!(
        reported["changeCancel"],
        json!({"id": "ro-7", "result": "cancelled"})
    );
    let step = &reported["changeSpec"]["patch"]["transitPackage"][0];
    assert_eq!(
        step["status"],
        "Cancelled",
        "{}",
        agent.reported.wanted()["changeSpec"]
    );
    assert_eq!(
        reported["changeSpec"]["patch"]["installSteps"][0]["status"],
        "Pending"
    );
    let partial = work.join("fw.bin.cppart");
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(
        kept >= 3 * 47 * 1024,
        "verified chunks kept for a later resume: {kept}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        std::fs::metadata(&partial).unwrap().len(),
        kept,
        "no chunk written after cancel"
    );
    assert!(!work.join("never-run").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipe_the_desired_section_already_cancels_is_never_started() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("dl-9", dir.path(), "").await);
    let work = config.work_dir();
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("dl-9", "connected", |r| r["health"] == "connected")
        .await;

    // What a device finds after an outage when its Rollout gave up on it meanwhile.
    let spec = json!({"id": "ro-9", "patch": {"installSteps": [
        {"shell": "bash", "command": "touch ran"}]}});
    hub.patch_desired(
        "dl-9",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec),
               CANCEL_KEY: cancel_request("ro-9")}),
    )
    .await;
    let reported = hub
        .wait_reported("dl-9", "cancel answered", |r| r[CANCEL_KEY]["id"] == "ro-9")
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!work.join("ran").exists(), "the cancelled recipe ran");
    assert_ne!(reported["changeSpec"]["id"], "ro-9", "{reported}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f14_f16_badly_encoded_file_signatures_fail_the_step_and_the_file_is_not_placed() {
    use cloudpillar_protocol::encoding::encode_base64;
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("dl-5", dir.path(), "").await);
    let work = config.work_dir();
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("dl-5", "connected", |r| r["health"] == "connected")
        .await;

    let file = Arc::new(random_file(10_000));
    let _seen = streamer::start(
        &hub,
        Script {
            device: "dl-5".into(),
            file_id: "fw.bin".into(),
            file: Arc::clone(&file),
            chunk: 4096,
            pace: Duration::ZERO,
            corrupt_crc: false,
        },
    );
    // F14: a raw r||s shortened to 131 bytes; F16: the right bytes with a line break inside.
    let raw = hub.signer.sign(&file).to_raw();
    let full = encode_base64(&raw);
    let variants = [
        encode_base64(&raw[1..]),
        format!("{}\n{}", &full[..64], &full[64..]),
    ];
    for (n, sign) in variants.iter().enumerate() {
        let id = format!("enc-{n}");
        let spec = download_recipe(&id, sign, json!({"shell": "bash", "command": "true"}));
        hub.patch_desired(
            "dl-5",
            json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
        )
        .await;
        let reported = hub
            .wait_reported("dl-5", "refused file", |r| {
                r["changeSpec"]["id"] == id.as_str() && r["changeSpec"]["Status"] == "Failure"
            })
            .await;
        let step = &reported["changeSpec"]["patch"]["transitPackage"][0];
        assert_eq!(step["ResultCode"], "bad_signature_encoding", "{step}");
        assert!(!work.join("fw.bin").exists());
        assert!(!work.join("fw.bin.cppart").exists());
    }
}
