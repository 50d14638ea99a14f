//! Link robustness against the edge hub: large packets (F08), lost sessions (F09).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cloudpillar_protocol::messages::{
    AuthMethod, C2dMessage, ProvisioningMode, UpgradeProvisioning,
};
use serde_json::json;

use common::{TestHub, parse_config};

fn connections(
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<cloudpillar_hub::HubEvent>>,
    device: &str,
) -> usize {
    let mut n = 0;
    while let Ok(event) = events.try_recv() {
        if event.device_id == device && event.source == "deviceConnectionStateEvents" {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f08_twin_reads_over_10_kib_and_64_kib_c2d_messages_keep_the_link_up() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("big-1", dir.path(), "").await);
    let agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("big-1", "connected", |r| r["health"] == "connected")
        .await;
    let mut events = hub.hub.events();

    // A desired section well over 10,240 bytes, delivered as a patch and in full reads.
    let big = "x".repeat(20_000);
    hub.patch_desired("big-1", json!({"notes": big})).await;
    let version = hub.twin("big-1").await["properties"]["desired"]["$version"]
        .as_u64()
        .unwrap();
    hub.wait_reported("big-1", "big desired applied", |r| {
        r["desiredVersionApplied"].as_u64() == Some(version)
    })
    .await;
    // A C2D message of about 64 KiB (a full 47 KiB chunk as base64 in JSON).
    let message =
        C2dMessage::DownloadFileChunk(cloudpillar_protocol::messages::DownloadFileChunk {
            file_id: "nobody-asked".into(),
            offset: 0,
            data: vec![1u8; cloudpillar_protocol::messages::MAX_RAW_CHUNK],
            total_size: None,
        });
    let body = message.encode().unwrap();
    assert!(body.len() > 60 * 1024);
    let sender = common::streamer::C2dSender::new(&hub);
    common::streamer::send(&sender, "big-1", &message).await;
    for _ in 0..50 {
        if hub.twin("big-1").await["cloudToDeviceMessageCount"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        hub.twin("big-1").await["cloudToDeviceMessageCount"],
        0,
        "C2D acknowledged"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connections(&mut events, "big-1"), 0, "no reconnect");
    use cloudpillar_agent::api::LinkControl;
    assert_eq!(
        agent.link.as_ref().unwrap().desired()["notes"]
            .as_str()
            .unwrap()
            .len(),
        20_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f09_after_a_reconnect_without_session_both_handlers_fire_within_5_s() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("ses-1", dir.path(), "").await);
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("ses-1", "connected", |r| r["health"] == "connected")
        .await;

    // The hub forgets the session and cuts the connection.
    let core = hub.hub.core();
    core.save_session("ses-1", None).await.unwrap();
    core.push("ses-1", cloudpillar_hub::core::Outbound::Close);
    for _ in 0..100 {
        if hub.twin("ses-1").await["connectionState"] == "Connected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.wait_reported("ses-1", "reconnected", |r| r["health"] == "connected")
        .await;

    // The backend patches desired and queues one C2D message.
    let started = std::time::Instant::now();
    hub.patch_desired(
        "ses-1",
        json!({"provisioning": {"authMethod": "SAS", "hub": "other.hub", "mode": "FULL"}}),
    )
    .await;
    let upgrade = C2dMessage::UpgradeProvisioning(UpgradeProvisioning {
        auth_method: AuthMethod::Sas,
        hub: "mismatch.hub".into(),
        mode: ProvisioningMode::Full,
        key: "c2VjcmV0".into(),
    });
    let sender = common::streamer::C2dSender::new(&hub);
    common::streamer::send(&sender, "ses-1", &upgrade).await;
    let version = hub.twin("ses-1").await["properties"]["desired"]["$version"]
        .as_u64()
        .unwrap();
    hub.wait_reported("ses-1", "both handlers", |r| {
        r["desiredVersionApplied"].as_u64() == Some(version)
            && r["provisioning"]["status"] == "refused"
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_to_cloud_messages_queued_offline_survive_a_restart_and_are_delivered() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = hub.agent_config("q-1", dir.path(), "").await;
    let first = cloudpillar_agent::daemon::start(parse_config(&text))
        .await
        .unwrap();
    hub.wait_reported("q-1", "connected", |r| r["health"] == "connected")
        .await;
    first
        .device
        .apply(cloudpillar_agent::state::Command::SetBusy)
        .unwrap();
    for _ in 0..100 {
        if hub.twin("q-1").await["connectionState"] == "Disconnected" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let link = first.link.clone().unwrap();
    for n in 0..3u8 {
        let message = cloudpillar_agent::link::Outgoing {
            properties: vec![("messageType".into(), "Probe".into())],
            payload: format!("{{\"n\":{n}}}").into_bytes(),
            droppable: false,
        };
        link.send(message).await.unwrap();
    }

    // A new process on the same state dir starts BUSY, like the one that stopped; the
    // first releases the state directory's lock when it is dropped.
    drop(first);
    let mut events = hub.hub.events();
    let second = cloudpillar_agent::daemon::start(parse_config(&text))
        .await
        .unwrap();
    assert_eq!(
        second.device.state(),
        cloudpillar_agent::state::DeviceState::Busy
    );
    second
        .device
        .apply(cloudpillar_agent::state::Command::SetReady)
        .unwrap();
    let mut seen = vec![];
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.len() < 3 {
            let event = events.recv().await.unwrap();
            if event.device_id == "q-1"
                && event.properties.get("messageType").map(String::as_str) == Some("Probe")
            {
                seen.push(event.body.clone().unwrap()["n"].as_u64().unwrap());
            }
        }
    })
    .await
    .expect("queued messages delivered");
    assert_eq!(seen, [0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_queued_offline_are_all_delivered_once_connected() {
    const MESSAGES: u64 = 1000;
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("q-many", dir.path(), "").await);

    // Queued by an earlier run that never got through; far more than the MQTT client's
    // request channel holds.
    let outbox = cloudpillar_agent::link::outbox::Outbox::open(&config.state_dir, 1024).unwrap();
    for n in 0..MESSAGES {
        let message = cloudpillar_agent::link::Outgoing {
            properties: vec![("messageType".into(), "Probe".into())],
            payload: format!("{{\"n\":{n}}}").into_bytes(),
            droppable: false,
        };
        outbox.push(message, false).await.unwrap();
    }
    drop(outbox);

    let mut events = hub.hub.events();
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    // Generous bound: the hang this guards against never delivers the rest.
    let delivered = tokio::time::timeout(Duration::from_secs(120), async {
        while (seen.len() as u64) < MESSAGES {
            let event = events.recv().await.unwrap();
            if event.device_id == "q-many"
                && event.properties.get("messageType").map(String::as_str) == Some("Probe")
            {
                seen.insert(event.body.clone().unwrap()["n"].as_u64().unwrap());
            }
        }
    })
    .await;
    assert!(
        delivered.is_ok(),
        "{} of {MESSAGES} queued messages delivered",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_provisioning_matching_desired_switches_key_reconnects_then_reports() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("up-1", dir.path(), "").await);
    let agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("up-1", "connected", |r| r["health"] == "connected")
        .await;

    // The backend announces the upgrade in desired (no key), rotates the key in the
    // registry, then sends the key in the C2D message.
    let host = hub.hub.hostname().to_owned();
    hub.patch_desired(
        "up-1",
        json!({"provisioning": {"authMethod": "SAS", "hub": host, "mode": "FULL"}}),
    )
    .await;
    let version = hub.twin("up-1").await["properties"]["desired"]["$version"]
        .as_u64()
        .unwrap();
    hub.wait_reported("up-1", "desired applied", |r| {
        r["desiredVersionApplied"].as_u64() == Some(version)
    })
    .await;
    let new_key = cloudpillar_hub::sas::random_key();
    let record = json!({"deviceId": "up-1", "authentication": {"type": "sas",
        "symmetricKey": {"primaryKey": new_key, "secondaryKey": new_key}}});
    let (status, body) = hub
        .call_with(
            reqwest::Method::PUT,
            "/devices/up-1",
            Some(record.to_string().into_bytes()),
            &[("If-Match", "*")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let upgrade = C2dMessage::UpgradeProvisioning(UpgradeProvisioning {
        auth_method: AuthMethod::Sas,
        hub: host.clone(),
        mode: ProvisioningMode::Full,
        key: new_key.clone(),
    });
    let sender = common::streamer::C2dSender::new(&hub);
    common::streamer::send(&sender, "up-1", &upgrade).await;

    let reported = hub
        .wait_reported("up-1", "upgrade applied", |r| {
            r["provisioning"]["status"] == "applied"
        })
        .await;
    assert_eq!(reported["provisioning"]["hub"], host.as_str());
    assert!(
        reported["provisioning"].get("key").is_none(),
        "the key is never reported"
    );
    let stored = std::fs::read_to_string(dir.path().join("state/device.key")).unwrap();
    assert_eq!(stored, new_key);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("state/device.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Connected again with the new key: a later desired change still arrives.
    hub.patch_desired("up-1", json!({"after": 1})).await;
    let latest = hub.twin("up-1").await["properties"]["desired"]["$version"]
        .as_u64()
        .unwrap();
    hub.wait_reported("up-1", "still syncing", |r| {
        r["desiredVersionApplied"].as_u64() == Some(latest) && r["health"] == "connected"
    })
    .await;
    drop(agent);
}
