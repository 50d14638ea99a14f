//! C2D delivery counts over real device connections: a message a device never acknowledges
//! goes out at most the maximum delivery count times, then leaves the queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cloudpillar_hub::MaxDeliveryCount;
use common::{Device, Ev, TestHub, now};
use reqwest::Method;
use rumqttc::{Publish, QoS};
use serde_json::{Value, json};

/// A hub that gives up on a C2D message after two deliveries, with device `id` registered and
/// one message queued for it. Returns the hub and the device key.
async fn hub_with_one_message(id: &str) -> (TestHub, String) {
    let hub = TestHub::start_adjusted(|config| {
        config.c2d_max_delivery_count = MaxDeliveryCount::new(2).unwrap();
    })
    .await;
    let key = hub.add_device(id).await;
    let send = format!("/devices/{id}/messages/deviceBound");
    let (status, _, _) = hub
        .call(Method::POST, &send, Some(json!({"n": 1})), &[])
        .await;
    assert_eq!(status, 200);
    (hub, key)
}

/// Connects device `id` with a clean session and PUBACKs left to the test, subscribed to its
/// C2D topic at QoS 1.
async fn connect_acking_by_hand(hub: &TestHub, id: &str, key: &str) -> Device {
    let token = hub.device_token(id, key, now() + 3600);
    let mut opts = hub.device_options(id, Some(token), true);
    opts.set_manual_acks(true);
    let dev = Device::connect(opts).await.expect("connect");
    dev.client
        .subscribe(
            format!("devices/{id}/messages/devicebound/#"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    dev
}

/// The next C2D message the device receives, if one comes within two seconds.
async fn next_c2d(dev: &mut Device) -> Option<Publish> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, dev.rx.recv()).await {
            Ok(Some(Ev::Msg(p))) if p.topic.contains("/messages/devicebound/") => return Some(p),
            Ok(Some(Ev::Down(e))) => panic!("link down waiting for C2D: {e}"),
            Ok(Some(_)) => {}
            _ => return None,
        }
    }
}

/// Waits up to five seconds for the device view to show an empty C2D queue.
async fn assert_queue_drains(hub: &TestHub, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, device) = hub
            .call(Method::GET, &format!("/devices/{id}"), None, &[])
            .await;
        if device["cloudToDeviceMessageCount"] == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue not drained: {device}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Receives the queued message on a new connection and leaves without acknowledging it.
async fn receive_without_ack(hub: &TestHub, id: &str, key: &str, delivery: u32) {
    let mut dev = connect_acking_by_hand(hub, id, key).await;
    let c2d = next_c2d(&mut dev)
        .await
        .unwrap_or_else(|| panic!("delivery {delivery} did not come"));
    assert_eq!(
        serde_json::from_slice::<Value>(&c2d.payload).unwrap(),
        json!({"n": 1})
    );
}

#[tokio::test]
async fn a_message_never_acknowledged_is_dead_lettered_after_the_maximum_deliveries() {
    let (hub, key) = hub_with_one_message("dl1").await;
    receive_without_ack(&hub, "dl1", &key, 1).await;
    receive_without_ack(&hub, "dl1", &key, 2).await;

    let mut dev = connect_acking_by_hand(&hub, "dl1", &key).await;
    let third = next_c2d(&mut dev).await;
    assert!(third.is_none(), "delivered a third time: {third:?}");
    assert_queue_drains(&hub, "dl1").await;
    assert_eq!(hub.hub.core().c2d_dead_lettered(), 1);
}

#[tokio::test]
async fn a_message_acknowledged_on_its_last_allowed_delivery_is_completed() {
    let (hub, key) = hub_with_one_message("dl2").await;
    receive_without_ack(&hub, "dl2", &key, 1).await;

    let mut dev = connect_acking_by_hand(&hub, "dl2", &key).await;
    let second = next_c2d(&mut dev).await.expect("second delivery");
    dev.client.ack(&second).await.unwrap();
    assert_queue_drains(&hub, "dl2").await;
    assert_eq!(
        hub.hub.core().c2d_dead_lettered(),
        0,
        "completed, not dead-lettered"
    );
}
