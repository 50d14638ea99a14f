//! Edge hub figures: connections, desired-patch notification latency, durable reported
//! patches per second, RSS. Run: `cargo bench -p cloudpillar-hub --bench hub_bench`
//! (`HUB_BENCH_DEVICES`, default 1000). The hub runs as its own process (the
//! `cloudpillar-hub` binary, plain loopback) so its RSS and file descriptors are its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloudpillar_hub::sas;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::mpsc;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// The 1-minute load average, to judge how much the machine was shared.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

/// CPU time (ns) of every thread of `pid` so far, summed by thread name.
fn cpu_by_thread(pid: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let ns: u64 = std::fs::read_to_string(dir.join("schedstat"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // Worker threads of one pool share a name prefix (`hub-mqtt:worker`, `tokio-runtime-w`).
        *out.entry(name.trim().to_string()).or_insert(0) += ns;
    }
    out
}

/// Microseconds of CPU per item between two `cpu_by_thread` readings: total, then by thread.
fn cpu_per_item(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    items: u64,
) -> String {
    let per = |ns: u64| ns as f64 / 1000.0 / items.max(1) as f64;
    let spent: Vec<(String, u64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect();
    let total: u64 = spent.iter().map(|(_, v)| v).sum();
    let parts: Vec<String> = spent
        .iter()
        .filter(|(_, v)| *v * 50 > total)
        .map(|(k, v)| format!("{k} {:.1}", per(*v)))
        .collect();
    format!("{:.1} us ({})", per(total), parts.join(", "))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: serde_json::Value) {
        let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 3600;
        let token = sas::generate(&self.key, "edgehub.local", expiry, Some("iothubowner")).unwrap();
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", token)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
    }
}

#[tokio::main]
async fn main() {
    let devices: usize = std::env::var("HUB_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().unwrap();
    let (mqtt_port, http_port) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cloudpillar-hub"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--insecure-loopback",
        ])
        .args([
            "--mqtt",
            &format!("127.0.0.1:{mqtt_port}"),
            "--http",
            &format!("127.0.0.1:{http_port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let key_file = dir.path().join("policy.key");
    while !key_file.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tls = rustls::ClientConfig::builder_with_provider(cloudpillar_hub::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let api = Arc::new(Api {
        http: reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap(),
        base: format!("http://127.0.0.1:{http_port}"),
        key: std::fs::read_to_string(&key_file)
            .unwrap()
            .trim()
            .to_string(),
    });
    let device_key = sas::random_key();
    let expiry = u64::try_from(chrono::Utc::now().timestamp()).unwrap() + 7200;

    // Connections.
    let started = Instant::now();
    let mut clients = Vec::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant, String)>();
    for i in 0..devices {
        let id = format!("bench-{i}");
        let auth = json!({"type": "sas", "symmetricKey": {"primaryKey": device_key, "secondaryKey": device_key}});
        api.send(
            reqwest::Method::PUT,
            &format!("/devices/{id}"),
            json!({"deviceId": id, "authentication": auth}),
        )
        .await;
        let token = sas::generate(
            &device_key,
            &format!("edgehub.local/devices/{id}"),
            expiry,
            None,
        )
        .unwrap();
        let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", mqtt_port);
        opts.set_credentials(format!("edgehub.local/{id}/?api-version=2021-04-12"), token);
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        opts.set_keep_alive(Duration::from_secs(300));
        let (client, mut el) = AsyncClient::new(opts, 64);
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
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!(
        "connections: {devices} devices registered and connected in {:.1}s; hub RSS {:.0} MiB",
        started.elapsed().as_secs_f64(),
        rss_mib(pid)
    );

    // Desired patch (REST PATCH /twins) -> device notification latency at 1,000 patches/s, 5 s.
    let total = 5000;
    let sent_at = Arc::new(std::sync::Mutex::new(vec![None::<Instant>; total]));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for n in 0..total {
        tick.tick().await;
        let id = format!("bench-{}", n % devices);
        let (api, sent_at) = (api.clone(), sent_at.clone());
        tokio::spawn(async move {
            sent_at.lock().unwrap()[n] = Some(Instant::now());
            let patch = json!({"properties": {"desired": {"n": n}}});
            api.send(reqwest::Method::PATCH, &format!("/twins/{id}"), patch)
                .await;
        });
    }
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while latencies.len() < total && Instant::now() < deadline {
        let Ok(Some((i, at, topic))) =
            tokio::time::timeout(Duration::from_secs(3), rx.recv()).await
        else {
            break;
        };
        if let Some(v) = topic.strip_prefix("$iothub/twin/PATCH/properties/desired/?$version=") {
            // Desired version v of device i came from patch number (v - 2) * devices + i.
            let n = (v.parse::<usize>().unwrap() - 2) * devices + i;
            if let Some(Some(sent)) = sent_at.lock().unwrap().get(n) {
                latencies.push(at.duration_since(*sent));
            }
        }
    }
    latencies.sort();
    if !latencies.is_empty() {
        println!(
            "desired patch -> notification at 1000/s over REST: {} of {total} seen, p50 {:?}, p99 {:?}",
            latencies.len(),
            pct(&latencies, 0.5),
            pct(&latencies, 0.99)
        );
    }

    // Durable reported patches: 500 devices keep 8 patches each in flight for 10 s.
    let acked = Arc::new(AtomicU64::new(0));
    let window = Duration::from_secs(10);
    let (hub_cpu, own_cpu) = (cpu_by_thread(&pid.to_string()), cpu_by_thread("self"));
    let start = Instant::now();
    for (i, client) in clients.iter().enumerate().take(devices.min(500)) {
        for k in 0..8 {
            let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid={i}-{k}");
            client
                .publish(topic, QoS::AtMostOnce, false, r#"{"p":0}"#)
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
            let topic = "$iothub/twin/PATCH/properties/reported/?$rid=x";
            let _ = clients[i].try_publish(topic, QoS::AtMostOnce, false, PATCH);
        }
    }
    let done = acked.load(Ordering::Relaxed);
    let rate = done as f64 / start.elapsed().as_secs_f64();
    let (hub_cpu_after, own_cpu_after) = (cpu_by_thread(&pid.to_string()), cpu_by_thread("self"));
    println!(
        "durable reported patches: {rate:.0}/s (each 204 after the fsync of its batch); hub RSS {:.0} MiB",
        rss_mib(pid)
    );
    println!(
        "CPU per acknowledged patch: hub {}; bench clients {}; load average {}",
        cpu_per_item(&hub_cpu, &hub_cpu_after, done),
        cpu_per_item(&own_cpu, &own_cpu_after, done),
        load_average()
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(clients);

    if let Some(relay) = mosquitto_relay(devices.min(500)).await {
        println!(
            "mosquitto relaying the same {}-byte messages (QoS 1 in, QoS 0 out, no persistence): {relay:.0}/s; hub/mosquitto = {:.2}",
            PATCH.len(),
            rate / relay
        );
    }
}

/// The reported patch body used above, relayed through Mosquitto for comparison.
const PATCH: &str = r#"{"p":1}"#;

/// Round trips per second through Debian's `mosquitto` (when installed) with the same
/// pattern: each client keeps 8 messages in flight and gets each back on its own topic.
async fn mosquitto_relay(clients: usize) -> Option<f64> {
    let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\n")).unwrap();
    let mut broker = std::process::Command::new(binary)
        .args(["-c", conf.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<usize>();
    let mut senders = Vec::new();
    for i in 0..clients {
        let mut opts = MqttOptions::new(format!("relay-{i}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(300));
        let (client, mut el) = AsyncClient::new(opts, 64);
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(ev) = el.poll().await {
                if let Event::Incoming(Packet::Publish(_)) = ev {
                    let _ = tx.send(i);
                }
            }
        });
        client
            .subscribe(format!("relay/{i}"), QoS::AtMostOnce)
            .await
            .unwrap();
        senders.push(client);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, client) in senders.iter().enumerate() {
        for _ in 0..8 {
            client
                .publish(format!("relay/{i}"), QoS::AtLeastOnce, false, PATCH)
                .await
                .unwrap();
        }
    }
    let (start, mut relayed) = (Instant::now(), 0u64);
    while start.elapsed() < Duration::from_secs(10) {
        let Ok(Some(i)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await else {
            break;
        };
        relayed += 1;
        let _ = senders[i].try_publish(format!("relay/{i}"), QoS::AtLeastOnce, false, PATCH);
    }
    let _ = broker.kill();
    let _ = broker.wait();
    Some(relayed as f64 / start.elapsed().as_secs_f64())
}
