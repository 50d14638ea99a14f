//! The MQTT device endpoint driven by rumqttc exactly as a device would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Device, TestHub, now, status_of};
use reqwest::Method;
use rumqttc::QoS;
use serde_json::{Value, json};

#[tokio::test]
async fn sas_device_gets_twin_patches_reported_and_receives_desired() {
    let hub = TestHub::start().await;
    let mut dev = hub.subscribed("dev1", true).await;

    let res = dev
        .twin_request("$iothub/twin/GET/?$rid=1", Value::Null)
        .await;
    assert_eq!(res.topic, "$iothub/twin/res/200/?$rid=1");
    let doc: Value = serde_json::from_slice(&res.payload).unwrap();
    assert_eq!(doc["reported"]["$version"], 1);

    let res = dev
        .twin_request(
            "$iothub/twin/PATCH/properties/reported/?$rid=2",
            json!({"deviceState": "READY"}),
        )
        .await;
    assert_eq!(res.topic, "$iothub/twin/res/204/?$rid=2&$version=2");

    let (status, _, twin) = hub
        .call(
            Method::PATCH,
            "/twins/dev1",
            Some(json!({"properties": {"desired": {"logLevel": "info"}}})),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(twin["properties"]["reported"]["deviceState"], "READY");
    let note = dev.next("$iothub/twin/PATCH/properties/desired/").await;
    assert_eq!(
        note.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=2"
    );
    let patch: Value = serde_json::from_slice(&note.payload).unwrap();
    assert_eq!(patch, json!({"logLevel": "info", "$version": 2}));
}

#[tokio::test]
async fn telemetry_reaches_event_stream_with_properties_and_connection_events() {
    let hub = TestHub::start().await;
    let key = hub.add_device("dev2").await;
    let dev = hub.connect("dev2", &key, true).await;
    dev.client
        .publish(
            "devices/dev2/messages/events/$.ct=application%2Fjson&kind=log",
            QoS::AtLeastOnce,
            false,
            r#"{"t":1}"#,
        )
        .await
        .unwrap();
    let (_, _, page) = hub
        .call(Method::GET, "/events?from=1&limit=100&wait=5", None, &[])
        .await;
    let mut events = page["events"].as_array().unwrap().clone();
    let mut next = page["nextSequenceNumber"].as_u64().unwrap();
    while !events.iter().any(|e| e["source"] == "Telemetry") {
        let (_, _, more) = hub
            .call(
                Method::GET,
                &format!("/events?from={next}&wait=5"),
                None,
                &[],
            )
            .await;
        next = more["nextSequenceNumber"].as_u64().unwrap();
        events.extend(more["events"].as_array().unwrap().clone());
    }
    let connected = events
        .iter()
        .find(|e| e["source"] == "deviceConnectionStateEvents")
        .unwrap();
    assert_eq!(connected["properties"]["opType"], "deviceConnected");
    let d2c = events.iter().find(|e| e["source"] == "Telemetry").unwrap();
    assert_eq!(d2c["deviceId"], "dev2");
    assert_eq!(d2c["body"], json!({"t": 1}));
    assert_eq!(d2c["properties"]["kind"], "log");
    assert_eq!(d2c["systemProperties"]["content-type"], "application/json");
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["sequenceNumber"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[tokio::test]
async fn f09_persistent_session_keeps_subscriptions_and_queued_c2d_across_reconnect() {
    let hub = TestHub::start().await;
    let (key, dev) = hub.subscribed_with_key("dev3", false).await;
    drop(dev);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // While offline: desired changes and one C2D message are queued.
    hub.call(
        Method::PATCH,
        "/twins/dev3",
        Some(json!({"properties": {"desired": {"a": 1}}})),
        &[],
    )
    .await;
    let (status, _, _) = hub
        .call(
            Method::POST,
            "/devices/dev3/messages/deviceBound",
            Some(json!({"chunk": 1})),
            &[("iothub-app-kind", "chunk")],
        )
        .await;
    assert_eq!(status, 200);

    let token = hub.device_token("dev3", &key, now() + 3600);
    let (mut dev, present) =
        Device::connect_with_ack(hub.device_options("dev3", Some(token), false)).await;
    assert!(present, "broker must keep the session");
    // No SUBSCRIBE sent: the kept subscription delivers the queued message.
    let c2d = dev.next("devices/dev3/messages/devicebound/").await;
    assert!(c2d.topic.contains("kind=chunk"), "{}", c2d.topic);
    assert_eq!(
        serde_json::from_slice::<Value>(&c2d.payload).unwrap(),
        json!({"chunk": 1})
    );

    // F04: the catch-up GET shows the desired state written while offline.
    let res = dev
        .twin_request("$iothub/twin/GET/?$rid=9", Value::Null)
        .await;
    let doc: Value = serde_json::from_slice(&res.payload).unwrap();
    assert_eq!(doc["desired"]["a"], 1);
    assert_eq!(doc["desired"]["$version"], 2);

    // The message was completed by the PUBACK: the queue is empty.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, _, device) = hub.call(Method::GET, "/devices/dev3", None, &[]).await;
    assert_eq!(device["cloudToDeviceMessageCount"], 0);
}

#[tokio::test]
async fn f09_clean_session_reconnect_has_no_session() {
    let hub = TestHub::start().await;
    let (key, dev) = hub.subscribed_with_key("dev4", true).await;
    drop(dev);
    let token = hub.device_token("dev4", &key, now() + 3600);
    let (_dev, present) =
        Device::connect_with_ack(hub.device_options("dev4", Some(token), true)).await;
    assert!(!present);
}

#[tokio::test]
async fn device_cannot_subscribe_or_publish_to_another_devices_topics() {
    let hub = TestHub::start().await;
    let key = hub.add_device("dev5").await;
    hub.add_device("dev6").await;
    let mut dev = hub.connect("dev5", &key, true).await;
    // Subscribing elsewhere gets a failure return code; the connection stays.
    dev.client
        .subscribe("devices/dev6/messages/devicebound/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    dev.subscribe_all("dev5").await;
    let res = dev
        .twin_request("$iothub/twin/GET/?$rid=1", Value::Null)
        .await;
    assert_eq!(status_of(&res.topic), 200);
    // Publishing as another device closes the connection, as IoT Hub does.
    dev.client
        .publish(
            "devices/dev6/messages/events/",
            QoS::AtLeastOnce,
            false,
            "x",
        )
        .await
        .unwrap();
    assert!(dev.closed().await.is_some());
}

#[tokio::test]
async fn bad_reported_patches_get_azure_status_and_keep_connection_and_state() {
    let hub = TestHub::start().await;
    let mut dev = hub.subscribed("dev7", true).await;
    let deep = (0..11).fold(json!(1), |inner, _| json!({ "k": inner }));
    let cases = [
        (json!({"files": {"firmware.bin": {"crc": "0943260c"}}}), 400),
        (json!({"$pre": 1}), 400),
        (json!({"$version": 77, "b": 2}), 400),
        (json!({"$metadata": {"z": 1}}), 400),
        (json!({"": 1}), 400),
        (json!({"v1.2 hotfix": 1}), 400),
        (deep, 400),
        (json!({"big": "x".repeat(33 * 1024)}), 413),
    ];
    for (i, (patch, want)) in cases.into_iter().enumerate() {
        let res = dev
            .twin_request(
                &format!("$iothub/twin/PATCH/properties/reported/?$rid={i}"),
                patch,
            )
            .await;
        assert_eq!(status_of(&res.topic), want, "case {i}");
    }
    dev.client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=m",
            QoS::AtMostOnce,
            false,
            "{not json",
        )
        .await
        .unwrap();
    assert_eq!(status_of(&dev.next("$iothub/twin/res/").await.topic), 400);
    // Still connected, nothing changed.
    let res = dev
        .twin_request("$iothub/twin/GET/?$rid=g", Value::Null)
        .await;
    let doc: Value = serde_json::from_slice(&res.payload).unwrap();
    assert_eq!(doc["reported"], json!({"$version": 1}));
}

#[tokio::test]
async fn f08_large_twin_response_and_64k_c2d_arrive_without_reconnect() {
    let hub = TestHub::start().await;
    let mut dev = hub.subscribed("dev8", true).await;
    let big = "x".repeat(20_000);
    let res = dev
        .twin_request(
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            json!({ "blob": big }),
        )
        .await;
    assert_eq!(status_of(&res.topic), 204);
    let res = dev
        .twin_request("$iothub/twin/GET/?$rid=2", Value::Null)
        .await;
    assert!(res.payload.len() > 10_241);
    let body = vec![b'a'; 65_536];
    let url = format!(
        "{}/devices/dev8/messages/deviceBound?api-version=2021-04-12",
        hub.base
    );
    let resp = hub
        .http
        .post(url)
        .header("Authorization", hub.token())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let c2d = dev.next("devices/dev8/messages/devicebound/").await;
    assert_eq!(c2d.payload.len(), 65_536);
    let over = hub
        .http
        .post(format!("{}/devices/dev8/messages/deviceBound", hub.base))
        .header("Authorization", hub.token())
        .body(vec![b'a'; 65_537])
        .send()
        .await
        .unwrap();
    assert_eq!(over.status(), 413);
}

#[tokio::test]
async fn f10_expired_token_is_tolerated_for_five_minutes_only() {
    let hub = TestHub::start().await;
    let key = hub.add_device("dev9").await;
    let fresh = hub.device_token("dev9", &key, now() - 200);
    Device::connect(hub.device_options("dev9", Some(fresh), true))
        .await
        .expect("within tolerance");
    let stale = hub.device_token("dev9", &key, now() - 400);
    assert!(
        Device::connect(hub.device_options("dev9", Some(stale), true))
            .await
            .is_err()
    );
    let wrong = hub.device_token("dev9", &cloudpillar_hub::sas::random_key(), now() + 3600);
    assert!(
        Device::connect(hub.device_options("dev9", Some(wrong), true))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_new_connection_closes_the_old_one() {
    let hub = TestHub::start().await;
    let key = hub.add_device("dev10").await;
    let mut first = hub.connect("dev10", &key, true).await;
    let _second = hub.connect("dev10", &key, true).await;
    assert!(first.closed().await.is_some());
}

#[tokio::test]
async fn direct_method_round_trip() {
    let hub = TestHub::start().await;
    let mut dev = hub.subscribed("dev11", true).await;
    let call = {
        let (http, base, token) = (hub.http.clone(), hub.base.clone(), hub.token());
        tokio::spawn(async move {
            http.post(format!("{base}/twins/dev11/methods?api-version=2021-04-12"))
                .header("Authorization", token)
                .json(&json!({"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 10}))
                .send().await.unwrap().json::<Value>().await.unwrap()
        })
    };
    let req = dev.next("$iothub/methods/POST/").await;
    assert!(req.topic.starts_with("$iothub/methods/POST/reboot/?$rid="));
    let rid = req.topic.rsplit("$rid=").next().unwrap().to_string();
    dev.client
        .publish(
            format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            r#"{"ok":true}"#,
        )
        .await
        .unwrap();
    assert_eq!(
        call.await.unwrap(),
        json!({"status": 200, "payload": {"ok": true}})
    );
}

#[tokio::test]
async fn retained_telemetry_is_passed_on_with_the_mqtt_retain_property() {
    let hub = TestHub::start().await;
    let key = hub.add_device("ret1").await;
    let dev = hub.connect("ret1", &key, true).await;
    for (retain, body) in [(true, "kept"), (false, "plain")] {
        dev.client
            .publish(
                "devices/ret1/messages/events/",
                QoS::AtLeastOnce,
                retain,
                body,
            )
            .await
            .unwrap();
    }
    let mut telemetry = Vec::new();
    for _ in 0..50 {
        let events = hub.events().await;
        telemetry = events
            .into_iter()
            .filter(|e| e["source"] == "Telemetry")
            .collect();
        if telemetry.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(telemetry.len(), 2, "{telemetry:?}");
    assert_eq!(telemetry[0]["properties"]["mqtt-retain"], "true");
    assert!(telemetry[1]["properties"].get("mqtt-retain").is_none());
}
