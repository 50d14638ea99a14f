//! Provisioning through the edge hub's DPS endpoint, started from the local API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use reqwest::Method;
use serde_json::{Value, json};

use common::{TestHub, parse_config};

/// A hub with a group enrollment and an agent configured for DPS only.
async fn dps_rig() -> (TestHub, tempfile::TempDir, cloudpillar_agent::daemon::Agent) {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = hub.dps_agent_config(dir.path(), "").await;
    let agent = cloudpillar_agent::daemon::start(parse_config(&text))
        .await
        .unwrap();
    (hub, dir, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiate_provisioning_registers_with_a_group_key_and_connects_to_the_assigned_hub() {
    let (hub, dir, agent) = dps_rig().await;
    let api = format!("http://{}/api/v1", agent.api_addr);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let call = |method: Method, route: &str| {
        client
            .request(method, format!("{api}/{route}"))
            .header("CP-DEVICE-ID", "pc-0042")
            .header("CP-SECRET-KEY", "s3cret")
    };

    let answer = call(Method::POST, "InitiateProvisioning")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let reported = hub
        .wait_reported("pc-0042", "provisioned and connected", |r| {
            r["deviceState"] == "READY" && r["health"] == "connected"
        })
        .await;
    assert_eq!(reported["deviceState"], "READY");
    let state: Value = call(Method::GET, "GetDeviceState")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["deviceState"], "READY");
    // The identity is now known: another device id is refused.
    let wrong = client
        .get(format!("{api}/GetDeviceState"))
        .header("CP-DEVICE-ID", "pc-9999")
        .header("CP-SECRET-KEY", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let key_mode = std::fs::metadata(dir.path().join("state/device.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600, "derived device key kept 0600");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_device_state_provisions_lazily_on_first_read() {
    let (hub, _dir, agent) = dps_rig().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state: Value = reqwest::Client::new()
        .get(format!("http://{}/api/v1/GetDeviceState", agent.api_addr))
        .header("CP-DEVICE-ID", "pc-0042")
        .header("CP-SECRET-KEY", "s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["deviceState"], "PROVISIONING");
    hub.wait_reported("pc-0042", "provisioned", |r| {
        r["deviceState"] == "READY" && r["health"] == "connected"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_device_connects_with_its_certificate_and_0600_key() {
    use sha2::Digest;
    let hub = TestHub::start().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x509-1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let thumb: String = sha2::Sha256::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let record = json!({"deviceId": "x509-1", "authentication": {"type": "selfSigned",
        "x509Thumbprint": {"primaryThumbprint": thumb}}});
    let (status, body) = hub.call(Method::PUT, "/devices/x509-1", Some(record)).await;
    assert_eq!(status, 200, "{body}");

    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("device.pem");
    let key_file = dir.path().join("device.key.pem");
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        r#"device_id = "x509-1"
state_dir = "{state}"
trusted_keys = ["{signer}"]
[hub]
host = "{host}"
address = "127.0.0.1"
port = {port}
ca_file = "{ca}"
[auth]
kind = "x509"
cert_file = "{cert}"
key_file = "{key}"
[api]
bind = "127.0.0.1:0"
"#,
        state = dir.path().join("state").display(),
        signer = hub.signer_pem(dir.path()).display(),
        host = hub.hub.hostname(),
        port = hub.hub.mqtt_addr().port(),
        ca = hub.hub.ca_cert_path().unwrap().display(),
        cert = cert_file.display(),
        key = key_file.display(),
    );
    let _agent = cloudpillar_agent::daemon::start(parse_config(&text))
        .await
        .unwrap();
    hub.wait_reported("x509-1", "connected with X.509", |r| {
        r["health"] == "connected" && r["deviceState"] == "READY"
    })
    .await;
}
