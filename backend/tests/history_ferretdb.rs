//! The history collections on a real MongoDB wire-protocol server (FerretDB in CI).

mod common;

use cloudpillar_backend::writer::history::{History, LOGS, TELEMETRY, VERSIONS};
use futures::TryStreamExt;
use mongodb::bson::{DateTime, doc};

#[tokio::test]
async fn inserts_are_idempotent_and_indexed_on_device_and_time() {
    let history = History::connect(&common::mongodb_url(), &common::unique("hist"))
        .await
        .expect("connect");
    history.ensure_indexes().await.expect("indexes");
    history.ensure_indexes().await.expect("indexes again");

    let record = |n: i64| {
        doc! { "_id": format!("dev-1:{n}:0"), "deviceId": "dev-1", "seq": n,
        "time": DateTime::from_millis(1_000 + n) }
    };
    history
        .insert(TELEMETRY, &(1..=5).map(record).collect::<Vec<_>>())
        .await
        .expect("first insert");
    // The same batch again plus new records: stored once, nothing lost.
    history
        .insert(TELEMETRY, &(1..=8).map(record).collect::<Vec<_>>())
        .await
        .expect("replayed insert");

    let stored: Vec<_> = history
        .collection(TELEMETRY)
        .find(doc! { "deviceId": "dev-1" })
        .sort(doc! { "time": 1 })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("read");
    let seqs: Vec<i64> = stored
        .iter()
        .map(|d| d.get_i64("seq").expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());

    for collection in [VERSIONS, LOGS, TELEMETRY] {
        let names = history
            .collection(collection)
            .list_index_names()
            .await
            .expect("indexes");
        assert!(
            names.contains(&"device_time".to_owned()),
            "{collection}: {names:?}"
        );
        assert!(
            names.contains(&"time".to_owned()),
            "{collection}: {names:?}"
        );
    }
    history.database().drop().await.expect("drop");
}
