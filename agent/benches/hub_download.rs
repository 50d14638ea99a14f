//! A chunked download end to end: the agent binary as its own process, connected to an edge
//! hub over MQTT with TLS on 127.0.0.1, runs a signed recipe that downloads one file through
//! the real backend streamer (embedded hub link, filesystem blob store). Every range is
//! CRC-checked and written to disk, the file signature is checked, and the file is moved into
//! place. Prints MB/s from the desired-property patch to the reported success, with the CPU
//! time of the agent process and of this process (hub and streamer) beside it; each figure
//! over `CP_BENCH_RUNS` runs (default 3) as min / median / max. `CP_BENCH_FILE_MIB` sets the
//! file size (default 256).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudpillar_backend::blob::{BlobConfig, BlobStores};
use cloudpillar_backend::hub_link::EmbeddedHub;
use cloudpillar_backend::partition::Partition;
use cloudpillar_backend::streamer::{Streamer, StreamerOptions};
use serde_json::json;
use sha2::{Digest, Sha256};

/// User plus system CPU seconds of a process (`self` or a pid), at 100 ticks a second.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    rate: f64,
    agent_cpu: f64,
    own_cpu: f64,
}

async fn download_once(mib: usize, run: usize) -> Run {
    let hub = common::TestHub::start().await;
    let blob_dir = tempfile::tempdir().unwrap();
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: blob_dir.path().to_owned(),
    })
    .await
    .unwrap();
    let file = pattern(mib * 1024 * 1024);
    stores
        .patches
        .put("bench.bin", bytes::Bytes::from(file.clone()))
        .await
        .unwrap();
    let link = Arc::new(EmbeddedHub::new(hub.hub.core().clone()));
    let options = StreamerOptions {
        wait: Duration::from_millis(200),
        ..StreamerOptions::default()
    };
    let streamer = Streamer::new(link, stores, None, Partition::all(), options);
    let streaming = tokio::spawn(streamer.run());

    let device = format!("bench-dl-{run}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let text = hub.agent_config(&device, dir.path(), "").await;
    std::fs::write(&config, text).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_cloudpillar-agent"))
        .arg("--config")
        .arg(&config)
        .env("CP_AGENT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    hub.wait_reported(&device, "connected", |r| r["health"] == "connected")
        .await;

    let signature = hub.signer.sign(&file);
    let sign = cloudpillar_protocol::signing::SignedText::new(&hub.signer, &signature);
    let work = common::parse_config(&std::fs::read_to_string(&config).unwrap()).work_dir();
    let spec = json!({"id": format!("bench-{run}"), "patch": {
        "transitPackage": [{"action": "singularDownload", "source": "bench.bin",
            "protocol": "iotmqtt", "destinationPath": "./bench.bin",
            "sign": sign.to_string()}],
        "installSteps": [{"shell": "bash", "command": "true"}]}});
    let desired = json!({"changeSpec": spec, "changeSign": hub.sign(&spec)});

    let pid = agent.id().to_string();
    let (agent_before, own_before) = (cpu_seconds(&pid), cpu_seconds("self"));
    let started = Instant::now();
    hub.patch_desired(&device, desired).await;
    let status = loop {
        let twin = hub.twin(&device).await;
        let status = twin["properties"]["reported"]["changeSpec"]["Status"].clone();
        if status == "Success" || status == "Failure" {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "no outcome: {twin}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let (agent_cpu, own_cpu) = (
        cpu_seconds(&pid) - agent_before,
        cpu_seconds("self") - own_before,
    );
    assert_eq!(status, "Success", "recipe outcome");
    let stored = std::fs::read(work.join("bench.bin")).unwrap();
    assert_eq!(Sha256::digest(&stored), Sha256::digest(&file), "byte-exact");

    agent.kill().unwrap();
    agent.wait().unwrap();
    streaming.abort();
    let rate = file.len() as f64 / seconds / 1e6;
    println!(
        "agent download: {mib} MiB through the hub in {seconds:.1} s = {rate:.1} MB/s; \
         CPU s: agent {agent_cpu:.1}, hub and streamer {own_cpu:.1}"
    );
    Run {
        rate,
        agent_cpu,
        own_cpu,
    }
}

fn summarise(name: &str, unit: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    let (min, max) = (values[0], values[values.len() - 1]);
    let median = values[values.len() / 2];
    println!(
        "  {name}: min {min:.1} / median {median:.1} / max {max:.1} {unit} ({} runs)",
        values.len()
    );
}

#[tokio::main]
async fn main() {
    let runs = env_number("CP_BENCH_RUNS", 3).max(1) as usize;
    let mib = env_number("CP_BENCH_FILE_MIB", 256) as usize;
    let mut results = Vec::new();
    for run in 0..runs {
        results.push(download_once(mib, run).await);
    }
    summarise("download", "MB/s", results.iter().map(|r| r.rate).collect());
    let agent = results.iter().map(|r| r.agent_cpu).collect();
    summarise("agent CPU", "s", agent);
    let own = results.iter().map(|r| r.own_cpu).collect();
    summarise("hub and streamer CPU", "s", own);
}
