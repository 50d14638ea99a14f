//! The streamer against a real (embedded) edge hub: downloads, uploads, restarts, replicas.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cloudpillar_backend::blob::{BlobConfig, BlobStores};
use cloudpillar_backend::hub_link::HubLink;
use cloudpillar_backend::partition::Partition;
use cloudpillar_backend::streamer::{Streamer, StreamerOptions};
use cloudpillar_backend::writer::history::{History, LOGS};
use cloudpillar_protocol::messages::{D2cMessage, StreamRangeRequest, UploadFileChunk};
use common::rig::{HubRig, consume, wait_until};
use mongodb::bson::doc;

const CHUNK: usize = 47 * 1024;

fn options() -> StreamerOptions {
    StreamerOptions {
        wait: Duration::from_millis(200),
        checkpoint_every: Duration::from_millis(50),
        retry_ceiling: Duration::from_secs(1),
        ..StreamerOptions::default()
    }
}

fn range_request(file: &str, from: u64) -> D2cMessage {
    D2cMessage::StreamRangeRequest(StreamRangeRequest {
        file_id: file.into(),
        from,
        to: None,
    })
}

async fn fs_stores(dir: &tempfile::TempDir) -> BlobStores {
    BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .expect("open")
}

/// One device downloads `data` stored as `file` in `stores`, through the embedded hub or
/// through the hub's REST API.
async fn download_once(stores: BlobStores, file: &str, data: &[u8], rest: bool) {
    let rig = if rest {
        HubRig::start_tls().await
    } else {
        HubRig::start().await
    };
    rig.add_device("dev-dl").await;
    stores
        .patches
        .put(file, Bytes::copy_from_slice(data))
        .await
        .expect("patch stored");
    let link: Arc<dyn HubLink> = if rest {
        rig.rest_args().connect().expect("rest client")
    } else {
        rig.link()
    };
    let streamer = Streamer::new(link, stores, None, Partition::all(), options());
    let running = tokio::spawn(streamer.run());
    let (received, device) = consume(rig.core(), "dev-dl", 3);

    rig.send_d2c("dev-dl", &range_request(file, 0)).await;
    wait_until(Duration::from_secs(60), "download", || {
        received.lock().expect("lock").complete()
    })
    .await;

    let got = received.lock().expect("lock");
    assert_eq!(got.file, data, "byte-exact");
    assert!(
        got.chunk_counts.values().all(|&n| n == 1),
        "no chunk sent twice"
    );
    assert!(
        got.max_queue <= options().max_pending,
        "queue reached {}",
        got.max_queue
    );
    assert!(got.verified.len() >= data.len().div_ceil(16 * CHUNK));
    running.abort();
    device.abort();
}

#[tokio::test]
async fn download_from_filesystem_store_arrives_byte_exact_within_the_queue_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = common::pattern(3 * 1024 * 1024 + 1234, 21);
    download_once(fs_stores(&dir).await, "fw/app-2.1.bin", &data, false).await;
}

#[tokio::test]
async fn download_through_the_hub_rest_api_arrives_byte_exact_within_the_queue_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = common::pattern(1024 * 1024 + 99, 23);
    download_once(fs_stores(&dir).await, "fw/rest.bin", &data, true).await;
}

#[tokio::test]
async fn download_from_azurite_store_arrives_byte_exact() {
    let stores = common::azurite_stores().await;
    let data = common::pattern(1024 * 1024 + 77, 22);
    download_once(
        stores,
        &format!("{}/pkg.zip", common::unique("fw")),
        &data,
        false,
    )
    .await;
}

/// A device uploads a file in chunks (out of order, one twice); returns the stored bytes.
/// The hub and streamer keep running until the returned guard is dropped.
async fn upload_once(
    stores: BlobStores,
    history: Option<History>,
    device: &str,
) -> (HubRig, tokio::task::JoinHandle<()>) {
    let rig = HubRig::start().await;
    rig.add_device(device).await;
    let streamer = Streamer::new(
        rig.link(),
        stores.clone(),
        history,
        Partition::all(),
        options(),
    );
    let running = tokio::spawn(streamer.run());

    let data = common::pattern(5 * CHUNK + 999, 31);
    let chunks: Vec<(usize, &[u8])> = data.chunks(CHUNK).enumerate().collect();
    let last = chunks.len() - 1;
    for index in [2, 0, last, 1, 1, 3, 4] {
        let (n, piece) = chunks[index];
        let chunk = UploadFileChunk {
            file_id: "logs/app.log".into(),
            offset: (n * CHUNK) as u64,
            data: piece.to_vec(),
            last: n == last,
        };
        rig.send_d2c(device, &D2cMessage::UploadFileChunk(chunk))
            .await;
    }
    let path = format!("{device}/logs/app.log");
    let uploads = stores.uploads.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !uploads.exists(&path).await.expect("exists") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "upload never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = uploads.read_all(&path).await.expect("read").to_vec();
    assert_eq!(stored, data, "byte-exact");
    (rig, running)
}

#[tokio::test]
async fn upload_lands_in_the_upload_container_and_is_linked_from_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = History::connect(&common::mongodb_url(), &common::unique("links"))
        .await
        .expect("history");
    let device = "dev-up";
    let (_rig, running) = upload_once(fs_stores(&dir).await, Some(history.clone()), device).await;

    let mut link = None;
    for _ in 0..100 {
        link = history
            .collection(LOGS)
            .find_one(doc! { "deviceId": device })
            .await
            .expect("find");
        if link.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let link = link.expect("logs record for the upload");
    assert_eq!(link.get_str("kind").expect("kind"), "upload");
    let blob = link.get_document("blob").expect("blob");
    assert_eq!(blob.get_str("container").expect("container"), "uploads");
    assert_eq!(blob.get_str("path").expect("path"), "dev-up/logs/app.log");
    history.database().drop().await.expect("drop");
    running.abort();
}

#[tokio::test]
async fn upload_to_azurite_store_round_trips_byte_exact() {
    let stores = common::azurite_stores().await;
    let (_rig, running) = upload_once(stores, None, &common::unique("dev-up-")).await;
    running.abort();
}

#[tokio::test]
async fn streamer_killed_mid_transfer_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = fs_stores(&dir).await;
    let rig = HubRig::start().await;
    rig.add_device("dev-kill").await;
    let data = common::pattern(8 * 1024 * 1024, 41);
    stores
        .patches
        .put("big.bin", Bytes::from(data.clone()))
        .await
        .expect("patch stored");
    let opts = StreamerOptions {
        crc_range: 4 * CHUNK as u64,
        ..options()
    };

    let first = tokio::spawn(
        Streamer::new(
            rig.link(),
            stores.clone(),
            None,
            Partition::all(),
            opts.clone(),
        )
        .run(),
    );
    let (received, device) = consume(rig.core(), "dev-kill", 2);
    rig.send_d2c("dev-kill", &range_request("big.bin", 0)).await;
    wait_until(Duration::from_secs(60), "a third of the file", || {
        received.lock().expect("lock").chunk_counts.len() * CHUNK > data.len() / 3
    })
    .await;
    first.abort();
    let _ = first.await;
    let at_kill = received.lock().expect("lock").chunk_counts.len();
    assert!(at_kill * CHUNK < data.len(), "killed before the end");

    // Nothing is sent while no streamer runs; a new one resumes from the checkpoint.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second =
        tokio::spawn(Streamer::new(rig.link(), stores, None, Partition::all(), opts.clone()).run());
    wait_until(Duration::from_secs(60), "the rest of the file", || {
        received.lock().expect("lock").complete()
    })
    .await;

    let got = received.lock().expect("lock");
    assert_eq!(got.file, data, "byte-exact after the restart");
    assert_eq!(got.chunk_counts.get(&0), Some(&1), "did not start over");
    let resent: u32 = got.chunk_counts.values().map(|n| n - 1).sum();
    let bound = opts.crc_range as usize / CHUNK + opts.max_pending;
    assert!(
        resent as usize <= bound,
        "{resent} chunks sent again, more than {bound}"
    );
    second.abort();
    device.abort();
}

#[tokio::test]
async fn two_replicas_split_devices_without_double_sending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = fs_stores(&dir).await;
    let rig = HubRig::start().await;
    let data = common::pattern(600 * 1024, 51);
    stores
        .patches
        .put("shared.bin", Bytes::from(data.clone()))
        .await
        .expect("patch stored");
    let devices: Vec<String> = (0..8).map(|n| format!("dev-r{n}")).collect();
    let owners: Vec<u32> = devices.iter().map(|d| Partition::of(d, 2)).collect();
    assert!(
        owners.contains(&0) && owners.contains(&1),
        "both replicas get devices"
    );

    let mut replicas = Vec::new();
    for index in 0..2 {
        let partition = Partition::new(index, 2).expect("partition");
        let streamer = Streamer::new(rig.link(), stores.clone(), None, partition, options());
        replicas.push(tokio::spawn(streamer.run()));
    }
    let mut consumers = Vec::new();
    for device in &devices {
        rig.add_device(device).await;
        consumers.push(consume(rig.core(), device, 5));
        rig.send_d2c(device, &range_request("shared.bin", 0)).await;
    }
    for (device, (received, _)) in devices.iter().zip(&consumers) {
        wait_until(Duration::from_secs(60), device, || {
            received.lock().expect("lock").complete()
        })
        .await;
    }
    // Let a double sender, if any, show itself before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (device, (received, task)) in devices.iter().zip(consumers) {
        let got = received.lock().expect("lock");
        assert_eq!(got.file, data, "{device} byte-exact");
        assert!(
            got.chunk_counts.values().all(|&n| n == 1),
            "{device} got a chunk twice"
        );
        let ranges = got.verified.len();
        assert_eq!(
            ranges,
            data.len().div_ceil(16 * CHUNK),
            "{device} got a CRC twice"
        );
        task.abort();
    }
    for replica in replicas {
        replica.abort();
    }
}

#[tokio::test]
async fn device_reads_back_its_own_upload_but_not_another_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = fs_stores(&dir).await;
    let data = common::pattern(128 * 1024, 61);
    stores
        .uploads
        .put("dev-own/diag/rand.bin", Bytes::from(data.clone()))
        .await
        .expect("upload");
    let rig = HubRig::start().await;
    rig.add_device("dev-own").await;
    rig.add_device("dev-other").await;
    let streamer = Streamer::new(rig.link(), stores, None, Partition::all(), options());
    let running = tokio::spawn(streamer.run());
    let (own, own_task) = consume(rig.core(), "dev-own", 10);
    let (other, other_task) = consume(rig.core(), "dev-other", 10);

    rig.send_d2c(
        "dev-other",
        &range_request("uploads/dev-own/diag/rand.bin", 0),
    )
    .await;
    rig.send_d2c(
        "dev-own",
        &range_request("uploads/dev-own/diag/rand.bin", 0),
    )
    .await;
    wait_until(Duration::from_secs(30), "read back", || {
        own.lock().expect("lock").complete()
    })
    .await;
    assert_eq!(own.lock().expect("lock").file, data, "byte-exact");
    // The other device's request came first and got nothing.
    let refused = other.lock().expect("lock");
    assert!(refused.chunk_counts.is_empty() && refused.verified.is_empty());
    running.abort();
    own_task.abort();
    other_task.abort();
}

#[tokio::test]
async fn a_download_rate_limit_spreads_the_file_over_the_expected_time() {
    let rig = HubRig::start().await;
    rig.add_device("dev-slow").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = fs_stores(&dir).await;
    // Two CRC ranges at 1 MiB/s: the second range may not start before one range's time.
    let data: Vec<u8> = (0..2 * 16 * CHUNK).map(|i| (i % 241) as u8).collect();
    stores
        .patches
        .put("slow.bin", Bytes::copy_from_slice(&data))
        .await
        .expect("patch stored");
    let rate = 1024 * 1024;
    let opts = StreamerOptions {
        rate_limit: Some(rate),
        ..options()
    };
    let streamer = Streamer::new(rig.link(), stores, None, Partition::all(), opts);
    let running = tokio::spawn(streamer.run());
    let (received, _device) = consume(rig.core(), "dev-slow", 3);

    let started = std::time::Instant::now();
    rig.send_d2c("dev-slow", &range_request("slow.bin", 0))
        .await;
    wait_until(Duration::from_secs(60), "download", || {
        received.lock().expect("lock").complete()
    })
    .await;
    let elapsed = started.elapsed();
    assert_eq!(received.lock().expect("lock").file, data, "byte-exact");
    // The limiter waits after each range until its bytes are due: the whole file is due at
    // size / rate, so the download cannot finish sooner.
    let due = Duration::from_secs_f64(data.len() as f64 / rate as f64);
    assert!(elapsed >= due, "finished in {elapsed:?}, before {due:?}");
    running.abort();
}
