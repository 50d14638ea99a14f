//! An embedded edge hub and devices driven through the hub's own service calls.
//!
//! A test device sends D2C messages through the hub's D2C entry point and takes its C2D
//! messages off the hub's durable queue (completing each one), as the MQTT endpoint does for a
//! connected device.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudpillar_backend::hub_link::EmbeddedHub;
use cloudpillar_hub::core::Core;
use cloudpillar_hub::{Hub, HubConfig, HubHandle};
use cloudpillar_protocol::crc::crc32;
use cloudpillar_protocol::messages::{C2dMessage, D2cMessage, MESSAGE_TYPE_PROPERTY};
use serde_json::json;

/// A running hub in a temporary directory.
pub struct HubRig {
    pub handle: HubHandle,
    pub dir: tempfile::TempDir,
}

impl HubRig {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = HubConfig {
            insecure_loopback: true,
            ..HubConfig::new(dir.path())
        };
        let handle = Hub::start(config).await.expect("hub starts");
        Self { handle, dir }
    }

    /// A hub serving TLS with its generated development CA, as a separate deployment would.
    pub async fn start_tls() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let handle = Hub::start(HubConfig::new(dir.path()))
            .await
            .expect("hub starts");
        Self { handle, dir }
    }

    /// Settings a role in its own process would use to reach this hub's REST API.
    pub fn rest_args(&self) -> cloudpillar_backend::roles::HubArgs {
        cloudpillar_backend::roles::HubArgs {
            hub_url: Some(format!(
                "https://localhost:{}",
                self.handle.http_addr().port()
            )),
            hub_hostname: self.handle.hostname().to_owned(),
            hub_policy_name: self.handle.policy_name().to_owned(),
            hub_policy_key_file: Some(self.handle.policy_key_file().to_owned()),
            hub_ca_file: self.handle.ca_cert_path().map(ToOwned::to_owned),
        }
    }

    pub fn core(&self) -> Arc<Core> {
        self.handle.core().clone()
    }

    pub fn link(&self) -> Arc<EmbeddedHub> {
        Arc::new(EmbeddedHub::new(self.core()))
    }

    pub async fn add_device(&self, id: &str) {
        let record = serde_json::from_value(json!({ "deviceId": id })).expect("record");
        self.core()
            .put_device(id, record, None)
            .await
            .expect("device registered");
    }

    /// Sends a protocol D2C message from `device`.
    pub async fn send_d2c(&self, device: &str, message: &D2cMessage) {
        let body = message.encode().expect("encodes");
        let properties = [(
            MESSAGE_TYPE_PROPERTY.to_owned(),
            message.message_type().to_owned(),
        )]
        .into();
        self.core()
            .d2c(device, body, properties, BTreeMap::new())
            .await
            .expect("d2c accepted");
    }
}

/// What one device received.
#[derive(Debug, Default)]
pub struct Received {
    pub file: Vec<u8>,
    pub size: Option<u64>,
    /// How often each chunk offset arrived.
    pub chunk_counts: HashMap<u64, u32>,
    /// `(start, end, crc matched)` per `VerifyRangeCRC`, in arrival order.
    pub verified: Vec<(u64, u64, bool)>,
    /// Deepest queue the device saw.
    pub max_queue: usize,
}

impl Received {
    /// True when the verified ranges cover the whole file and all matched.
    pub fn complete(&self) -> bool {
        let Some(size) = self.size else { return false };
        let mut ranges: Vec<(u64, u64)> = self
            .verified
            .iter()
            .filter(|v| v.2)
            .map(|v| (v.0, v.1))
            .collect();
        ranges.sort_unstable();
        let mut end = 0;
        for (start, stop) in ranges {
            if start > end {
                return false;
            }
            end = end.max(stop);
        }
        end >= size && self.verified.iter().all(|v| v.2)
    }
}

/// Connects `device` to the hub in process and takes its C2D messages off the durable queue,
/// `per_poll` at a time, whenever the hub signals new ones (as it signals an MQTT session).
pub fn consume(
    core: Arc<Core>,
    device: &str,
    per_poll: usize,
) -> (Arc<Mutex<Received>>, tokio::task::JoinHandle<()>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let state = received.clone();
    let device = device.to_owned();
    let task = tokio::spawn(async move {
        let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
        core.attach(&device, wake).await.expect("device attached");
        loop {
            let pending = core.c2d_pending(&device).expect("queue readable");
            if pending.is_empty() {
                let _ = tokio::time::timeout(Duration::from_millis(100), woken.recv()).await;
                continue;
            }
            {
                let mut got = state.lock().expect("lock");
                got.max_queue = got.max_queue.max(pending.len());
            }
            // Apply in queue order, then acknowledge the batch together, as a device
            // acknowledging each QoS 1 delivery without waiting for the previous one would.
            let mut taken = Vec::new();
            for (seq, message) in pending.into_iter().take(per_poll) {
                let decoded = C2dMessage::decode(&message.body).expect("protocol message");
                apply(&mut state.lock().expect("lock"), decoded);
                taken.push(seq);
            }
            let completes = taken.iter().map(|&seq| core.c2d_complete(&device, seq));
            for done in futures::future::join_all(completes).await {
                done.expect("completed");
            }
        }
    });
    (received, task)
}

fn apply(got: &mut Received, message: C2dMessage) {
    match message {
        C2dMessage::DownloadFileChunk(chunk) => {
            if let Some(size) = chunk.total_size {
                got.size = Some(size);
                got.file.resize(size as usize, 0);
            }
            let start = chunk.offset as usize;
            got.file[start..start + chunk.data.len()].copy_from_slice(&chunk.data);
            *got.chunk_counts.entry(chunk.offset).or_default() += 1;
        }
        C2dMessage::VerifyRangeCrc(range) => {
            let bytes = &got.file[range.range_start as usize..range.range_end as usize];
            let ok = crc32(bytes) == range.crc;
            got.verified.push((range.range_start, range.range_end, ok));
        }
        C2dMessage::UpgradeProvisioning(_)
        | C2dMessage::FileSigned(_)
        | C2dMessage::SignFileFailed(_) => {}
    }
}

/// Waits until `check` holds, failing the test after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
