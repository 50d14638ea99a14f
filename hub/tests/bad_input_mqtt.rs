//! Bad input and limits on the MQTT endpoint, C2D queue limits, and token expiry cut-off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Device, TestHub, now};
use reqwest::Method;
use rumqttc::QoS;
use serde_json::{Value, json};

async fn telemetry_count(hub: &TestHub) -> usize {
    hub.events()
        .await
        .iter()
        .filter(|e| e["source"] == "Telemetry")
        .count()
}

#[tokio::test]
async fn qos2_publish_closes_the_connection() {
    let hub = TestHub::start().await;
    let key = hub.add_device("b1").await;
    let mut dev = hub.connect("b1", &key, true).await;
    dev.client
        .publish("devices/b1/messages/events/", QoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    assert!(dev.closed().await.is_some());
    assert_eq!(telemetry_count(&hub).await, 0);
}

#[tokio::test]
async fn oversize_telemetry_and_unknown_topics_close_the_connection_and_store_nothing() {
    let hub = TestHub::start().await;
    let key = hub.add_device("b2").await;
    let mut dev = hub.connect("b2", &key, true).await;
    let body = vec![b'a'; 256 * 1024 + 1];
    dev.client
        .publish("devices/b2/messages/events/", QoS::AtLeastOnce, false, body)
        .await
        .unwrap();
    assert!(dev.closed().await.is_some());
    let mut dev = hub.connect("b2", &key, true).await;
    let exact = vec![b'a'; 256 * 1024];
    dev.client
        .publish(
            "devices/b2/messages/events/",
            QoS::AtLeastOnce,
            false,
            exact,
        )
        .await
        .unwrap();
    dev.client
        .publish("$iothub/nonsense/", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert!(dev.closed().await.is_some());
    assert_eq!(telemetry_count(&hub).await, 1);
}

#[tokio::test]
async fn c2d_queue_refuses_the_51st_message_and_drops_expired_ones() {
    let hub = TestHub::start().await;
    hub.add_device("b3").await;
    for i in 0..50 {
        let (s, _, _) = hub
            .call(
                Method::POST,
                "/devices/b3/messages/deviceBound",
                Some(json!({"i": i})),
                &[],
            )
            .await;
        assert_eq!(s, 200);
    }
    let (s, h, _) = hub
        .call(
            Method::POST,
            "/devices/b3/messages/deviceBound",
            Some(json!({"i": 50})),
            &[],
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(h["iothub-errorcode"], "DeviceMaximumQueueDepthExceeded");

    hub.add_device("b4").await;
    let key = hub.add_device("b5").await;
    let (s, _, _) = hub
        .call(
            Method::POST,
            "/devices/b5/messages/deviceBound?ttlSeconds=1",
            Some(json!({"old": true})),
            &[],
        )
        .await;
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, _, device) = hub.call(Method::GET, "/devices/b5", None, &[]).await;
    assert_eq!(device["cloudToDeviceMessageCount"], 0);
    hub.call(
        Method::POST,
        "/devices/b5/messages/deviceBound",
        Some(json!({"new": true})),
        &[],
    )
    .await;
    let mut dev = hub.connect("b5", &key, true).await;
    dev.subscribe_all("b5").await;
    let msg = dev.next("devices/b5/messages/devicebound/").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&msg.payload).unwrap(),
        json!({"new": true})
    );
}

#[tokio::test]
async fn f10_connected_device_is_cut_off_when_token_plus_tolerance_passes() {
    let hub = TestHub::start().await;
    let key = hub.add_device("b6").await;
    let token = hub.device_token("b6", &key, now() - 297);
    let started = Instant::now();
    let mut dev = Device::connect(hub.device_options("b6", Some(token), true))
        .await
        .unwrap();
    assert!(
        dev.closed().await.is_some(),
        "still connected past expiry + 300 s"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn disabled_device_cannot_connect() {
    let hub = TestHub::start().await;
    let key = hub.add_device("b7").await;
    let (_, _, mut device) = hub.call(Method::GET, "/devices/b7", None, &[]).await;
    device["status"] = json!("disabled");
    let (s, _, _) = hub
        .call(
            Method::PUT,
            "/devices/b7",
            Some(device),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(s, 200);
    let token = hub.device_token("b7", &key, now() + 3600);
    assert!(
        Device::connect(hub.device_options("b7", Some(token), true))
            .await
            .is_err()
    );
}
