//! Streamer figures: one large file to one device, and many devices at once.

use std::time::Duration;

use bytes::Bytes;
use cloudpillar_backend::blob::{BlobConfig, BlobStores};
use cloudpillar_backend::partition::Partition;
use cloudpillar_backend::streamer::Streamer;
use cloudpillar_protocol::messages::{D2cMessage, MAX_RAW_CHUNK, StreamRangeRequest};

use crate::rig::{HubRig, consume};
use crate::{Meter, env_number, streamer_options, summarise};

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

async fn streamer_rig(file_len: usize) -> (HubRig, BlobStores, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .expect("stores");
    stores
        .patches
        .put("bench.bin", Bytes::from(pattern(file_len)))
        .await
        .expect("patch");
    (HubRig::start().await, stores, dir)
}

fn request() -> D2cMessage {
    D2cMessage::StreamRangeRequest(StreamRangeRequest {
        file_id: "bench.bin".into(),
        from: 0,
        to: None,
    })
}

/// One file to one device; returns MB/s and CPU seconds.
async fn one_large_file_once(mib: usize) -> (f64, f64) {
    let (rig, stores, _dir) = streamer_rig(mib * 1024 * 1024).await;
    rig.add_device("bench-1").await;
    let streamer = Streamer::new(
        rig.link(),
        stores,
        None,
        Partition::all(),
        streamer_options(),
    );
    let running = tokio::spawn(streamer.run());
    let (received, device) = consume(rig.core(), "bench-1", 50);
    let meter = Meter::start();
    rig.send_d2c("bench-1", &request()).await;
    while !received.lock().unwrap().complete() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (seconds, cpu) = meter.stop();
    let got = received.lock().unwrap();
    assert_eq!(got.file, pattern(mib * 1024 * 1024), "byte-exact");
    assert!(
        got.chunk_counts.values().all(|&n| n == 1),
        "no chunk sent twice"
    );
    let rate = (mib * 1024 * 1024) as f64 / seconds / 1e6;
    println!(
        "streamer: {mib} MiB to one device in {seconds:.1} s = {rate:.1} MB/s, \
         {cpu:.1} CPU s (deepest queue {})",
        got.max_queue
    );
    running.abort();
    device.abort();
    (rate, cpu)
}

pub async fn one_large_file(runs: usize) {
    let mib = env_number("CP_BENCH_FILE_MIB", 256) as usize;
    let mut rates = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..runs {
        let (rate, cpu) = one_large_file_once(mib).await;
        rates.push(rate);
        cpus.push(cpu);
    }
    summarise("one device", "MB/s", rates);
    summarise("one device, CPU", "s", cpus);
}

/// Figures of one many-devices run.
struct Spread {
    rate: f64,
    cpu: f64,
    slowest: f64,
    fastest: f64,
}

async fn many_devices_once(devices: usize, mib: usize) -> Spread {
    let (rig, stores, _dir) = streamer_rig(mib * 1024 * 1024).await;
    let streamer = Streamer::new(
        rig.link(),
        stores,
        None,
        Partition::all(),
        streamer_options(),
    );
    let running = tokio::spawn(streamer.run());
    let mut consumers = Vec::new();
    for n in 0..devices {
        let id = format!("bench-many-{n}");
        rig.add_device(&id).await;
        consumers.push(consume(rig.core(), &id, 50));
    }
    // All devices ask at once, so the spread below is the streamer's doing.
    let meter = Meter::start();
    let asks = (0..devices).map(|n| {
        let rig = &rig;
        async move { rig.send_d2c(&format!("bench-many-{n}"), &request()).await }
    });
    futures::future::join_all(asks).await;
    let total = (mib * 1024 * 1024) as f64;
    let mut spread_at_half = None;
    loop {
        let progress: Vec<f64> = consumers
            .iter()
            .map(|(r, _)| {
                let chunks = r.lock().unwrap().chunk_counts.len();
                (chunks * MAX_RAW_CHUNK) as f64 / total
            })
            .collect();
        let mean = progress.iter().sum::<f64>() / progress.len() as f64;
        if spread_at_half.is_none() && mean >= 0.5 {
            let min = progress.iter().copied().fold(f64::MAX, f64::min);
            let max = progress.iter().copied().fold(0.0, f64::max);
            spread_at_half = Some((min.min(1.0), max.min(1.0)));
        }
        if consumers.iter().all(|(r, _)| r.lock().unwrap().complete()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (seconds, cpu) = meter.stop();
    let (slowest, fastest) = spread_at_half.unwrap_or((1.0, 1.0));
    let rate = devices as f64 * total / seconds / 1e6;
    println!(
        "streamer: {devices} devices x {mib} MiB in {seconds:.1} s = {rate:.1} MB/s total, \
         {cpu:.1} CPU s; at half time the slowest device had {:.0}% and the fastest {:.0}%",
        slowest * 100.0,
        fastest * 100.0
    );
    running.abort();
    for (_, task) in consumers {
        task.abort();
    }
    Spread {
        rate,
        cpu,
        slowest: slowest * 100.0,
        fastest: fastest * 100.0,
    }
}

pub async fn many_devices(runs: usize) {
    let mut spreads = Vec::new();
    for _ in 0..runs {
        spreads.push(many_devices_once(100, 2).await);
    }
    summarise(
        "100 devices",
        "MB/s",
        spreads.iter().map(|s| s.rate).collect(),
    );
    summarise(
        "100 devices, CPU",
        "s",
        spreads.iter().map(|s| s.cpu).collect(),
    );
    let slowest = spreads.iter().map(|s| s.slowest).collect();
    summarise("slowest device at half time", "%", slowest);
    let fastest = spreads.iter().map(|s| s.fastest).collect();
    summarise("fastest device at half time", "%", fastest);
}
