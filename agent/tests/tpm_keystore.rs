//! The device key in a TPM 2.0 (`swtpm` on loopback): tokens equal the software ones, the
//! key survives TPM and agent restarts, and the agent connects to the edge hub with it.
//! Every test skips, saying so, when `swtpm` is not installed; CI installs it.
#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cloudpillar_agent::keystore::{DeviceKey, KeyStoreError, TpmError, TpmKey};
use cloudpillar_hub::HubEvent;

use common::swtpm::Swtpm;
use common::{TestHub, parse_config_with};

const HANDLE: u32 = 0x8100_0C01;
const RESOURCE: &str = "hub.local/devices/tpm-1";

fn random_key(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rand::fill(bytes.as_mut_slice());
    cloudpillar_protocol::encoding::encode_base64(&bytes)
}

async fn import(tpm: &TpmKey, key: &str) {
    let tpm = tpm.clone();
    let key = cloudpillar_protocol::sas::decode_key(key).unwrap();
    tokio::task::spawn_blocking(move || tpm.import(&key))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn tpm_signs_tokens_equal_to_the_software_ones_and_keeps_the_key_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut swtpm) = Swtpm::start(dir.path()) else {
        return;
    };
    let tpm = TpmKey {
        tcti: swtpm.tcti(),
        handle: HANDLE,
    };
    // Azure hands out 32- and 64-byte keys; both must sign as the software HMAC does.
    for len in [32, 64] {
        let key = random_key(len);
        import(&tpm, &key).await;
        let plain = DeviceKey::Plain(key.clone());
        let held = DeviceKey::Tpm(tpm.clone());
        for key_name in [None, Some("registration")] {
            let expected = plain
                .token(RESOURCE, 1_900_000_000, key_name)
                .await
                .unwrap();
            let signed = held.token(RESOURCE, 1_900_000_000, key_name).await.unwrap();
            assert_eq!(signed, expected, "{len}-byte key, policy {key_name:?}");
        }
    }

    // A power cycle of the TPM keeps the persistent key (the 64-byte one, imported last).
    let key = random_key(64);
    import(&tpm, &key).await;
    swtpm.restart();
    let after = DeviceKey::Tpm(tpm.clone())
        .token(RESOURCE, 1_900_000_001, None)
        .await
        .unwrap();
    let expected = DeviceKey::Plain(key)
        .token(RESOURCE, 1_900_000_001, None)
        .await
        .unwrap();
    assert_eq!(after, expected);
}

#[tokio::test]
async fn missing_handle_and_unreachable_tpm_are_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let Some(swtpm) = Swtpm::start(dir.path()) else {
        return;
    };
    let empty = DeviceKey::Tpm(TpmKey {
        tcti: swtpm.tcti(),
        handle: HANDLE,
    });
    let error = empty.token(RESOURCE, 1, None).await.unwrap_err();
    assert!(
        matches!(
            error,
            KeyStoreError::Tpm(TpmError::HandleMissing { handle: HANDLE })
        ),
        "{error:?}"
    );
    assert!(
        cloudpillar_agent::causes::with_causes(&error).contains("0x81000c01 holds no device key"),
        "{error}"
    );

    let tcti = swtpm.tcti();
    drop(swtpm);
    let absent = DeviceKey::Tpm(TpmKey {
        tcti: tcti.clone(),
        handle: HANDLE,
    });
    let error = absent.token(RESOURCE, 1, None).await.unwrap_err();
    assert!(
        matches!(&error, KeyStoreError::Tpm(TpmError::Open { tcti: t, .. }) if *t == tcti),
        "{error:?}"
    );
}

/// An edge hub, a temporary directory and a TPM keeping its state there; `None` when
/// `swtpm` is not installed.
async fn rig() -> Option<(TestHub, tempfile::TempDir, Swtpm)> {
    let dir = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(dir.path())?;
    Some((TestHub::start().await, dir, swtpm))
}

/// An agent configuration with a `[tpm]` section reaching `tcti`.
fn with_tpm(config: &str, tcti: &str) -> String {
    format!("{config}\n[tpm]\ntcti = \"{tcti}\"\n")
}

/// Waits for the hub to see `device` connect.
async fn connected(
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<HubEvent>>,
    device: &str,
) {
    let wait = async {
        loop {
            let event = events.recv().await.unwrap();
            if event.device_id == device
                && event.source == "deviceConnectionStateEvents"
                && event.properties.get("opType").map(String::as_str) == Some("deviceConnected")
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("{device} did not connect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_moves_its_key_file_into_the_tpm_and_connects_with_it() {
    let Some((hub, dir, swtpm)) = rig().await else {
        return;
    };
    let text = with_tpm(
        &hub.agent_config("tpm-1", dir.path(), "").await,
        "device:/dev/nothing-here",
    );
    // The environment override wins over the file, as for every key.
    let config = parse_config_with(&text, &[("CP_AGENT_TPM__TCTI", &swtpm.tcti())]);
    let mut events = hub.hub.events();
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    connected(&mut events, "tpm-1").await;
    assert!(
        !dir.path().join("device.key").exists(),
        "the plaintext key file is removed once the TPM holds the key"
    );
    hub.wait_reported("tpm-1", "connected", |r| r["health"] == "connected")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_tpm_restarted_connect_again_with_the_persisted_key() {
    let Some((hub, dir, mut swtpm)) = rig().await else {
        return;
    };
    let text = with_tpm(
        &hub.agent_config("tpm-2", dir.path(), "").await,
        &swtpm.tcti(),
    );
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("agent.log");
    let mut events = hub.hub.events();

    let mut agent = common::process::spawn_agent(&config, &log);
    connected(&mut events, "tpm-2").await;
    common::process::kill9(&mut agent);
    assert!(!dir.path().join("device.key").exists());

    swtpm.restart();
    let mut agent = common::process::spawn_agent(&config, &log);
    connected(&mut events, "tpm-2").await;
    common::process::kill9(&mut agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dps_group_registration_imports_the_derived_key_and_writes_no_key_file() {
    let Some((hub, dir, swtpm)) = rig().await else {
        return;
    };
    let text = with_tpm(&hub.dps_agent_config(dir.path(), "").await, &swtpm.tcti());
    let agent = cloudpillar_agent::daemon::start(common::parse_config(&text))
        .await
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let answer = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/InitiateProvisioning",
            agent.api_addr
        ))
        .header("CP-DEVICE-ID", "pc-0042")
        .header("CP-SECRET-KEY", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    hub.wait_reported("pc-0042", "provisioned and connected", |r| {
        r["health"] == "connected"
    })
    .await;

    let state = dir.path().join("state");
    assert!(
        !state.join("device.key").exists(),
        "no plaintext device key"
    );
    let identity = std::fs::read_to_string(state.join("identity.json")).unwrap();
    assert!(identity.contains("\"Tpm\""), "{identity}");
    let group_key = std::fs::read_to_string(dir.path().join("group.key")).unwrap();
    let derived = cloudpillar_agent::link::sas::derive_device_key(&group_key, "pc-0042").unwrap();
    let tpm = DeviceKey::Tpm(TpmKey {
        tcti: swtpm.tcti(),
        handle: HANDLE,
    });
    assert_eq!(
        tpm.token(RESOURCE, 1_900_000_000, None).await.unwrap(),
        DeviceKey::Plain(derived)
            .token(RESOURCE, 1_900_000_000, None)
            .await
            .unwrap(),
        "the TPM holds the device key derived from the group key"
    );
}

#[tokio::test]
async fn agent_refuses_to_start_when_the_tpm_holds_no_key_and_no_file_is_left() {
    let Some((hub, dir, swtpm)) = rig().await else {
        return;
    };
    let text = with_tpm(
        &hub.agent_config("tpm-3", dir.path(), "").await,
        &swtpm.tcti(),
    );
    std::fs::remove_file(dir.path().join("device.key")).unwrap();
    let error = cloudpillar_agent::daemon::start(common::parse_config(&text))
        .await
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("holds no device key"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_file_of_an_earlier_provisioning_moves_into_the_tpm() {
    use cloudpillar_agent::link::identity::{Credential, Identity};
    let Some((hub, dir, swtpm)) = rig().await else {
        return;
    };
    let text = with_tpm(&hub.dps_agent_config(dir.path(), "").await, &swtpm.tcti());
    // What an agent without a TPM left behind after DPS assigned it.
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    common::write_0600(&state.join("device.key"), &hub.add_device("pc-0042").await);
    let earlier = Identity {
        device_id: "pc-0042".into(),
        host: hub.hub.hostname().to_owned(),
        address: "127.0.0.1".into(),
        port: hub.hub.mqtt_addr().port(),
        ca_file: Some(hub.hub.ca_cert_path().unwrap().to_owned()),
        credential: Credential::SasKeyFile(state.join("device.key")),
    };
    earlier.save_provisioned(&state).unwrap();

    let _agent = cloudpillar_agent::daemon::start(common::parse_config(&text))
        .await
        .unwrap();
    hub.wait_reported("pc-0042", "connected", |r| r["health"] == "connected")
        .await;
    assert!(!state.join("device.key").exists(), "key file removed");
    let now = Identity::load_provisioned(&state).unwrap().unwrap();
    assert_eq!(now.credential, Credential::Tpm);
}
