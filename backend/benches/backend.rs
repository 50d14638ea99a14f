//! Backend throughput figures, printed (not asserted):
//!
//! - one 256 MiB file streamed through the embedded edge hub to one device;
//! - 100 devices downloading at once: aggregate rate and how evenly they progress;
//! - writer records per second into the MongoDB at `CP_MONGODB_URL` (skipped when unset).
//!
//! The device side takes messages off the hub's durable C2D queue and completes them, as the
//! hub's MQTT endpoint does on a device's acknowledgement; MQTT transport costs are not in
//! these figures. Sizes can be changed with `CP_BENCH_FILE_MIB` and `CP_BENCH_RECORDS`.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

// The tests' hub rig; the benchmark uses only part of it.
#[allow(dead_code)]
#[path = "../tests/common/rig.rs"]
mod rig;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudpillar_backend::blob::{BlobConfig, BlobStores};
use cloudpillar_backend::checkpoint::{Checkpoint, CheckpointStore};
use cloudpillar_backend::partition::Partition;
use cloudpillar_backend::streamer::{Streamer, StreamerOptions};
use cloudpillar_backend::writer::history::{History, LOGS, TELEMETRY};
use cloudpillar_backend::writer::{Writer, WriterOptions};
use cloudpillar_protocol::messages::{D2cMessage, StreamRangeRequest};
use rig::{HubRig, consume};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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

async fn one_large_file() {
    let mib = env_number("CP_BENCH_FILE_MIB", 256) as usize;
    let (rig, stores, _dir) = streamer_rig(mib * 1024 * 1024).await;
    rig.add_device("bench-1").await;
    let streamer = Streamer::new(
        rig.link(),
        stores,
        None,
        Partition::all(),
        StreamerOptions::default(),
    );
    let running = tokio::spawn(streamer.run());
    let (received, device) = consume(rig.core(), "bench-1", 50);
    let started = Instant::now();
    rig.send_d2c("bench-1", &request()).await;
    while !received.lock().unwrap().complete() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let max_queue = received.lock().unwrap().max_queue;
    println!(
        "streamer: {mib} MiB to one device in {seconds:.1} s = {:.1} MB/s \
         (CRC-verified, deepest queue {max_queue})",
        (mib * 1024 * 1024) as f64 / seconds / 1e6
    );
    running.abort();
    device.abort();
}

async fn many_devices() {
    let devices = 100;
    let mib = 2;
    let (rig, stores, _dir) = streamer_rig(mib * 1024 * 1024).await;
    let streamer = Streamer::new(
        rig.link(),
        stores,
        None,
        Partition::all(),
        StreamerOptions::default(),
    );
    let running = tokio::spawn(streamer.run());
    let mut consumers = Vec::new();
    for n in 0..devices {
        let id = format!("bench-many-{n}");
        rig.add_device(&id).await;
        consumers.push(consume(rig.core(), &id, 50));
    }
    // All devices ask at once, so the spread below is the streamer's doing.
    let started = Instant::now();
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
            .map(|(r, _)| r.lock().unwrap().chunk_counts.len() as f64 * 47.0 * 1024.0 / total)
            .collect();
        let mean = progress.iter().sum::<f64>() / progress.len() as f64;
        if spread_at_half.is_none() && mean >= 0.5 {
            let min = progress.iter().cloned().fold(f64::MAX, f64::min);
            let max = progress.iter().cloned().fold(0.0, f64::max);
            spread_at_half = Some((min.min(1.0), max.min(1.0)));
        }
        if consumers.iter().all(|(r, _)| r.lock().unwrap().complete()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (min, max) = spread_at_half.unwrap_or((1.0, 1.0));
    println!(
        "streamer: {devices} devices x {mib} MiB in {seconds:.1} s = {:.1} MB/s total; \
         at half time the slowest device had {:.0}% and the fastest {:.0}%",
        devices as f64 * total / seconds / 1e6,
        min * 100.0,
        max * 100.0
    );
    running.abort();
    for (_, task) in consumers {
        task.abort();
    }
}

async fn writer_rate() {
    let Ok(url) = std::env::var("CP_MONGODB_URL") else {
        println!("writer: skipped (CP_MONGODB_URL is not set; start k3s-dev/services/ferretdb)");
        return;
    };
    let records = env_number("CP_BENCH_RECORDS", 50_000) as usize;
    let rig = HubRig::start().await;
    let devices: Vec<String> = (0..50).map(|n| format!("bench-w{n}")).collect();
    for device in &devices {
        rig.add_device(device).await;
    }
    // The events exist before the writer starts, so the figure is the writer's own rate.
    let core = rig.core();
    let mut sends = Vec::new();
    for n in 0..records {
        let core = core.clone();
        let device = devices[n % devices.len()].clone();
        let properties: BTreeMap<String, String> = if n % 2 == 0 {
            [("messageType".to_owned(), "Log".to_owned())].into()
        } else {
            BTreeMap::new()
        };
        sends.push(tokio::spawn(async move {
            let body = format!("{{\"n\":{n},\"value\":21.5}}").into_bytes();
            core.d2c(&device, body, properties, BTreeMap::new())
                .await
                .expect("d2c");
        }));
        if sends.len() >= 256 {
            for send in sends.drain(..) {
                send.await.expect("send");
            }
        }
    }
    for send in sends {
        send.await.expect("send");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .expect("stores");
    let database = format!("bench{}", std::process::id());
    let history = History::connect(&url, &database).await.expect("history");
    let checkpoints = CheckpointStore::new(stores.state.clone(), "writer", Partition::all());
    let options = WriterOptions {
        wait: Duration::from_millis(100),
        ..WriterOptions::default()
    };
    // Done when the writer's checkpoint passes the last event (it moves only after a write),
    // so the database is not queried while it is being measured.
    let last_event = *rig.core().bus.last_sequence().borrow();
    let started = Instant::now();
    let running = tokio::spawn(
        Writer::new(
            rig.link(),
            history.clone(),
            checkpoints.clone(),
            Partition::all(),
            options,
        )
        .run(),
    );
    loop {
        let saved: Checkpoint<()> = checkpoints.load().await.unwrap_or_default();
        if saved.next > last_event {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "writer: {records} records into MongoDB ({url}) in {seconds:.1} s = {:.0} records/s",
        records as f64 / seconds
    );
    running.abort();
    let stored = history
        .collection(TELEMETRY)
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap_or(0)
        + history
            .collection(LOGS)
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap_or(0);
    assert_eq!(stored as usize, records, "every record stored");
    history.database().drop().await.ok();

    // The database's own ceiling: the same number of plain documents, inserted in batches of
    // 1000 with nothing else going on.
    let raw = History::connect(&url, &format!("{database}raw"))
        .await
        .expect("history");
    let started = Instant::now();
    for batch in 0..records.div_ceil(1000) {
        let documents = (0..1000.min(records - batch * 1000))
            .map(|n| {
                let id = format!("{batch}:{n}");
                mongodb::bson::doc! { "_id": id, "deviceId": "d", "n": n as i64 }
            })
            .collect();
        raw.insert(TELEMETRY, documents).await.expect("raw insert");
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "mongodb: {records} plain inserts in batches of 1000 in {seconds:.1} s = {:.0} documents/s \
         (ceiling for the writer)",
        records as f64 / seconds
    );
    raw.database().drop().await.ok();
}

#[tokio::main]
async fn main() {
    one_large_file().await;
    many_devices().await;
    writer_rate().await;
}
