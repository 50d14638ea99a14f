//! A scripted stand-in for the backend streamer: answers StreamRange requests read from
//! the hub's event stream with DownloadFileChunk and VerifyRangeCRC messages sent through
//! the hub's C2D REST extension.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cloudpillar_protocol::messages::{C2dMessage, DownloadFileChunk, VerifyRangeCrc};
use reqwest::Method;

use super::TestHub;

/// What the streamer needs to send C2D messages (the hub handle itself is not shareable).
#[derive(Clone)]
pub struct C2dSender {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl C2dSender {
    pub fn new(hub: &TestHub) -> Self {
        Self {
            http: hub.http.clone(),
            base: hub.base.clone(),
            token: hub.hub.service_token(Duration::from_secs(3600)),
        }
    }
}

/// How the scripted streamer behaves.
#[derive(Clone)]
pub struct Script {
    pub device: String,
    pub file_id: String,
    pub file: Arc<Vec<u8>>,
    pub chunk: usize,
    /// Pause between chunks.
    pub pace: Duration,
    /// Send a wrong CRC for every range.
    pub corrupt_crc: bool,
}

/// Counters a test can read.
#[derive(Default)]
pub struct Seen {
    /// StreamRange requests received.
    pub requests: AtomicU32,
    /// Requests starting at a non-zero offset.
    pub resumes: AtomicU32,
    /// First offset of the last request.
    pub last_from: std::sync::atomic::AtomicU64,
}

/// Runs the streamer until the hub stops; returns counters.
pub fn start(hub: &TestHub, script: Script) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let counters = Arc::clone(&seen);
    let mut events = hub.hub.events();
    let hub = C2dSender::new(hub);
    tokio::spawn(async move {
        let mut sender: Option<tokio::task::JoinHandle<()>> = None;
        while let Ok(event) = events.recv().await {
            if event.device_id != script.device
                || event.properties.get("messageType").map(String::as_str) != Some("StreamRange")
            {
                continue;
            }
            let body = event.body.clone().unwrap_or_default();
            if body["fileId"] != script.file_id.as_str() {
                continue;
            }
            let from = body["from"].as_u64().unwrap_or(0);
            counters.requests.fetch_add(1, Ordering::SeqCst);
            counters.last_from.store(from, Ordering::SeqCst);
            if from > 0 {
                counters.resumes.fetch_add(1, Ordering::SeqCst);
            }
            if let Some(task) = sender.take() {
                task.abort();
            }
            sender = Some(tokio::spawn(send_from(hub.clone(), script.clone(), from)));
        }
    });
    seen
}

async fn send_from(hub: C2dSender, script: Script, from: u64) {
    let len = script.file.len() as u64;
    let mut offset = from;
    while offset < len {
        let end = (offset + script.chunk as u64).min(len);
        let data = script.file[offset as usize..end as usize].to_vec();
        let crc = cloudpillar_protocol::crc::crc32(&data) ^ u32::from(script.corrupt_crc);
        let chunk = C2dMessage::DownloadFileChunk(DownloadFileChunk {
            file_id: script.file_id.clone(),
            offset,
            data,
            total_size: Some(len),
        });
        let verify = C2dMessage::VerifyRangeCrc(VerifyRangeCrc {
            file_id: script.file_id.clone(),
            range_start: offset,
            range_end: end,
            crc,
        });
        for message in [chunk, verify] {
            send(&hub, &script.device, &message).await;
        }
        offset = end;
        tokio::time::sleep(script.pace).await;
    }
}

/// Sends one C2D message, waiting while the device's queue is full.
pub async fn send(hub: &C2dSender, device: &str, message: &C2dMessage) {
    let body = message.encode().unwrap();
    let url = format!(
        "{}/devices/{device}/messages/deviceBound?api-version=2021-04-12",
        hub.base
    );
    for _ in 0..200 {
        let sent = hub
            .http
            .request(Method::POST, &url)
            .header("Authorization", &hub.token)
            .header("content-type", "application/json")
            .header("iothub-app-messageType", message.message_type())
            .body(body.clone())
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("C2D queue stayed full");
}
