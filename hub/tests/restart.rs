//! Acknowledged writes survive `kill -9` of the hub process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Device, now};
use reqwest::Method;
use rumqttc::{MqttOptions, QoS, Transport};
use serde_json::{Value, json};

struct Proc {
    child: Child,
    mqtt: u16,
    http: u16,
}

impl Drop for Proc {
    /// A failed assertion must not leave the hub process running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(dir: &std::path::Path, mqtt: u16, http: u16) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudpillar-hub"))
        .args(["--data-dir", dir.to_str().unwrap(), "--insecure-loopback"])
        .args([
            "--mqtt",
            &format!("127.0.0.1:{mqtt}"),
            "--http",
            &format!("127.0.0.1:{http}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("listening"), "{first}");
    std::thread::spawn(move || for _ in lines {});
    Proc { child, mqtt, http }
}

async fn call(
    p: &Proc,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let token =
        cloudpillar_hub::sas::generate(key, "edgehub.local", now() + 600, Some("iothubowner"))
            .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(cloudpillar_hub::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap();
    let mut req = client
        .request(method, format!("http://127.0.0.1:{}{path}", p.http))
        .header("Authorization", token);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, http) = (free_port(), free_port());
    let mut hub = spawn(dir.path(), mqtt, http);
    let key = std::fs::read_to_string(dir.path().join("policy.key"))
        .unwrap()
        .trim()
        .to_string();

    let (s, dev) = call(
        &hub,
        &key,
        Method::PUT,
        "/devices/k1",
        Some(json!({"deviceId": "k1"})),
    )
    .await;
    assert_eq!(s, 200);
    let dkey = dev["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_string();
    call(
        &hub,
        &key,
        Method::PATCH,
        "/twins/k1",
        Some(json!({"tags": {"site": "x"}, "properties": {"desired": {"d": 1}}})),
    )
    .await;
    for i in 0..3 {
        let (s, _) = call(
            &hub,
            &key,
            Method::POST,
            "/devices/k1/messages/deviceBound",
            Some(json!({"n": i})),
        )
        .await;
        assert_eq!(s, 200);
    }

    // A consumer checkpoint taken now: everything after it must be readable after the crash.
    let (_, page) = call(&hub, &key, Method::GET, "/events?from=1&limit=1000", None).await;
    let checkpoint = page["nextSequenceNumber"].as_u64().unwrap();

    // Reported patches and telemetry acknowledged over MQTT (QoS 1 PUBACK / 204).
    let token =
        cloudpillar_hub::sas::generate(&dkey, "edgehub.local/devices/k1", now() + 3600, None)
            .unwrap();
    let mut opts = MqttOptions::new("k1", "127.0.0.1", hub.mqtt);
    opts.set_credentials("edgehub.local/k1/?api-version=2021-04-12", token);
    opts.set_transport(Transport::Tcp);
    let mut device = Device::connect(opts).await.unwrap();
    device
        .client
        .subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..20 {
        let res = device
            .twin_request(
                &format!("$iothub/twin/PATCH/properties/reported/?$rid={i}"),
                json!({ "step": i }),
            )
            .await;
        assert!(res.topic.starts_with("$iothub/twin/res/204/"));
    }
    device
        .client
        .publish(
            "devices/k1/messages/events/",
            QoS::AtLeastOnce,
            false,
            "last words",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // kill -9, then restart on the same directory.
    hub.child.kill().unwrap();
    hub.child.wait().unwrap();
    drop(device);
    let mut hub = spawn(dir.path(), mqtt, http);

    let (s, twin) = call(&hub, &key, Method::GET, "/twins/k1", None).await;
    assert_eq!(s, 200);
    assert_eq!(twin["tags"]["site"], "x");
    assert_eq!(twin["properties"]["desired"]["d"], 1);
    assert_eq!(twin["properties"]["reported"]["step"], 19);
    assert_eq!(twin["properties"]["reported"]["$version"], 21);
    let (_, dev) = call(&hub, &key, Method::GET, "/devices/k1", None).await;
    assert_eq!(dev["cloudToDeviceMessageCount"], 3);
    // The device was connected when the hub died: it reads disconnected, with the activity
    // stored at its connect, and its connection's end is in the event stream.
    assert_eq!(dev["connectionState"], "Disconnected", "{dev}");
    let active = dev["lastActivityTime"].as_str().unwrap();
    assert!(active.starts_with("20"), "last activity kept: {dev}");
    assert!(
        dev["connectionStateUpdatedTime"].as_str().unwrap() >= active,
        "{dev}"
    );
    let (_, page) = call(&hub, &key, Method::GET, "/events?from=1&limit=1000", None).await;
    let events = page["events"].as_array().unwrap();
    let connection_ops: Vec<&str> = events
        .iter()
        .filter(|e| e["source"] == "deviceConnectionStateEvents")
        .filter_map(|e| e["properties"]["opType"].as_str())
        .collect();
    assert_eq!(
        connection_ops,
        ["deviceConnected", "deviceDisconnected"],
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["bodyBase64"] == "bGFzdCB3b3Jkcw=="),
        "telemetry lost"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["source"] == "twinChangeEvents")
            .count(),
        21
    );
    let path = format!("/events?from={checkpoint}&limit=1000");
    let (_, resumed) = call(&hub, &key, Method::GET, &path, None).await;
    let resumed = resumed["events"].as_array().unwrap();
    assert_eq!(resumed[0]["sequenceNumber"].as_u64().unwrap(), checkpoint);
    assert!(
        resumed
            .iter()
            .any(|e| e["bodyBase64"] == "bGFzdCB3b3Jkcw==")
    );
    hub.child.kill().unwrap();
    hub.child.wait().unwrap();
}

/// Devices keep reported patches in flight while the hub is killed: every patch answered 204
/// is found after the restart, and each device's patches took versions in the order sent.
#[tokio::test]
async fn pipelined_reported_patches_acknowledged_before_kill_9_survive_in_order() {
    const DEVICES: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, http) = (free_port(), free_port());
    let mut hub = spawn(dir.path(), mqtt, http);
    let key = std::fs::read_to_string(dir.path().join("policy.key")).unwrap();
    let key = key.trim();

    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel::<(usize, u64, u64)>();
    let (mut devices, mut clients) = (Vec::new(), Vec::new());
    for d in 0..DEVICES {
        let id = format!("p{d}");
        let body = Some(json!({ "deviceId": id }));
        let (s, dev) = call(&hub, key, Method::PUT, &format!("/devices/{id}"), body).await;
        assert_eq!(s, 200);
        let dkey = dev["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap();
        let resource = format!("edgehub.local/devices/{id}");
        let token = cloudpillar_hub::sas::generate(dkey, &resource, now() + 3600, None).unwrap();
        let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", hub.mqtt);
        opts.set_credentials(format!("edgehub.local/{id}/?api-version=2021-04-12"), token);
        opts.set_transport(Transport::Tcp);
        let mut device = Device::connect(opts).await.unwrap();
        device
            .client
            .subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
            .await
            .unwrap();
        let acks_tx = acks_tx.clone();
        clients.push(device.client.clone());
        // Record each 204 as (device, n, $version).
        tokio::spawn(async move {
            while let Some(common::Ev::Msg(p)) = device.rx.recv().await {
                let Some(q) = p.topic.strip_prefix("$iothub/twin/res/204/?$rid=") else {
                    continue;
                };
                let (n, v) = q.split_once("&$version=").unwrap();
                let _ = acks_tx.send((d, n.parse().unwrap(), v.parse().unwrap()));
            }
        });
        devices.push(id);
    }
    // Every device publishes without waiting for answers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for client in clients {
        tokio::spawn(async move {
            for n in 0..5_000u64 {
                let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid={n}");
                let body = json!({ "n": n }).to_string();
                if client
                    .publish(topic, QoS::AtMostOnce, false, body)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    // Kill the hub while patches are still arriving, once a good number were acknowledged.
    let mut last = vec![None::<(u64, u64)>; DEVICES];
    let mut acked = 0;
    while acked < 2_000 {
        let (d, n, v) = tokio::time::timeout(Duration::from_secs(20), acks.recv())
            .await
            .expect("acknowledgements stopped")
            .unwrap();
        // A fresh twin has reported $version 1; patch n is the device's (n + 1)th.
        assert_eq!(v, n + 2, "device {d}: patch {n} got version {v}");
        last[d] = Some((n, v));
        acked += 1;
    }
    hub.child.kill().unwrap();
    hub.child.wait().unwrap();
    while let Ok((d, n, v)) = acks.try_recv() {
        assert_eq!(v, n + 2, "device {d}: patch {n} got version {v}");
        last[d] = Some((n, v));
    }

    let hub = spawn(dir.path(), mqtt, http);
    for (d, id) in devices.iter().enumerate() {
        let (s, twin) = call(&hub, key, Method::GET, &format!("/twins/{id}"), None).await;
        assert_eq!(s, 200);
        let reported = &twin["properties"]["reported"];
        let Some((n, v)) = last[d] else { continue };
        let stored_n = reported["n"].as_u64().unwrap();
        assert!(
            stored_n >= n,
            "{id}: acknowledged n={n} but stored n={stored_n}"
        );
        assert_eq!(reported["$version"].as_u64().unwrap(), stored_n + 2, "{id}");
        assert!(reported["$version"].as_u64().unwrap() >= v, "{id}");
    }
}
