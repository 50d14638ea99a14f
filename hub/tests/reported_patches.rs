//! Reported patches on the group-commit path: order per device, coexistence with service
//! writes to the same twin, and twins of deleted devices.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Ev, TestHub, status_of};
use reqwest::Method;
use rumqttc::QoS;
use serde_json::{Value, json};

const PATCHES: u64 = 300;

/// Publishes `PATCHES` reported patches `{"n": i}` without waiting, then collects all their
/// answers as (n, $version), in the order they arrive.
async fn pipeline(dev: &mut common::Device) -> Vec<(u64, u64)> {
    for n in 0..PATCHES {
        let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid={n}");
        let body = json!({ "n": n }).to_string();
        dev.client
            .publish(topic, QoS::AtMostOnce, false, body)
            .await
            .unwrap();
    }
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (answers.len() as u64) < PATCHES {
        let Ok(Some(Ev::Msg(p))) = tokio::time::timeout_at(deadline, dev.rx.recv()).await else {
            panic!("answers stopped after {answers:?}");
        };
        if let Some(q) = p.topic.strip_prefix("$iothub/twin/res/204/?$rid=") {
            let (n, v) = q.split_once("&$version=").unwrap();
            answers.push((n.parse().unwrap(), v.parse().unwrap()));
        } else {
            assert!(!p.topic.starts_with("$iothub/twin/res/"), "{}", p.topic);
        }
    }
    answers
}

#[tokio::test]
async fn a_device_pipelining_reported_patches_gets_versions_in_the_order_it_sent_them() {
    let hub = TestHub::start().await;
    let mut dev = hub.subscribed("seq-1", true).await;

    let answers = pipeline(&mut dev).await;
    for (n, v) in &answers {
        assert_eq!(*v, n + 2, "patch {n} took version {v}");
    }
    let (_, _, twin) = hub.call(Method::GET, "/twins/seq-1", None, &[]).await;
    assert_eq!(twin["properties"]["reported"]["n"], PATCHES - 1);
    assert_eq!(twin["properties"]["reported"]["$version"], PATCHES + 1);

    // The event stream carries the changes in the same order.
    let seen: Vec<u64> = hub
        .events()
        .await
        .iter()
        .filter(|e| e["source"] == "twinChangeEvents")
        .filter_map(|e| e["body"]["properties"]["reported"]["n"].as_u64())
        .collect();
    assert_eq!(seen, (0..PATCHES).collect::<Vec<_>>());
}

#[tokio::test]
async fn telemetry_arriving_in_pieces_keeps_its_place_among_reported_patches() {
    let hub = TestHub::start().await;
    let mut dev = hub.subscribed("big-1", true).await;

    // Every third message is a 100 KB event (read in chunks), the rest reported patches.
    for n in 0..PATCHES {
        if n % 3 == 0 {
            let body = json!({ "n": n, "blob": "b".repeat(100_000) }).to_string();
            let topic = "devices/big-1/messages/events/";
            dev.client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .unwrap();
        } else {
            let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid={n}");
            let body = json!({ "n": n }).to_string();
            dev.client
                .publish(topic, QoS::AtMostOnce, false, body)
                .await
                .unwrap();
        }
    }
    let last = format!("$iothub/twin/res/204/?$rid={}&", PATCHES - 1);
    dev.next(&last).await;

    let seen: Vec<u64> = hub
        .events()
        .await
        .iter()
        .filter_map(|e| match e["source"].as_str() {
            Some("Telemetry") => e["body"]["n"].as_u64(),
            Some("twinChangeEvents") => e["body"]["properties"]["reported"]["n"].as_u64(),
            _ => None,
        })
        .collect();
    assert_eq!(seen, (0..PATCHES).collect::<Vec<_>>());
}

#[tokio::test]
async fn desired_writes_and_pipelined_reported_patches_to_one_twin_all_land() {
    let hub = TestHub::start().await;
    let mut dev = hub.subscribed("mix-1", true).await;

    let service = async {
        for i in 0..40 {
            let body = json!({ "properties": { "desired": { format!("d{i}"): i } } });
            let (s, _, _) = hub
                .call(Method::PATCH, "/twins/mix-1", Some(body), &[])
                .await;
            assert_eq!(s, 200);
        }
    };
    let (mut answers, ()) = tokio::join!(pipeline(&mut dev), service);
    // Patches apply in the order they were published: versions grow with n. The answers to
    // pipelined requests may arrive in another order (devices match them by $rid).
    answers.sort_unstable();
    assert!(answers.windows(2).all(|w| w[0].1 < w[1].1), "{answers:?}");

    let (_, _, twin) = hub.call(Method::GET, "/twins/mix-1", None, &[]).await;
    let desired = &twin["properties"]["desired"];
    assert!((0..40).all(|i| desired[format!("d{i}")] == i), "{desired}");
    assert_eq!(desired["$version"], 41);
    assert_eq!(twin["properties"]["reported"]["n"], PATCHES - 1);
    assert_eq!(twin["properties"]["reported"]["$version"], PATCHES + 1);
    assert_eq!(twin["version"], 1 + 40 + PATCHES);
}

#[tokio::test]
async fn a_deleted_and_recreated_device_starts_with_a_fresh_twin() {
    let hub = TestHub::start().await;
    let mut dev = hub.subscribed("gone-1", true).await;
    let topic = "$iothub/twin/PATCH/properties/reported/?$rid=1";
    let res = dev.twin_request(topic, json!({ "old": true })).await;
    assert_eq!(status_of(&res.topic), 204);
    drop(dev);

    let (s, _, _) = hub.call(Method::DELETE, "/devices/gone-1", None, &[]).await;
    assert_eq!(s, 204);
    let key = hub.add_device("gone-1").await;
    let (_, _, twin) = hub.call(Method::GET, "/twins/gone-1", None, &[]).await;
    assert_eq!(twin["properties"]["reported"].get("old"), None, "{twin}");
    assert_eq!(twin["properties"]["reported"]["$version"], 1);

    let mut dev = hub.connect("gone-1", &key, true).await;
    dev.subscribe_all("gone-1").await;
    let res = dev.twin_request(topic, json!({ "new": true })).await;
    assert_eq!(status_of(&res.topic), 204);
    assert!(res.topic.ends_with("&$version=2"), "{}", res.topic);
    let doc = dev
        .twin_request("$iothub/twin/GET/?$rid=2", Value::Null)
        .await;
    let doc: Value = serde_json::from_slice(&doc.payload).unwrap();
    assert_eq!(doc["reported"], json!({ "new": true, "$version": 2 }));
}
