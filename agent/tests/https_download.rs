//! Downloads over HTTPS from a real TLS file server on 127.0.0.1: byte-exact files, resume
//! after a dropped connection, signature failures, HTTP errors, and zones in strict mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_agent::daemon::Agent;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use common::files::{ETAG, FileServer, Knobs, Seen};
use common::{TestHub, parse_config_with};

fn random_file(len: usize) -> Arc<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    rand::fill(&mut bytes[..]);
    Arc::new(bytes)
}

fn file_sign(hub: &TestHub, bytes: &[u8]) -> String {
    let signature = hub.signer.sign(bytes);
    cloudpillar_protocol::signing::SignedText::new(&hub.signer, &signature).to_string()
}

fn https_recipe(id: &str, url: &str, sign: &str, destination: &str) -> Value {
    json!({"id": id, "patch": {
        "transitPackage": [{"action": "singularDownload", "source": url,
            "protocol": "https|iotmqtt", "destinationPath": destination, "sign": sign}],
        "installSteps": [{"shell": "bash", "command": "echo installed > installed.txt"}]}})
}

/// An agent for device `id` trusting the file server's CA; `extra` goes to the top level.
async fn start_agent(
    hub: &TestHub,
    files: &FileServer,
    id: &str,
    dir: &Path,
    extra: &str,
    vars: &[(&str, &str)],
) -> (Agent, PathBuf) {
    let mut text = hub.agent_config(id, dir, extra).await;
    // The generated configuration ends in its [transfer] section.
    text.push_str(&format!(
        "https_ca_file = {:?}\n",
        files.ca_file.display().to_string()
    ));
    let config = parse_config_with(&text, vars);
    let work = config.work_dir();
    let agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported(id, "connected", |r| r["health"] == "connected")
        .await;
    (agent, work)
}

async fn deliver(hub: &TestHub, id: &str, spec: &Value) {
    let desired = json!({"changeSpec": spec, "changeSign": hub.sign(spec)});
    hub.patch_desired(id, desired).await;
}

async fn wait_status(hub: &TestHub, id: &str, status: &str) -> Value {
    let reported = hub
        .wait_reported(id, status, |r| r["changeSpec"]["Status"] == status)
        .await;
    reported["changeSpec"].clone()
}

fn ranges(seen: &[Seen]) -> Vec<Option<&str>> {
    seen.iter().map(|s| s.range.as_deref()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_download_is_byte_exact_and_reports_progress_like_hub_downloads() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(700_000);
    let knobs = Knobs {
        hold_at: Some(512 * 1024),
        ..Knobs::default()
    };
    let files = FileServer::start(dir.path(), &[("fw.bin", Arc::clone(&file))], knobs).await;
    let stall = [("CP_AGENT_TRANSFER__STALL_SECS", "30")];
    let (_agent, work) = start_agent(&hub, &files, "https-1", dir.path(), "", &stall).await;

    let url = files.url("fw.bin");
    deliver(
        &hub,
        "https-1",
        &https_recipe("h-1", &url, &file_sign(&hub, &file), "./fw.bin"),
    )
    .await;

    // Held at 512 KiB: the step reports bytes, percent and what it downloads.
    let reported = hub
        .wait_reported("https-1", "download progress", |r| {
            r["changeSpec"]["patch"]["transitPackage"][0]["BytesDone"]
                .as_u64()
                .is_some_and(|done| done > 0)
        })
        .await;
    let live = &reported["changeSpec"]["patch"]["transitPackage"][0];
    assert_eq!(live["status"], "InProgress");
    assert_eq!(live["BytesTotal"], 700_000);
    assert!(live["BytesDone"].as_u64().unwrap() <= 512 * 1024, "{live}");
    let percent = live["Progress"].as_u64().unwrap();
    assert!((1..=75).contains(&percent), "{live}");
    assert_eq!(live["ResultText"], format!("downloading {url}"));
    assert_eq!(reported["deviceState"], "PATCH_INTRANSIT");
    files.knobs.release.notify_one();

    let spec = wait_status(&hub, "https-1", "Success").await;
    let step = &spec["patch"]["transitPackage"][0];
    assert_eq!(step["ResultCode"], "FinishedTransit");
    let on_disk = std::fs::read(work.join("fw.bin")).unwrap();
    assert_eq!(on_disk.len(), file.len());
    assert_eq!(Sha256::digest(&on_disk), Sha256::digest(&file[..]));
    assert!(work.join("installed.txt").exists());
    assert!(!work.join("fw.bin.cppart").exists());
    assert_eq!(ranges(&files.seen()), [Some("bytes=0-")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_download_resumes_from_the_verified_length_after_the_server_drops_the_connection() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(900_000);
    let knobs = Knobs {
        drop_after: 300 * 1024,
        ..Knobs::default()
    };
    knobs.drops.store(1, std::sync::atomic::Ordering::SeqCst);
    let files = FileServer::start(dir.path(), &[("fw.bin", Arc::clone(&file))], knobs).await;
    let (_agent, work) = start_agent(&hub, &files, "https-2", dir.path(), "", &[]).await;

    let url = files.url("fw.bin");
    deliver(
        &hub,
        "https-2",
        &https_recipe("h-2", &url, &file_sign(&hub, &file), "./fw.bin"),
    )
    .await;
    let spec = wait_status(&hub, "https-2", "Success").await;
    assert_eq!(
        spec["patch"]["transitPackage"][0]["ResultCode"],
        "FinishedTransit"
    );

    let on_disk = std::fs::read(work.join("fw.bin")).unwrap();
    assert_eq!(Sha256::digest(&on_disk), Sha256::digest(&file[..]));
    let seen = files.seen();
    assert_eq!(
        seen.len(),
        2,
        "one dropped request and one resume: {seen:?}"
    );
    assert_eq!(seen[0].range.as_deref(), Some("bytes=0-"));
    let resumed_from = seen[1].range_start().unwrap();
    assert!(
        resumed_from > 0 && resumed_from <= 300 * 1024,
        "resumed from {resumed_from}"
    );
    assert_eq!(
        seen[1].if_range.as_deref(),
        Some(ETAG),
        "the resume names the file version"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_https_file_fails_verification_and_the_recipe_stops() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(200_000);
    let mut tampered = file.as_ref().clone();
    tampered[100_000] ^= 0x01;
    let files = FileServer::start(
        dir.path(),
        &[("fw.bin", Arc::new(tampered))],
        Knobs::default(),
    )
    .await;
    let attempts = [("CP_AGENT_TRANSFER__MAX_ATTEMPTS", "2")];
    let (_agent, work) = start_agent(&hub, &files, "https-3", dir.path(), "", &attempts).await;

    let url = files.url("fw.bin");
    deliver(
        &hub,
        "https-3",
        &https_recipe("h-3", &url, &file_sign(&hub, &file), "./fw.bin"),
    )
    .await;
    let spec = wait_status(&hub, "https-3", "Failure").await;
    let step = &spec["patch"]["transitPackage"][0];
    assert_eq!(step["status"], "Failure");
    assert_eq!(step["ResultCode"], "integrity_mismatch");
    assert_eq!(step["ResultText"], "file signature does not verify");
    assert_eq!(spec["patch"]["installSteps"][0]["status"], "Pending");
    assert_eq!(
        spec["lastFaultedPath"],
        "changeSpec.patch.transitPackage[0]"
    );
    assert!(!work.join("fw.bin").exists());
    assert!(!work.join("fw.bin.cppart").exists());
    assert!(!work.join("installed.txt").exists());
    assert_eq!(
        ranges(&files.seen()),
        [Some("bytes=0-"), Some("bytes=0-")],
        "each attempt fetches the whole file again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_404_fails_the_step_with_the_status_in_result_text() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let files = FileServer::start(dir.path(), &[], Knobs::default()).await;
    let (_agent, work) = start_agent(&hub, &files, "https-4", dir.path(), "", &[]).await;

    let url = files.url("missing.bin");
    let spec = https_recipe("h-4", &url, &file_sign(&hub, b"x"), "./missing.bin");
    deliver(&hub, "https-4", &spec).await;
    let spec = wait_status(&hub, "https-4", "Failure").await;
    let step = &spec["patch"]["transitPackage"][0];
    assert_eq!(step["ResultCode"], "download_failed");
    assert_eq!(
        step["ResultText"],
        format!("HTTPS download of {url} failed: the server answered 404 Not Found")
    );
    assert_eq!(files.seen().len(), 1, "a 404 is not asked again");
    assert!(!work.join("missing.bin.cppart").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_refuses_an_https_file_larger_than_its_download_zone_allows() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let zone_root = dir.path().join("packages");
    std::fs::create_dir_all(&zone_root).unwrap();
    let file = random_file(150_000);
    let files = FileServer::start(
        dir.path(),
        &[("fw.bin", Arc::clone(&file))],
        Knobs::default(),
    )
    .await;
    let zone = format!(
        "strict_mode = true\n\n[zones.PackagesAllow]\naction = \"download\"\nroot = {:?}\n\
         max_size = 100000\n",
        zone_root.display().to_string()
    );
    let (_agent, _work) = start_agent(&hub, &files, "https-5", dir.path(), &zone, &[]).await;

    let mut spec = https_recipe(
        "h-5",
        &files.url("fw.bin"),
        &file_sign(&hub, &file),
        "${PackagesAllow}/fw.bin",
    );
    // Strict mode runs no shell: the recipe is the download alone.
    spec["patch"]
        .as_object_mut()
        .unwrap()
        .remove("installSteps");
    deliver(&hub, "https-5", &spec).await;
    let spec = wait_status(&hub, "https-5", "Failure").await;
    let step = &spec["patch"]["transitPackage"][0];
    assert_eq!(step["ResultCode"], "zone_denied");
    assert_eq!(
        step["ResultText"],
        "Denied by local a restriction \"PackagesAllow\""
    );
    assert!(!zone_root.join("fw.bin").exists());
    assert!(!zone_root.join("fw.bin.cppart").exists());
    let seen = files.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_allowing_only_https_refuses_a_source_that_is_not_an_https_url() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let files = FileServer::start(dir.path(), &[], Knobs::default()).await;
    // No `sign` here: the local setting lets the step reach the routing it is about.
    let unsigned = [("CP_AGENT_TRANSFER__ALLOW_UNSIGNED_DOWNLOADS", "true")];
    let (_agent, _work) = start_agent(&hub, &files, "https-6", dir.path(), "", &unsigned).await;

    let spec = json!({"id": "h-6", "patch": {"transitPackage": [{"action": "singularDownload",
        "source": "fw.bin", "protocol": "https", "destinationPath": "./fw.bin"}]}});
    deliver(&hub, "https-6", &spec).await;
    let spec = wait_status(&hub, "https-6", "Failure").await;
    let step = &spec["patch"]["transitPackage"][0];
    assert_eq!(step["ResultCode"], "bad_source");
    assert_eq!(
        step["ResultText"],
        "protocol https needs an https:// URL as source, not \"fw.bin\""
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(files.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_pauses_an_https_download_and_ready_resumes_it_from_the_verified_length() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = random_file(800_000);
    let knobs = Knobs {
        hold_at: Some(512 * 1024),
        ..Knobs::default()
    };
    let files = FileServer::start(dir.path(), &[("fw.bin", Arc::clone(&file))], knobs).await;
    let stall = [("CP_AGENT_TRANSFER__STALL_SECS", "30")];
    let (agent, work) = start_agent(&hub, &files, "https-7", dir.path(), "", &stall).await;

    let url = files.url("fw.bin");
    let spec = https_recipe("h-7", &url, &file_sign(&hub, &file), "./fw.bin");
    deliver(&hub, "https-7", &spec).await;
    hub.wait_reported("https-7", "download progress", |r| {
        r["changeSpec"]["patch"]["transitPackage"][0]["BytesDone"]
            .as_u64()
            .is_some_and(|done| done > 0)
    })
    .await;

    agent
        .device
        .apply(cloudpillar_agent::state::Command::SetBusy)
        .unwrap();
    files.knobs.release.notify_one();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(files.seen().len(), 1, "nothing is asked while BUSY");
    assert!(!work.join("fw.bin").exists());

    agent
        .device
        .apply(cloudpillar_agent::state::Command::SetReady)
        .unwrap();
    wait_status(&hub, "https-7", "Success").await;
    let on_disk = std::fs::read(work.join("fw.bin")).unwrap();
    assert_eq!(Sha256::digest(&on_disk), Sha256::digest(&file[..]));
    let seen = files.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let resumed = seen[1].range.as_deref().unwrap();
    assert_ne!(resumed, "bytes=0-", "READY resumes from the verified bytes");
}
