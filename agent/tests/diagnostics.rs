//! RunDiagnostics end to end: a real agent on the edge hub (in process, TLS on loopback), the
//! real backend streamer and a real key holder, called through the agent's local API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudpillar_backend::blob::{BlobConfig, BlobStores, Container};
use cloudpillar_backend::hub_link::{C2dSend, EmbeddedHub, EventPage, HubLink, HubLinkError};
use cloudpillar_backend::keys::{KeyHolder, LocalSigner};
use cloudpillar_backend::partition::Partition;
use cloudpillar_backend::streamer::{Streamer, StreamerOptions};
use cloudpillar_protocol::messages::C2dMessage;
use serde_json::Value;

use common::{TestHub, parse_config};

const STEPS: [&str; 5] = ["upload", "sign", "download", "verify", "compare"];

struct Backend {
    stores: BlobStores,
    _dir: tempfile::TempDir,
}

async fn stores() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .unwrap();
    Backend { stores, _dir: dir }
}

/// Starts the streamer on the hub, signing with the key the agents trust.
fn start_streamer(
    hub: &TestHub,
    link: Arc<dyn HubLink>,
    stores: &BlobStores,
) -> tokio::task::JoinHandle<()> {
    let holder = KeyHolder::new(Arc::new(LocalSigner::new(hub.signer.clone())));
    tokio::spawn(streamer(link, stores).with_key_holder(holder).run())
}

fn streamer(link: Arc<dyn HubLink>, stores: &BlobStores) -> Streamer {
    let options = StreamerOptions {
        wait: Duration::from_millis(200),
        ..StreamerOptions::default()
    };
    Streamer::new(link, stores.clone(), None, Partition::all(), options)
}

fn embedded(hub: &TestHub) -> Arc<dyn HubLink> {
    Arc::new(EmbeddedHub::new(hub.hub.core().clone()))
}

/// Starts an agent for `device` and waits until it is connected.
async fn start_agent(
    hub: &TestHub,
    device: &str,
    dir: &std::path::Path,
) -> cloudpillar_agent::daemon::Agent {
    let config = parse_config(&hub.agent_config(device, dir, "").await);
    let agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported(device, "connected", |r| r["health"] == "connected")
        .await;
    agent
}

async fn run_diagnostics(
    hub: &TestHub,
    agent_api: std::net::SocketAddr,
    device: &str,
) -> (u16, Value) {
    let response = hub
        .http
        .get(format!("http://{agent_api}/api/v1/RunDiagnostics"))
        .header("CP-DEVICE-ID", device)
        .header("CP-SECRET-KEY", "s3cret")
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("the call returns");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_diagnostics_passes_through_the_real_hub_streamer_and_key_holder() {
    let hub = TestHub::start().await;
    let backend = stores().await;
    let _streamer = start_streamer(&hub, embedded(&hub), &backend.stores);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&hub, "diag-ok", dir.path()).await;

    let mut file_ids = Vec::new();
    for _ in 0..2 {
        let (status, report) = run_diagnostics(&hub, agent.api_addr, "diag-ok").await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["result"], "Success", "{report}");
        assert_eq!(report["size"], 128 * 1024);
        let names: Vec<&str> = report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, STEPS);
        for name in STEPS {
            let step = step(&report, name);
            assert_eq!(step["status"], "Success", "{report}");
            assert!(step["durationMs"].as_f64().unwrap() >= 0.0);
        }
        assert!(
            step(&report, "verify")["detail"]
                .as_str()
                .unwrap()
                .contains(hub.signer.key_id()),
            "{report}"
        );

        // The file really went through the upload area the streamer keeps.
        let file_id = report["fileId"].as_str().unwrap().to_owned();
        let path = file_id
            .strip_prefix("uploads/")
            .expect("named in the uploads area");
        assert!(path.starts_with("diag-ok/diagnostics/"), "{file_id}");
        assert_eq!(backend.stores.uploads.size(path).await.unwrap(), 128 * 1024);
        file_ids.push(file_id);
    }
    assert_ne!(file_ids[0], file_ids[1], "every run uses a new file");
    assert!(
        !dir.path().join("state/diagnostics").exists(),
        "local test files are removed"
    );
}

/// The real hub link, except that right before a `FileSigned` answer goes out the signed blob
/// is changed in the store: what the device downloads then no longer matches its signature.
#[derive(Debug)]
struct TamperAfterSigning {
    inner: Arc<dyn HubLink>,
    uploads: Container,
}

#[async_trait]
impl HubLink for TamperAfterSigning {
    async fn read_events(
        &self,
        from: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<EventPage, HubLinkError> {
        self.inner.read_events(from, limit, wait).await
    }

    async fn send_c2d(&self, device: &str, message: C2dSend) -> Result<(), HubLinkError> {
        if let Ok(C2dMessage::FileSigned(signed)) = C2dMessage::decode(&message.body) {
            let path = signed.file_id.strip_prefix("uploads/").unwrap();
            let mut bytes = self.uploads.read_all(path).await.unwrap().to_vec();
            bytes[1000] ^= 0x5a;
            self.uploads.put(path, bytes.into()).await.unwrap();
        }
        self.inner.send_c2d(device, message).await
    }

    async fn c2d_pending(&self, device: &str) -> Result<Option<usize>, HubLinkError> {
        self.inner.c2d_pending(device).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_diagnostics_reports_a_blob_changed_after_signing_as_failing_verification() {
    let hub = TestHub::start().await;
    let backend = stores().await;
    let link = Arc::new(TamperAfterSigning {
        inner: embedded(&hub),
        uploads: backend.stores.uploads.clone(),
    });
    let _streamer = start_streamer(&hub, link, &backend.stores);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&hub, "diag-tamper", dir.path()).await;

    let (status, report) = run_diagnostics(&hub, agent.api_addr, "diag-tamper").await;
    assert_eq!(status, 502, "{report}");
    assert_eq!(report["result"], "Failure");
    assert_eq!(report["failedStep"], "verify", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("the signature does not verify over the downloaded bytes"),
        "{error}"
    );
    for name in ["upload", "sign", "download"] {
        assert_eq!(step(&report, name)["status"], "Success", "{report}");
    }
    assert_eq!(step(&report, "verify")["status"], "Failure");
    assert_eq!(step(&report, "compare")["status"], "Skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_diagnostics_without_a_streamer_fails_at_sign_with_a_timeout_and_runs_one_at_a_time() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The test configuration sets transfer.stall_secs = 2: waiting steps give up after 4 s.
    let agent = start_agent(&hub, "diag-alone", dir.path()).await;

    let first = {
        let (http, api) = (hub.http.clone(), agent.api_addr);
        tokio::spawn(async move {
            let response = http
                .get(format!("http://{api}/api/v1/RunDiagnostics"))
                .header("CP-DEVICE-ID", "diag-alone")
                .header("CP-SECRET-KEY", "s3cret")
                .timeout(Duration::from_secs(120))
                .send()
                .await
                .expect("the call returns");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON answer"))
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, second) = run_diagnostics(&hub, agent.api_addr, "diag-alone").await;
    assert_eq!(status, 409, "{second}");
    assert_eq!(second["error"], "diagnostics are already running");

    let (status, report) = first.await.unwrap();
    assert_eq!(status, 502, "{report}");
    assert_eq!(report["failedStep"], "sign", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(
        error.contains("no answer to SignFile within 4s")
            && error.contains("is the backend streamer running"),
        "{error}"
    );
    assert_eq!(step(&report, "upload")["status"], "Success");
    for name in ["download", "verify", "compare"] {
        assert_eq!(step(&report, name)["status"], "Skipped", "{report}");
    }

    // Once a streamer runs, the next run passes (the late answer to the old request is ignored).
    let backend = stores().await;
    let _streamer = start_streamer(&hub, embedded(&hub), &backend.stores);
    let (status, report) = run_diagnostics(&hub, agent.api_addr, "diag-alone").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["result"], "Success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_diagnostics_with_a_streamer_lacking_a_key_holder_fails_at_sign_with_its_reason() {
    let hub = TestHub::start().await;
    let backend = stores().await;
    let _streamer = tokio::spawn(streamer(embedded(&hub), &backend.stores).run());
    let dir = tempfile::tempdir().unwrap();
    let agent = start_agent(&hub, "diag-nokeys", dir.path()).await;

    let (status, report) = run_diagnostics(&hub, agent.api_addr, "diag-nokeys").await;
    assert_eq!(status, 502, "{report}");
    assert_eq!(report["failedStep"], "sign", "{report}");
    assert_eq!(
        report["error"],
        "the back end did not sign the file: this streamer has no key holder configured"
    );
    assert_eq!(step(&report, "download")["status"], "Skipped");
}
