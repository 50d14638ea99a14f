//! The history collections on a real MongoDB wire-protocol server (FerretDB in CI).

mod common;

use cloudpillar_backend::writer::history::{History, LOGS, REFUSED, TELEMETRY, VERSIONS};
use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};

/// Every document of `collection`, lowest `seq` first.
async fn in_seq_order(history: &History, collection: &str) -> Vec<Document> {
    history
        .collection(collection)
        .find(doc! {})
        .sort(doc! { "seq": 1 })
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("read")
}

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

    let stored = in_seq_order(&history, TELEMETRY).await;
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

#[tokio::test]
async fn a_record_the_database_refuses_is_set_aside_with_its_reason_and_the_rest_stored() {
    let history = History::connect(&common::mongodb_url(), &common::unique("refused"))
        .await
        .expect("connect");
    let record = |n: i64| {
        doc! { "_id": format!("dev-1:{n}:0"), "deviceId": "dev-1", "seq": n,
        "time": DateTime::from_millis(1_000 + n), "body": { "n": n } }
    };
    // A key starting with `$` is one the database refuses (the writer's own records never
    // carry one; this stands for any record refused for itself).
    let mut refused = record(2);
    refused.insert("body", doc! { "$bad": 1 });
    let batch = vec![record(1), refused, record(3)];
    history
        .insert(TELEMETRY, &batch)
        .await
        .expect("the batch counts as done");
    // Written again (a replay after a crash): nothing doubles.
    history.insert(TELEMETRY, &batch).await.expect("replay");

    let stored = in_seq_order(&history, TELEMETRY).await;
    let seqs: Vec<i64> = stored
        .iter()
        .map(|d| d.get_i64("seq").expect("seq"))
        .collect();
    assert_eq!(seqs, [1, 3]);

    let set_aside = in_seq_order(&history, REFUSED).await;
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    let entry = &set_aside[0];
    assert_eq!(entry.get_str("collection").expect("collection"), TELEMETRY);
    assert_eq!(entry.get_str("deviceId").expect("device"), "dev-1");
    assert_eq!(entry.get_i64("seq").expect("seq"), 2);
    assert!(
        entry.get_str("reason").expect("reason").contains("$bad"),
        "{entry:?}"
    );
    assert!(entry.get_str("record").expect("text").contains("$bad"));
}
