//! The streamer against a real (embedded) edge hub: downloads, uploads, restarts, replicas.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cloudpillar_backend::blob::{BlobConfig, BlobStores};
use cloudpillar_backend::hub_link::HubLink;
use cloudpillar_backend::partition::Partition;
use cloudpillar_backend::streamer::{Streamer, StreamerOptions};
use cloudpillar_backend::writer::history::{History, LOGS};
use cloudpillar_protocol::messages::{D2cMessage, StreamRangeRequest, UploadFileChunk};
use common::rig::{HubRig, Received, consume, wait_until};
use mongodb::bson::doc;
use tokio::task::JoinHandle;

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

/// Filesystem stores in `dir`, a hub with `device`, and one streamer serving every device.
async fn one_streamer(
    dir: &tempfile::TempDir,
    device: &str,
) -> (BlobStores, HubRig, JoinHandle<()>) {
    let stores = fs_stores(dir).await;
    let rig = HubRig::start().await;
    rig.add_device(device).await;
    let streamer = Streamer::new(
        rig.link(),
        stores.clone(),
        None,
        Partition::all(),
        options(),
    );
    let running = tokio::spawn(streamer.run());
    (stores, rig, running)
}

/// Filesystem stores in `dir` holding `data` as patch file `file`, and a hub.
async fn hub_with_patch(dir: &tempfile::TempDir, file: &str, data: &[u8]) -> (BlobStores, HubRig) {
    let stores = fs_stores(dir).await;
    stores
        .patches
        .put(file, Bytes::copy_from_slice(data))
        .await
        .expect("patch stored");
    (stores, HubRig::start().await)
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
            upload_id: None,
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

/// Sends the chunks of `data` with the given indices as one upload of `file`.
async fn send_chunks(
    rig: &HubRig,
    device: &str,
    (file, upload_id): (&str, &str),
    data: &[u8],
    indices: &[usize],
) {
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    for &index in indices {
        let chunk = UploadFileChunk {
            file_id: file.into(),
            upload_id: Some(upload_id.into()),
            offset: (index * CHUNK) as u64,
            data: chunks[index].to_vec(),
            last: index == chunks.len() - 1,
        };
        rig.send_d2c(device, &D2cMessage::UploadFileChunk(chunk))
            .await;
    }
}

/// Waits until `path` in `container` holds exactly `data`.
async fn wait_for_blob(container: &cloudpillar_backend::blob::Container, path: &str, data: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while container.read_all(path).await.ok().as_deref() != Some(data) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never held the expected bytes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn late_duplicates_of_a_stored_upload_leave_nothing_and_a_new_upload_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = fs_stores(&dir).await;
    let history = History::connect(&common::mongodb_url(), &common::unique("again"))
        .await
        .expect("history");
    let rig = HubRig::start().await;
    let device = "dev-again";
    rig.add_device(device).await;
    let streamer = Streamer::new(
        rig.link(),
        stores.clone(),
        Some(history.clone()),
        Partition::all(),
        options(),
    );
    let running = tokio::spawn(streamer.run());
    let (file, path) = ("logs/app.log", format!("{device}/logs/app.log"));
    let first = common::pattern(3 * CHUNK + 10, 71);
    let second = common::pattern(2 * CHUNK + 500, 72);

    // The first upload is stored; then late duplicates of it arrive (a middle chunk, the last).
    send_chunks(&rig, device, (file, "one"), &first, &[0, 1, 2, 3]).await;
    wait_for_blob(&stores.uploads, &path, &first).await;
    send_chunks(&rig, device, (file, "one"), &first, &[1, 3]).await;

    // A new upload under the same name replaces it; more late duplicates of the first follow.
    send_chunks(&rig, device, (file, "two"), &second, &[1, 0, 2]).await;
    wait_for_blob(&stores.uploads, &path, &second).await;
    send_chunks(&rig, device, (file, "one"), &first, &[0, 2]).await;
    // Chunks are handled in event order, each completely before the checkpoint passes it.
    let last = *rig.core().bus.last_sequence().borrow();
    wait_for_checkpoint(&stores, Partition::all(), last).await;

    let stored = stores.uploads.read_all(&path).await.expect("read");
    assert!(stored == second, "the first upload's bytes came back");
    for staging in ["upload-staging", "upload-parts"] {
        let left = stores.state.list(staging).await.expect("list");
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }
    let records: Vec<mongodb::bson::Document> = {
        use futures::TryStreamExt;
        history
            .collection(LOGS)
            .find(doc! { "deviceId": device, "fileId": file })
            .sort(doc! { "seq": -1 })
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("records")
    };
    assert_eq!(records.len(), 2, "one record per upload: {records:?}");
    let (newest, oldest) = (&records[0], &records[1]);
    assert_eq!(newest.get_str("uploadId").expect("id"), "two");
    assert_eq!(newest.get_i64("size").expect("size"), second.len() as i64);
    assert_eq!(oldest.get_i64("size").expect("size"), first.len() as i64);
    let time =
        |record: &mongodb::bson::Document| record.get_datetime("time").expect("time").to_owned();
    assert!(time(newest) >= time(oldest), "{records:?}");
    assert!(newest.get_i64("seq").expect("seq") > oldest.get_i64("seq").expect("seq"));
    history.database().drop().await.expect("drop");
    running.abort();
}

#[tokio::test]
async fn a_stored_upload_that_grows_is_stored_again_with_the_new_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = "dev-grow";
    let (stores, rig, running) = one_streamer(&dir, device).await;
    let path = format!("{device}/grow.log");
    let full = common::pattern(5 * CHUNK + 7, 91);
    // As the agent sends a log that grows: the bytes so far end with a last chunk, and the
    // new bytes continue under the same file id, again ending with a last chunk.
    let send = |data: Vec<u8>, offset: usize, last: bool| {
        let chunk = D2cMessage::UploadFileChunk(UploadFileChunk {
            file_id: "grow.log".into(),
            upload_id: None,
            offset: offset as u64,
            data,
            last,
        });
        let rig = &rig;
        async move { rig.send_d2c(device, &chunk).await }
    };
    send(full[..2 * CHUNK].to_vec(), 0, false).await;
    send(full[2 * CHUNK..3 * CHUNK].to_vec(), 2 * CHUNK, true).await;
    wait_for_blob(&stores.uploads, &path, &full[..3 * CHUNK]).await;
    send(full[3 * CHUNK..4 * CHUNK].to_vec(), 3 * CHUNK, false).await;
    // A late duplicate of the first round's last chunk changes nothing.
    send(full[2 * CHUNK..3 * CHUNK].to_vec(), 2 * CHUNK, true).await;
    send(full[4 * CHUNK..].to_vec(), 4 * CHUNK, true).await;
    wait_for_blob(&stores.uploads, &path, &full).await;

    let last = *rig.core().bus.last_sequence().borrow();
    wait_for_checkpoint(&stores, Partition::all(), last).await;
    let stored = stores.uploads.read_all(&path).await.expect("read");
    assert!(stored == full, "the whole grown log");
    let left = stores.state.list("upload-staging").await.expect("list");
    assert!(left.is_empty(), "staging left behind: {left:?}");
    running.abort();
}

#[tokio::test]
async fn an_upload_chunk_without_the_message_type_property_is_routed_by_its_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stores, rig, running) = one_streamer(&dir, "dev-bare").await;
    let chunk = D2cMessage::UploadFileChunk(UploadFileChunk {
        file_id: "bare.txt".into(),
        upload_id: None,
        offset: 0,
        data: b"no properties".to_vec(),
        last: true,
    });
    let body = chunk.encode().expect("encodes");
    rig.core()
        .d2c("dev-bare", body, Default::default(), Default::default())
        .await
        .expect("d2c accepted");
    wait_for_blob(&stores.uploads, "dev-bare/bare.txt", b"no properties").await;
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
    let data = common::pattern(600 * 1024, 51);
    let (stores, rig) = hub_with_patch(&dir, "shared.bin", &data).await;
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
    wait_complete(&devices, &consumers).await;
    // Let a double sender, if any, show itself before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (device, (received, task)) in devices.iter().zip(consumers) {
        assert_sent_once(device, &received.lock().expect("lock"), &data);
        task.abort();
    }
    for replica in replicas {
        replica.abort();
    }
}

#[tokio::test]
async fn a_new_replica_count_continues_where_the_old_layout_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = common::pattern(200 * 1024, 53);
    let (stores, rig) = hub_with_patch(&dir, "layout.bin", &data).await;
    let start = |partition: Partition| {
        let streamer = Streamer::new(rig.link(), stores.clone(), None, partition, options());
        tokio::spawn(streamer.run())
    };

    // One replica serves the first devices and records how far it got.
    const OLD: &[&str] = &["dev-o0", "dev-o1", "dev-o2", "dev-o3"];
    let single = start(Partition::all());
    let mut old = Vec::new();
    for device in OLD {
        rig.add_device(device).await;
        old.push(consume(rig.core(), device, 5));
        rig.send_d2c(device, &range_request("layout.bin", 0)).await;
    }
    wait_complete(OLD, &old).await;
    let last = *rig.core().bus.last_sequence().borrow();
    wait_for_checkpoint(&stores, Partition::all(), last).await;
    single.abort();
    let _ = single.await;

    // Requests sent while no replica runs, then two replicas take over.
    const NEW: &[&str] = &["dev-n0", "dev-n1", "dev-n2", "dev-n3", "dev-n4", "dev-n5"];
    let owners: Vec<u32> = NEW.iter().map(|d| Partition::of(d, 2)).collect();
    assert!(
        owners.contains(&0) && owners.contains(&1),
        "both replicas get devices"
    );
    let mut new = Vec::new();
    for device in NEW {
        rig.add_device(device).await;
        new.push(consume(rig.core(), device, 5));
        rig.send_d2c(device, &range_request("layout.bin", 0)).await;
    }
    let replicas: Vec<_> = (0..2)
        .map(|index| start(Partition::new(index, 2).expect("partition")))
        .collect();
    wait_complete(NEW, &new).await;
    // Let a replica that started over, if any, send the old requests again before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (device, (got, task)) in OLD.iter().chain(NEW).zip(old.into_iter().chain(new)) {
        assert_sent_once(device, &got.lock().expect("lock"), &data);
        task.abort();
    }
    for replica in replicas {
        replica.abort();
    }
}

/// The saved `next` of the streamer checkpoint of `partition`.
async fn saved_next(stores: &BlobStores, partition: Partition) -> Option<u64> {
    let path = format!("checkpoints/streamer/{partition}.json");
    let bytes = stores.state.read_all(&path).await.ok()?;
    let saved: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    saved["next"].as_u64()
}

/// Waits until the streamer checkpoint of `partition` is past event `seq`.
async fn wait_for_checkpoint(stores: &BlobStores, partition: Partition, seq: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while saved_next(stores, partition).await <= Some(seq) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoint never passed {seq}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every device in `devices` has its whole download.
async fn wait_complete(
    devices: &[impl AsRef<str>],
    received: &[(Arc<Mutex<Received>>, JoinHandle<()>)],
) {
    for (device, (got, _)) in devices.iter().zip(received) {
        wait_until(Duration::from_secs(60), device.as_ref(), || {
            got.lock().expect("lock").complete()
        })
        .await;
    }
}

/// Checks that `device` got `data` byte-exact with every chunk and CRC range once.
fn assert_sent_once(device: &str, got: &Received, data: &[u8]) {
    assert!(got.file == data, "{device} byte-exact");
    assert!(
        got.chunk_counts.values().all(|&n| n == 1),
        "{device} got a chunk twice"
    );
    assert_eq!(
        got.verified.len(),
        data.len().div_ceil(16 * CHUNK),
        "{device} got a CRC range twice"
    );
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
async fn a_range_from_the_end_or_past_it_is_answered_at_once_with_the_file_size() {
    let rig = HubRig::start().await;
    rig.add_device("dev-past").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = fs_stores(&dir).await;
    stores
        .patches
        .put("small.bin", Bytes::from(common::pattern(1000, 81)))
        .await
        .expect("patch stored");
    let streamer = Streamer::new(rig.link(), stores, None, Partition::all(), options());
    let running = tokio::spawn(streamer.run());
    let (received, device) = consume(rig.core(), "dev-past", 5);

    // Past the end, then exactly at it: one empty chunk at the end each, carrying the size.
    for (from, answers) in [(5000, 1), (1000, 2)] {
        rig.send_d2c("dev-past", &range_request("small.bin", from))
            .await;
        wait_until(Duration::from_secs(10), "an answer", || {
            received.lock().expect("lock").chunk_counts.get(&1000) == Some(&answers)
        })
        .await;
    }
    let got = received.lock().expect("lock");
    assert_eq!(got.size, Some(1000));
    assert_eq!(got.chunk_counts.len(), 1, "{:?}", got.chunk_counts);
    assert!(got.verified.is_empty(), "no CRC for an empty range");
    running.abort();
    device.abort();
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

#[tokio::test]
async fn an_upload_name_the_store_cannot_hold_is_refused_and_the_stream_moves_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stores, rig, running) = one_streamer(&dir, "dev-clash").await;
    // On the filesystem store `logs/q6.log` is a file, so `logs/q6.log/inner` cannot exist.
    for (file, data) in [
        ("logs/q6.log", b"first".as_slice()),
        ("logs/q6.log/inner", b"cannot be stored".as_slice()),
        ("logs/after.log", b"still stored".as_slice()),
    ] {
        let chunk = UploadFileChunk {
            file_id: file.into(),
            upload_id: None,
            offset: 0,
            data: data.to_vec(),
            last: true,
        };
        rig.send_d2c("dev-clash", &D2cMessage::UploadFileChunk(chunk))
            .await;
    }
    wait_for_blob(&stores.uploads, "dev-clash/logs/q6.log", b"first").await;
    wait_for_blob(&stores.uploads, "dev-clash/logs/after.log", b"still stored").await;
    running.abort();
}
