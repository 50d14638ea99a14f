//! Writer figures: records per second from the hub's stream into MongoDB, next to what the
//! database takes when the same records (and small plain documents) are inserted directly.

use std::collections::BTreeMap;
use std::time::Duration;

use cloudpillar_backend::blob::{BlobConfig, BlobStores};
use cloudpillar_backend::checkpoint::{Checkpoint, CheckpointStore};
use cloudpillar_backend::hub_link::HubLink;
use cloudpillar_backend::partition::Partition;
use cloudpillar_backend::writer::history::{History, LOGS, TELEMETRY};
use cloudpillar_backend::writer::records::record_for;
use cloudpillar_backend::writer::{Writer, WriterOptions};
use mongodb::bson::{Document, doc};

use crate::rig::HubRig;
use crate::{Meter, env_number, summarise};

/// `records` D2C messages from 50 devices, half of them log records, all committed before
/// the writer starts so the figure is the writer's own rate.
async fn produce(rig: &HubRig, records: usize) {
    let devices: Vec<String> = (0..50).map(|n| format!("bench-w{n}")).collect();
    for device in &devices {
        rig.add_device(device).await;
    }
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
}

async fn count(history: &History, collection: &str) -> u64 {
    history
        .collection(collection)
        .count_documents(doc! {})
        .await
        .unwrap_or(0)
}

/// The writer from an empty database until its checkpoint passes the last event; returns
/// records/s and CPU seconds.
async fn writer_once(url: &str, rig: &HubRig, records: usize, run: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = BlobStores::open(&BlobConfig::Filesystem {
        root: dir.path().to_owned(),
    })
    .await
    .expect("stores");
    let database = format!("bench{}w{run}", std::process::id());
    let history = History::connect(url, &database).await.expect("history");
    let checkpoints = CheckpointStore::new(stores.state.clone(), "writer", Partition::all());
    let options = WriterOptions {
        wait: Duration::from_millis(100),
        ..WriterOptions::default()
    };
    // Done when the checkpoint passes the last event (it moves only after a write), so the
    // database is not queried while it is being measured.
    let last_event = *rig.core().bus.last_sequence().borrow();
    let meter = Meter::start();
    let writer = Writer::new(
        rig.link(),
        history.clone(),
        checkpoints.clone(),
        Partition::all(),
        options,
    );
    let running = tokio::spawn(writer.run());
    loop {
        let saved: Checkpoint<()> = checkpoints.load().await.unwrap_or_default();
        if saved.next > last_event {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (seconds, cpu) = meter.stop();
    running.abort();
    let rate = records as f64 / seconds;
    println!(
        "writer: {records} records into MongoDB in {seconds:.1} s = {rate:.0} records/s, \
         {cpu:.1} CPU s"
    );
    let stored = count(&history, TELEMETRY).await + count(&history, LOGS).await;
    assert_eq!(stored as usize, records, "every record stored once");
    history.database().drop().await.ok();
    (rate, cpu)
}

/// The records the writer makes of the rig's events, per collection.
async fn writer_records(rig: &HubRig) -> BTreeMap<&'static str, Vec<Document>> {
    let mut by_collection: BTreeMap<&'static str, Vec<Document>> = BTreeMap::new();
    let link = rig.link();
    let mut next = 1;
    loop {
        let page = link
            .read_events(next, 5000, Duration::ZERO)
            .await
            .expect("events");
        if page.events.is_empty() {
            return by_collection;
        }
        for record in page.events.iter().filter_map(record_for) {
            by_collection
                .entry(record.collection)
                .or_default()
                .push(record.document);
        }
        next = page.next_sequence_number;
    }
}

/// Inserts `documents` in pages of 1000 (split by collection as the writer splits them), one
/// page after the other; returns documents/s.
async fn insert_directly(
    history: &History,
    pages: Vec<Vec<(&'static str, Vec<Document>)>>,
    total: usize,
) -> f64 {
    let meter = Meter::start();
    for page in pages {
        let inserts = page
            .iter()
            .map(|(collection, documents)| history.insert(collection, documents));
        futures::future::try_join_all(inserts)
            .await
            .expect("insert");
    }
    total as f64 / meter.stop().0
}

/// What the database takes of the writer's own records, with the writer's indexes, and of
/// small plain documents without indexes; returns both in documents/s.
async fn ceilings(url: &str, rig: &HubRig, records: usize, run: usize) -> (f64, f64) {
    let by_collection = writer_records(rig).await;
    let shaped = History::connect(url, &format!("bench{}s{run}", std::process::id()))
        .await
        .expect("history");
    shaped.ensure_indexes().await.expect("indexes");
    let mut pages: Vec<Vec<(&'static str, Vec<Document>)>> = Vec::new();
    for (collection, documents) in by_collection {
        for (n, page) in documents.chunks(500).enumerate() {
            if pages.len() <= n {
                pages.push(Vec::new());
            }
            pages[n].push((collection, page.to_vec()));
        }
    }
    let same_records = insert_directly(&shaped, pages, records).await;
    shaped.database().drop().await.ok();

    let plain = History::connect(url, &format!("bench{}p{run}", std::process::id()))
        .await
        .expect("history");
    let pages = (0..records.div_ceil(1000))
        .map(|page| {
            let documents = (0..1000.min(records - page * 1000))
                .map(|n| doc! { "_id": format!("{page}:{n}"), "deviceId": "d", "n": n as i64 })
                .collect();
            vec![(TELEMETRY, documents)]
        })
        .collect();
    let small_plain = insert_directly(&plain, pages, records).await;
    plain.database().drop().await.ok();
    println!(
        "mongodb: the same records inserted directly {same_records:.0} documents/s; \
         small plain documents without indexes {small_plain:.0} documents/s"
    );
    (same_records, small_plain)
}

pub async fn writer_rate(runs: usize) {
    let Ok(url) = std::env::var("CP_MONGODB_URL") else {
        println!("writer: skipped (CP_MONGODB_URL is not set; start k3s-dev/services/ferretdb)");
        return;
    };
    let records = env_number("CP_BENCH_RECORDS", 50_000) as usize;
    let (mut rates, mut cpus, mut same, mut plain) = (Vec::new(), Vec::new(), Vec::new(), vec![]);
    for run in 0..runs {
        let rig = HubRig::start().await;
        produce(&rig, records).await;
        let (rate, cpu) = writer_once(&url, &rig, records, run).await;
        let (same_records, small_plain) = ceilings(&url, &rig, records, run).await;
        rates.push(rate);
        cpus.push(cpu);
        same.push(same_records);
        plain.push(small_plain);
    }
    summarise("writer", "records/s", rates);
    summarise("writer, CPU", "s", cpus);
    summarise("same records inserted directly", "documents/s", same);
    summarise("small plain documents", "documents/s", plain);
}
