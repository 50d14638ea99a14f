//! `kill -9` of the agent binary mid-download (through the hub and over HTTPS) and
//! mid-recipe: nothing finished is lost or repeated, the partial file resumes from its
//! verified length.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use common::TestHub;
use common::files::{ETAG, FileServer, Knobs};
use common::process::{kill9, spawn_agent};
use common::streamer::{self, Script};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_download_resumes_from_verified_bytes_and_the_file_hash_matches() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, hub.agent_config("k9-1", dir.path(), "").await).unwrap();
    let work = dir.path().join("state/work");
    let log = dir.path().join("agent.log");
    let mut agent = spawn_agent(&config_path, &log);
    hub.wait_reported("k9-1", "connected", |r| r["health"] == "connected")
        .await;

    let chunk = 47 * 1024;
    let mut file = vec![0u8; chunk * 60 + 1234];
    rand::fill(&mut file[..]);
    let file = Arc::new(file);
    let seen = streamer::start(
        &hub,
        Script {
            device: "k9-1".into(),
            file_id: "fw.bin".into(),
            file: Arc::clone(&file),
            chunk,
            pace: Duration::from_millis(60),
            corrupt_crc: false,
        },
    );
    let sign = cloudpillar_protocol::signing::SignedText::new(&hub.signer, &hub.signer.sign(&file))
        .to_string();
    let spec = json!({"id": "k9-dl", "patch": {"transitPackage": [{"action": "singularDownload",
        "source": "fw.bin", "protocol": "iotmqtt", "destinationPath": "./fw.bin", "sign": sign,
        "retransmissionRewind": chunk}]}});
    hub.patch_desired(
        "k9-1",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    let before = hub
        .wait_reported("k9-1", "a third of the file", |r| {
            r["changeSpec"]["patch"]["transitPackage"][0]["BytesDone"]
                .as_u64()
                .unwrap_or(0)
                > (chunk * 20) as u64
        })
        .await;
    kill9(&mut agent);
    let done_before = before["changeSpec"]["patch"]["transitPackage"][0]["BytesDone"]
        .as_u64()
        .unwrap();
    let requests_before = seen.requests.load(Ordering::SeqCst);

    let mut agent = spawn_agent(&config_path, &log);
    let after = hub
        .wait_reported("k9-1", "recipe success", |r| {
            r["changeSpec"]["Status"] == "Success"
        })
        .await;
    kill9(&mut agent);

    let on_disk = std::fs::read(work.join("fw.bin")).unwrap();
    assert_eq!(
        Sha256::digest(&on_disk),
        Sha256::digest(&file[..]),
        "final hash matches"
    );
    assert!(seen.requests.load(Ordering::SeqCst) > requests_before);
    let resumed_from = seen.last_from.load(Ordering::SeqCst);
    assert!(
        resumed_from >= done_before,
        "resume from {resumed_from}, verified {done_before}"
    );
    assert_eq!(
        resumed_from % chunk as u64,
        0,
        "resume at a verified chunk boundary"
    );
    assert_eq!(
        after["changeSpec"]["patch"]["transitPackage"][0]["ResultCode"],
        "FinishedTransit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_https_download_resumes_from_the_recorded_length() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut file = vec![0u8; 1_500_000];
    rand::fill(&mut file[..]);
    let file = Arc::new(file);
    let knobs = Knobs {
        hold_at: Some(768 * 1024),
        ..Knobs::default()
    };
    let files = FileServer::start(dir.path(), &[("fw.bin", Arc::clone(&file))], knobs).await;
    let config_path = dir.path().join("agent.toml");
    let mut text = hub.agent_config("k9-4", dir.path(), "").await;
    text.push_str(&format!(
        "https_ca_file = {:?}\n",
        files.ca_file.display().to_string()
    ));
    std::fs::write(&config_path, text).unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = spawn_agent(&config_path, &log);
    hub.wait_reported("k9-4", "connected", |r| r["health"] == "connected")
        .await;

    let sign = cloudpillar_protocol::signing::SignedText::new(&hub.signer, &hub.signer.sign(&file))
        .to_string();
    let spec = json!({"id": "k9-https", "patch": {"transitPackage": [{"action": "singularDownload",
        "source": files.url("fw.bin"), "protocol": "https", "destinationPath": "./fw.bin",
        "sign": sign}]}});
    hub.patch_desired(
        "k9-4",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    // The server holds the body at 768 KiB; what reached the disk is reported.
    let before = hub
        .wait_reported("k9-4", "half a megabyte on disk", |r| {
            r["changeSpec"]["patch"]["transitPackage"][0]["BytesDone"]
                .as_u64()
                .is_some_and(|done| done >= 512 * 1024)
        })
        .await;
    kill9(&mut agent);
    files.knobs.release.notify_one();
    let done_before = before["changeSpec"]["patch"]["transitPackage"][0]["BytesDone"]
        .as_u64()
        .unwrap();

    let mut agent = spawn_agent(&config_path, &log);
    let after = hub
        .wait_reported("k9-4", "recipe success", |r| {
            r["changeSpec"]["Status"] == "Success"
        })
        .await;
    kill9(&mut agent);

    let on_disk = std::fs::read(dir.path().join("state/work/fw.bin")).unwrap();
    assert_eq!(Sha256::digest(&on_disk), Sha256::digest(&file[..]));
    let seen = files.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let resumed_from = seen[1].range_start().unwrap();
    assert!(
        resumed_from >= done_before && resumed_from <= 768 * 1024,
        "resume from {resumed_from}, reported {done_before}"
    );
    assert_eq!(seen[1].if_range.as_deref(), Some(ETAG));
    assert_eq!(
        after["changeSpec"]["patch"]["transitPackage"][0]["ResultCode"],
        "FinishedTransit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_recipe_never_repeats_a_finished_step() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, hub.agent_config("k9-2", dir.path(), "").await).unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = spawn_agent(&config_path, &log);
    hub.wait_reported("k9-2", "connected", |r| r["health"] == "connected")
        .await;

    let counter = dir.path().join("count");
    let gate = dir.path().join("gate");
    let spec = json!({"id": "k9-steps", "patch": {"installSteps": [
        {"shell": "bash", "command": format!("echo first >> {}", counter.display())},
        {"shell": "bash", "command": format!(
            "echo second >> {c}; while [ ! -e {g} ]; do sleep 0.05; done",
            c = counter.display(), g = gate.display())},
        {"shell": "bash", "command": format!("echo third >> {}", counter.display())}]}});
    hub.patch_desired(
        "k9-2",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    hub.wait_reported("k9-2", "first step done", |r| {
        r["changeSpec"]["patch"]["installSteps"][0]["status"] == "Success"
    })
    .await;
    kill9(&mut agent);
    std::fs::write(&gate, "").unwrap();

    let mut agent = spawn_agent(&config_path, &log);
    hub.wait_reported("k9-2", "recipe success", |r| {
        r["changeSpec"]["Status"] == "Success"
    })
    .await;
    kill9(&mut agent);
    let lines = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(lines.matches("first").count(), 1, "{lines}");
    assert!(lines.ends_with("third\n"), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_upload_continues_after_kill_9_and_each_chunk_matches_its_offset() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, hub.agent_config("k9-3", dir.path(), "").await).unwrap();
    let log = dir.path().join("agent.log");
    let app_log = dir.path().join("state/work/app.log");
    let mut agent = spawn_agent(&config_path, &log);
    hub.wait_reported("k9-3", "connected", |r| r["health"] == "connected")
        .await;

    let mut events = hub.hub.events();
    std::fs::create_dir_all(app_log.parent().unwrap()).unwrap();
    std::fs::write(&app_log, "line one\n").unwrap();
    let spec = json!({"id": "k9-upload", "patch": {"transitPackage": [{"action": "periodicUpload",
        "filename": "./app.log", "interval": 1, "enabled": true}]}});
    hub.patch_desired(
        "k9-3",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    let first = next_upload(&mut events, "k9-3").await;
    assert_eq!(first["offset"], 0);
    // The round's record is saved as it ends; a kill before that, with the file changed
    // meanwhile, starts the upload again under a new name (agent README), so kill after it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kill9(&mut agent);

    std::fs::OpenOptions::new()
        .append(true)
        .open(&app_log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"line two\n"))
        .unwrap();
    let mut agent = spawn_agent(&config_path, &log);
    // Chunks are sent at least once: a chunk whose record the kill interrupted may come
    // again, always at its own offset, so the assembled file is right either way.
    let content = b"line one\nline two\n";
    let second = loop {
        let chunk = next_upload(&mut events, "k9-3").await;
        let offset = usize::try_from(chunk["offset"].as_u64().unwrap()).unwrap();
        let data = cloudpillar_protocol::encoding::decode_base64_strict(
            "data",
            chunk["data"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(
            &content[offset..offset + data.len()],
            &data[..],
            "chunk at {offset}"
        );
        if offset + data.len() == content.len() {
            break chunk;
        }
    };
    kill9(&mut agent);
    assert_eq!(second["last"], true);
    assert_eq!(second["fileId"], first["fileId"]);
}

async fn next_upload(
    events: &mut tokio::sync::broadcast::Receiver<Arc<cloudpillar_hub::HubEvent>>,
    device: &str,
) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = events.recv().await.unwrap();
            if event.device_id == device
                && event.properties.get("messageType").map(String::as_str)
                    == Some("UploadFileChunk")
            {
                return event.body.clone().unwrap();
            }
        }
    })
    .await
    .expect("an upload chunk")
}
