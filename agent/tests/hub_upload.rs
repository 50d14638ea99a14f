//! Periodic log uploads through the edge hub: every recipe run and every new content of a
//! file is an upload of its own, and no upload is ever written over by a later one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_hub::HubEvent;
use serde_json::{Value, json};
use tokio::sync::broadcast::Receiver;

use common::process::{kill9, spawn_agent};
use common::relay::Relay;
use common::{TestHub, parse_config};

/// Uploads seen on the hub's event stream, assembled by offset.
#[derive(Debug, Default)]
struct Uploads {
    files: BTreeMap<String, Vec<u8>>,
    /// Ids in the order their first chunk came.
    order: Vec<String>,
    /// Which bytes of each upload came (chunks may come out of order, leaving gaps).
    filled: BTreeMap<String, Vec<bool>>,
    /// Ids whose `last` chunk came (the backend commits them), each time it came.
    committed: Vec<String>,
}

impl Uploads {
    fn add(&mut self, chunk: &Value) {
        let id = chunk["fileId"].as_str().unwrap().to_owned();
        let offset = usize::try_from(chunk["offset"].as_u64().unwrap()).unwrap();
        let data = cloudpillar_protocol::encoding::decode_base64_strict(
            "data",
            chunk["data"].as_str().unwrap(),
        )
        .unwrap();
        if !self.files.contains_key(&id) {
            self.order.push(id.clone());
        }
        let file = self.files.entry(id.clone()).or_default();
        let filled = self.filled.entry(id.clone()).or_default();
        file.resize(file.len().max(offset + data.len()), 0);
        filled.resize(file.len(), false);
        // Chunks may come again (at least once), and after a later one, but never with other
        // bytes.
        for (n, byte) in data.iter().enumerate() {
            let at = offset + n;
            assert!(
                !filled[at] || file[at] == *byte,
                "upload {id} written over at {at}"
            );
            file[at] = *byte;
            filled[at] = true;
        }
        if chunk["last"] == true {
            self.committed.push(id);
        }
    }

    /// Waits until an upload holds exactly `content`; returns its id.
    async fn wait_for(&mut self, events: &mut Receiver<Arc<HubEvent>>, content: &[u8]) -> String {
        let wanted = String::from_utf8_lossy(content).into_owned();
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let whole = |id: &String| self.filled[id].iter().all(|f| *f);
                if let Some((id, _)) =
                    (self.files.iter()).find(|(id, c)| c.as_slice() == content && whole(id))
                {
                    return id.clone();
                }
                let event = events.recv().await.unwrap();
                if event.properties.get("messageType").map(String::as_str)
                    == Some("UploadFileChunk")
                {
                    self.add(event.body.as_ref().unwrap());
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no upload of {:.80?}: {}", wanted, self.summary()))
    }

    fn summary(&self) -> String {
        let lengths: Vec<String> = (self.files.iter())
            .map(|(id, content)| format!("{id} ({} bytes)", content.len()))
            .collect();
        format!("{lengths:?}, completed {:?}", self.committed)
    }
}

fn log_recipe(id: &str, log: &Path, content: &str) -> Value {
    json!({"id": id, "patch": {
        "installSteps": [{"shell": "bash",
            "command": format!("printf '{content}' > {}", log.display())}],
        "postInstallConfig": [{"action": "periodicUpload",
            "filename": log.display().to_string(), "interval": 1, "enabled": true}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recipe_run_and_every_new_content_of_a_log_is_an_upload_of_its_own() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("up-1", dir.path(), "").await);
    let log = config.work_dir().join("install.log");
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("up-1", "connected", |r| r["health"] == "connected")
        .await;
    let mut events = hub.hub.events();
    let mut uploads = Uploads::default();

    // Two recipes write a log of the same path and size: two uploads.
    let mut ids = Vec::new();
    for (recipe, content) in [("log-1", "run one\n"), ("log-2", "run two\n")] {
        let spec = log_recipe(recipe, &log, &content.replace('\n', "\\n"));
        hub.patch_desired(
            "up-1",
            json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
        )
        .await;
        hub.wait_reported("up-1", "recipe success", |r| {
            r["changeSpec"]["id"] == recipe && r["changeSpec"]["Status"] == "Success"
        })
        .await;
        ids.push(uploads.wait_for(&mut events, content.as_bytes()).await);
    }
    let (first, second) = (ids[0].clone(), ids[1].clone());
    assert_ne!(first, second);
    assert!(first.ends_with("-install.log") && second.ends_with("-install.log"));

    // The watcher of the running recipe: a rewrite of the same size, then a shorter one,
    // are new uploads; what is appended continues the current one.
    std::fs::write(&log, "run TWO\n").unwrap();
    let third = uploads.wait_for(&mut events, b"run TWO\n").await;
    std::fs::write(&log, "short\n").unwrap();
    let fourth = uploads.wait_for(&mut events, b"short\n").await;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n"))
        .unwrap();
    assert_eq!(
        uploads.wait_for(&mut events, b"short\nmore\n").await,
        fourth
    );

    assert_eq!(uploads.order, [first, second, third, fourth]);
    let contents: Vec<&[u8]> = uploads.files.values().map(Vec::as_slice).collect();
    assert_eq!(contents.len(), 4, "{uploads:?}");
    for kept in [&b"run one\n"[..], b"run two\n", b"run TWO\n"] {
        assert!(contents.contains(&kept), "{kept:?} kept: {uploads:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_while_it_is_read_never_completes_an_upload_with_mixed_bytes() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = hub.agent_config("up-2", dir.path(), "").await;
    // Small chunks: reading the file takes long enough for the rewrite to land mid-way.
    let config =
        parse_config(&text.replace("[transfer]\n", "[transfer]\nupload_chunk_bytes = 2048\n"));
    let log = config.work_dir().join("app.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let (old, new) = (vec![b'a'; 256 * 1024], vec![b'b'; 256 * 1024]);
    std::fs::write(&log, &old).unwrap();
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("up-2", "connected", |r| r["health"] == "connected")
        .await;
    let mut events = hub.hub.events();
    let spec = json!({"id": "rewrite", "patch": {"transitPackage": [{"action": "periodicUpload",
        "filename": log.display().to_string(), "interval": 1, "enabled": true}]}});
    hub.patch_desired(
        "up-2",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;

    // The first chunk is out: the file is written over in place, same size, other bytes.
    let mut uploads = Uploads::default();
    while uploads.order.is_empty() {
        let event = events.recv().await.unwrap();
        if event.properties.get("messageType").map(String::as_str) == Some("UploadFileChunk") {
            uploads.add(event.body.as_ref().unwrap());
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &new))
        .unwrap();

    let second = uploads.wait_for(&mut events, &new).await;
    let first = uploads.order[0].clone();
    assert_ne!(first, second);
    // On a busy machine the first upload may finish before the rewrite lands; then it holds
    // the old bytes only. Either way no completed upload may mix the two contents.
    for id in &uploads.committed {
        let content = &uploads.files[id];
        assert!(
            content == &old || content == &new,
            "{id} completed with bytes of both"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_hundred_small_files_under_one_upload_step_all_arrive() {
    const FILES: usize = 800;
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("up-many", dir.path(), "").await);
    let logs = config.work_dir().join("many");
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("up-many", "connected", |r| r["health"] == "connected")
        .await;
    let mut events = hub.hub.events();

    let create = format!(
        "mkdir -p {0} && for i in $(seq 1 {FILES}); do printf \"file $i\\n\" > {0}/f$i.log; done",
        logs.display()
    );
    let spec = json!({"id": "many", "patch": {
        "installSteps": [{"shell": "bash", "command": create}],
        "postInstallConfig": [{"action": "periodicUpload",
            "filename": logs.join("*.log").display().to_string(), "interval": 1,
            "enabled": true}]}});
    hub.patch_desired(
        "up-many",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;

    // Generous bound: the stall this guards against delivered a handful of files a minute.
    let mut uploads = Uploads::default();
    let complete = |uploads: &Uploads| {
        let done: std::collections::BTreeSet<&String> = uploads.committed.iter().collect();
        done.len()
    };
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        while complete(&uploads) < FILES {
            let event = events.recv().await.unwrap();
            if event.properties.get("messageType").map(String::as_str) == Some("UploadFileChunk") {
                uploads.add(event.body.as_ref().unwrap());
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{} of {FILES} files arrived",
        complete(&uploads)
    );
    for i in 1..=FILES {
        let content = format!("file {i}\n");
        assert!(
            uploads
                .files
                .values()
                .any(|c| c.as_slice() == content.as_bytes()),
            "file {i} missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_chunks_dropped_by_the_full_offline_queue_are_sent_again_and_the_upload_is_whole() {
    let hub = TestHub::start().await;
    let relay = Relay::start(hub.hub.mqtt_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    // 1 KiB chunks and a queue of 16 messages: a 96 KiB append while offline overflows it.
    let text = hub
        .agent_config("up-drop", dir.path(), "")
        .await
        .replace(
            &format!("port = {}\n", hub.hub.mqtt_addr().port()),
            &format!("port = {}\n", relay.addr.port()),
        )
        .replace(
            "stall_secs = 2\n",
            "stall_secs = 2\noffline_queue_limit = 16\nupload_chunk_bytes = 1024\n",
        );
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, text).unwrap();
    let agent_log = dir.path().join("agent.log");
    let log = dir.path().join("state").join("work").join("app.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut content = b"started\n".to_vec();
    std::fs::write(&log, &content).unwrap();
    let mut agent = spawn_agent(&config_path, &agent_log);
    hub.wait_reported("up-drop", "connected", |r| r["health"] == "connected")
        .await;
    let mut events = hub.hub.events();
    let mut uploads = Uploads::default();
    let spec = json!({"id": "drop-1", "patch": {"postInstallConfig": [{"action": "periodicUpload",
        "filename": log.display().to_string(), "interval": 1, "enabled": true}]}});
    hub.patch_desired(
        "up-drop",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    let id = uploads.wait_for(&mut events, &content).await;

    // Offline: the log grows past what the queue holds, and its oldest chunks are dropped.
    relay.cut();
    for n in 0..1536 {
        content.extend_from_slice(
            format!("line {n:05} of the growing log....................\n").as_bytes(),
        );
    }
    std::fs::write(&log, &content).unwrap();
    for _ in 0..300 {
        let said = std::fs::read_to_string(&agent_log).unwrap_or_default();
        if said.contains("oldest log chunk dropped") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.restore();

    // Back online: the upload is the whole file, under the name it had.
    assert_eq!(uploads.wait_for(&mut events, &content).await, id);
    assert!(uploads.committed.contains(&id), "{}", uploads.summary());
    hub.wait_reported("up-drop", "drops counted", |r| {
        r["d2cDropped"].as_u64().is_some_and(|n| n > 0)
    })
    .await;
    let said = std::fs::read_to_string(&agent_log).unwrap();
    assert!(said.contains("dropped log chunk queued again"), "{said}");
    kill9(&mut agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_step_naming_denied_files_fails_with_each_file_and_its_reject_text() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("state").join("work").join("logs");
    let root = format!("{:?}", logs.display().to_string());
    let extra = format!(
        "strict_mode = true\n\
         [zones.LogAllow]\naction = \"upload\"\nroot = {root}\npatterns = [\"*.log\"]\n\
         [zones.LogDeny]\naction = \"upload\"\nkind = \"deny\"\nroot = {root}\n\
         patterns = [\"secret*.log\"]\n"
    );
    let config = parse_config(&hub.agent_config("up-deny", dir.path(), &extra).await);
    std::fs::create_dir_all(&logs).unwrap();
    for name in ["app.log", "secret-a.log", "secret-b.log"] {
        std::fs::write(logs.join(name), "text\n").unwrap();
    }
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("up-deny", "connected", |r| r["health"] == "connected")
        .await;
    let spec = json!({"id": "deny-1", "patch": {"postInstallConfig": [{"action": "periodicUpload",
        "filename": logs.join("*.log").display().to_string(), "interval": 1, "enabled": true}]}});
    hub.patch_desired(
        "up-deny",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    let reported = hub
        .wait_reported("up-deny", "recipe ended", |r| {
            r["changeSpec"]["id"] == "deny-1"
                && r["changeSpec"]["Status"]
                    .as_str()
                    .is_some_and(|s| s != "InProgress")
        })
        .await;
    let step = &reported["changeSpec"]["patch"]["postInstallConfig"][0];
    assert_eq!(reported["changeSpec"]["Status"], "Failure", "{reported}");
    assert_eq!(step["ResultCode"], "zone_denied", "{step}");
    let denied = |name: &str| {
        format!(
            "{}: Denied by local a restriction \"LogDeny\"",
            logs.join(name).display()
        )
    };
    assert_eq!(
        step["ResultText"],
        format!("{}; {}", denied("secret-a.log"), denied("secret-b.log"))
    );
}
