//! The writer between a real (embedded) edge hub and a FerretDB it stops and starts.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use cloudpillar_backend::blob::{BlobConfig, BlobStores};
use cloudpillar_backend::checkpoint::CheckpointStore;
use cloudpillar_backend::partition::Partition;
use cloudpillar_backend::writer::history::{History, LOGS, TELEMETRY, VERSIONS};
use cloudpillar_backend::writer::{Writer, WriterOptions};
use common::rig::HubRig;
use futures::TryStreamExt;
use mongodb::bson::doc;
use serde_json::json;

/// A FerretDB of this test's own, run by the service script on a free port, so stopping it
/// disturbs no other test.
struct OwnFerretDb {
    services: tempfile::TempDir,
    port: u16,
}

impl OwnFerretDb {
    fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../k3s-dev/services/ferretdb")
    }

    async fn run(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::new(Self::script())
            .args(args)
            .env("CP_SERVICES", self.services.path())
            .env("CP_FERRETDB_PORT", self.port.to_string())
            .output()
            .await
            .expect("service script runs");
        assert!(
            output.status.success(),
            "ferretdb {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    }

    async fn start() -> (Self, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let own = Self {
            services: tempfile::tempdir().expect("tempdir"),
            port,
        };
        let url = own.run(&["start"]).await;
        (own, url)
    }
}

impl Drop for OwnFerretDb {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::script())
            .arg("stop")
            .env("CP_SERVICES", self.services.path())
            .env("CP_FERRETDB_PORT", self.port.to_string())
            .output();
    }
}

/// Sends `count` events round-robin over `devices`: telemetry, log records, reported patches.
async fn produce(rig: &HubRig, devices: &[&str], start: usize, count: usize) {
    let core = rig.core();
    for n in start..start + count {
        let device = devices[n % devices.len()];
        match n % 3 {
            0 => {
                let body = serde_json::to_vec(&json!({ "n": n, "temp": 20.5 })).expect("json");
                core.d2c(device, body, BTreeMap::new(), BTreeMap::new())
                    .await
                    .expect("d2c");
            }
            1 => {
                let body = serde_json::to_vec(&json!({ "n": n, "line": "disk ok" })).expect("json");
                let properties = [("messageType".to_owned(), "Log".to_owned())].into();
                core.d2c(device, body, properties, BTreeMap::new())
                    .await
                    .expect("log");
            }
            _ => {
                let patch =
                    json!({ "n": n, "deviceState": if n % 2 == 0 { "BUSY" } else { "READY" } });
                core.patch_reported(device, patch).await.expect("reported");
            }
        }
    }
}

/// Starts a writer of `rig`'s events into the MongoDB at `url`, batches of `batch` records,
/// its checkpoint in a filesystem store under `dir`.
async fn start_writer(
    rig: &HubRig,
    url: &str,
    dir: &tempfile::TempDir,
    batch: usize,
) -> (History, CheckpointStore, tokio::task::JoinHandle<()>) {
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .expect("stores");
    let history = History::connect(url, "history").await.expect("history");
    let options = WriterOptions {
        batch,
        wait: Duration::from_millis(200),
        retry_first: Duration::from_millis(50),
        retry_ceiling: Duration::from_secs(1),
    };
    let checkpoints = CheckpointStore::new(stores.state.clone(), "writer", Partition::all());
    let writer = Writer::new(
        rig.link(),
        history.clone(),
        checkpoints.clone(),
        Partition::all(),
        options,
    );
    (history, checkpoints, tokio::spawn(writer.run()))
}

async fn count(history: &History, collection: &str) -> u64 {
    history
        .collection(collection)
        .count_documents(doc! {})
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_stopped_and_started_mid_stream_loses_no_record() {
    let (ferret, url) = OwnFerretDb::start().await;
    let rig = HubRig::start().await;
    let devices = ["dev-w0", "dev-w1", "dev-w2", "dev-w3"];
    for device in devices {
        rig.add_device(device).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (history, checkpoints, running) = start_writer(&rig, &url, &dir, 100).await;

    // Before, during and after the outage.
    produce(&rig, &devices, 0, 300).await;
    while count(&history, TELEMETRY).await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ferret.run(&["stop", "--keep-data"]).await;
    let before_outage = *rig.core().bus.last_sequence().borrow();
    produce(&rig, &devices, 300, 300).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let saved: cloudpillar_backend::checkpoint::Checkpoint<()> =
        checkpoints.load().await.expect("checkpoint");
    assert!(
        saved.next <= before_outage + 1,
        "checkpoint passed events that were not stored"
    );
    ferret.run(&["start"]).await;
    produce(&rig, &devices, 600, 150).await;

    let (telemetry, logs, versions) = (250, 250, 250);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let now = (
            count(&history, TELEMETRY).await,
            count(&history, LOGS).await,
            count(&history, VERSIONS).await,
        );
        if now == (telemetry, logs, versions) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "records after the outage: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every event is there once, and each device's records are in stream order.
    for device in devices {
        for collection in [TELEMETRY, LOGS, VERSIONS] {
            let records: Vec<_> = history
                .collection(collection)
                .find(doc! { "deviceId": device })
                .sort(doc! { "time": 1, "seq": 1 })
                .await
                .expect("find")
                .try_collect()
                .await
                .expect("read");
            let seqs: Vec<i64> = records
                .iter()
                .map(|d| d.get_i64("seq").expect("seq"))
                .collect();
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                seqs, sorted,
                "{device} {collection} out of order or duplicated"
            );
        }
    }
    running.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_nesting_the_database_would_refuse_are_stored_and_the_stream_moves_on() {
    let (_ferret, url) = OwnFerretDb::start().await;
    let rig = HubRig::start().await;
    rig.add_device("dev-k").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (history, _, running) = start_writer(&rig, &url, &dir, 10).await;

    let deep = (0..90).fold(json!("bottom"), |inner, _| json!({ "k": inner }));
    let hostile = json!({"type": "Log", "a.b": 1, "": 2, "nul\u{0}key": 3, "deep": deep});
    let log = [("messageType".to_owned(), "Log".to_owned())].into();
    let core = rig.core();
    core.d2c(
        "dev-k",
        serde_json::to_vec(&hostile).expect("json"),
        log,
        BTreeMap::new(),
    )
    .await
    .expect("hostile log");
    let after = json!({"type": "Log", "line": "after the hostile one"});
    let log = [("messageType".to_owned(), "Log".to_owned())].into();
    core.d2c(
        "dev-k",
        serde_json::to_vec(&after).expect("json"),
        log,
        BTreeMap::new(),
    )
    .await
    .expect("log");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(&history, LOGS).await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer stalled on a log the database refuses"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = history
        .collection(LOGS)
        .find_one(doc! { "body.line": { "$exists": false } })
        .await
        .expect("find")
        .expect("the hostile log");
    let body = stored
        .get_document("body")
        .unwrap_or_else(|_| panic!("body: {stored}"));
    assert_eq!(body.get_i64("a\u{FF0E}b").expect("dotted key"), 1);
    assert_eq!(body.get_i64("_").expect("empty key"), 2);
    assert_eq!(body.get_i64("nul\u{FFFD}key").expect("NUL key"), 3);
    // Past the nesting kept as documents, the rest is its JSON text.
    let mut level = body.get_document("deep").expect("deep");
    let mut depth = 1;
    while let Ok(inner) = level.get_document("k") {
        level = inner;
        depth += 1;
    }
    assert!(depth < 70, "nested {depth} levels as documents");
    assert!(level.get_str("k").expect("JSON text").contains("bottom"));
    running.abort();
}
