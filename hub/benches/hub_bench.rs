//! Edge hub figures: connections, desired-patch notification latency, durable reported
//! patches per second, RSS. Run: `cargo bench -p cloudpillar-hub --bench hub_bench`
//! (`HUB_BENCH_DEVICES`, default 1000; 10000 needs `ulimit -n 65536`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloudpillar_hub::registry::DeviceRecord;
use cloudpillar_hub::{Hub, HubConfig, sas};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::mpsc;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

#[tokio::main]
async fn main() {
    let devices: usize = std::env::var("HUB_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = HubConfig::new(dir.path());
    config.insecure_loopback = true;
    let hub = Hub::start(config).await.unwrap();
    let core = hub.core().clone();
    let key = sas::random_key();
    let port = hub.mqtt_addr().port();
    let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 7200;

    // Connections.
    let started = Instant::now();
    let mut clients = Vec::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant, String)>();
    for i in 0..devices {
        let id = format!("bench-{i}");
        let mut record: DeviceRecord = serde_json::from_value(json!({"deviceId": id})).unwrap();
        record.authentication.symmetric_key.primary_key = Some(key.clone());
        core.put_device(&id, record, None).await.unwrap();
        let token =
            sas::generate(&key, &format!("edgehub.local/devices/{id}"), expiry, None).unwrap();
        let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", port);
        opts.set_credentials(format!("edgehub.local/{id}/?api-version=2021-04-12"), token);
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        opts.set_keep_alive(Duration::from_secs(120));
        let (client, mut el) = AsyncClient::new(opts, 256);
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                if let Event::Incoming(Packet::Publish(p)) = ev {
                    let _ = tx.send((i, Instant::now(), p.topic));
                }
            }
        });
        client
            .subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtMostOnce)
            .await
            .unwrap();
        client
            .subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
            .await
            .unwrap();
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = core.store.counter("event_seq").unwrap();
    println!(
        "connections: {devices} devices in {:.1}s ({connected} connect events), RSS {:.0} MiB (hub and clients in one process)",
        started.elapsed().as_secs_f64(),
        rss_mib()
    );

    // Desired patch -> device notification latency at 1,000 patches/s for 5 s.
    let total = 5000;
    let sent_at = Arc::new(std::sync::Mutex::new(vec![None::<Instant>; total]));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for n in 0..total {
        tick.tick().await;
        let id = format!("bench-{}", n % devices);
        let core = core.clone();
        let sent_at = sent_at.clone();
        tokio::spawn(async move {
            sent_at.lock().unwrap()[n] = Some(Instant::now());
            core.write_twin(
                &id,
                json!({"properties": {"desired": {"n": n}}}),
                None,
                false,
            )
            .await
            .unwrap();
        });
    }
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen_version = vec![1u64; devices];
    while latencies.len() < total && Instant::now() < deadline {
        let Ok(Some((i, at, topic))) =
            tokio::time::timeout(Duration::from_secs(2), rx.recv()).await
        else {
            break;
        };
        if let Some(v) = topic.strip_prefix("$iothub/twin/PATCH/properties/desired/?$version=") {
            let v: u64 = v.parse().unwrap();
            seen_version[i] = v;
            // Version v of device i is patch number (v - 2) * devices + i.
            let n = (v as usize - 2) * devices + i;
            if let Some(Some(sent)) = sent_at.lock().unwrap().get(n) {
                latencies.push(at.duration_since(*sent));
            }
        }
    }
    latencies.sort();
    if !latencies.is_empty() {
        println!(
            "desired notify at 1000/s: {} of {total} seen, p50 {:?}, p99 {:?}",
            latencies.len(),
            pct(&latencies, 0.5),
            pct(&latencies, 0.99)
        );
    }

    // Durable reported patches: every device publishes as fast as 204s come back, 10 s.
    let acked = Arc::new(AtomicU64::new(0));
    let window = Duration::from_secs(10);
    let start = Instant::now();
    let in_flight = 8;
    for (i, client) in clients.iter().enumerate().take(devices.min(500)) {
        for k in 0..in_flight {
            client
                .publish(
                    format!("$iothub/twin/PATCH/properties/reported/?$rid={i}-{k}"),
                    QoS::AtMostOnce,
                    false,
                    r#"{"p":0}"#,
                )
                .await
                .unwrap();
        }
    }
    while start.elapsed() < window {
        let Ok(Some((i, _, topic))) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await
        else {
            break;
        };
        if topic.starts_with("$iothub/twin/res/204/") {
            acked.fetch_add(1, Ordering::Relaxed);
            let _ = clients[i].try_publish(
                "$iothub/twin/PATCH/properties/reported/?$rid=x",
                QoS::AtMostOnce,
                false,
                r#"{"p":1}"#,
            );
        }
    }
    let rate = acked.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!(
        "durable reported patches: {rate:.0}/s (each 204 after fsync of its batch), RSS {:.0} MiB",
        rss_mib()
    );
    hub.shutdown().await;
}
