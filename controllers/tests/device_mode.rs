//! `Device.spec.mode` reaches the agent: the operator keeps `desired.provisioning` in the twin
//! (real API server, embedded edge hub), and the real agent accepts an UpgradeProvisioning
//! message that carries that mode and switches to it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cloudpillar_crds::Device;
use cloudpillar_protocol::messages::{
    AuthMethod, C2dMessage, ProvisioningMode, UpgradeProvisioning,
};
use cloudpillar_protocol::signing::SigningKey;
use cloudpillar_tests::controllers::{
    EdgeHub, Operator, apply, device_key, eventually, test_config,
};
use cloudpillar_tests::{install_crds, kube_client, test_namespace};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn device(mode: &str) -> Value {
    json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
        "metadata": { "name": "mode-1" },
        "spec": { "hubRef": { "name": "edge" }, "mode": mode },
    })
}

fn provisioning(hub: &EdgeHub) -> Option<Value> {
    hub.twin("mode-1")
        .and_then(|t| t.pointer("/properties/desired/provisioning").cloned())
}

/// An agent configuration for `mode-1` with the key the operator generated.
fn agent_config(hub: &EdgeHub, dir: &std::path::Path, key: &str) -> anyhow::Result<String> {
    let secret_file = |name: &str, text: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(path)
    };
    let key_file = secret_file("device.key", key)?;
    let api_secret = secret_file("api.secret", "s3cret")?;
    let signer = secret_file(
        "signer.pem",
        &SigningKey::generate()?.verifying_key().to_pem()?,
    )?;
    let ca = hub.handle.ca_cert_path().expect("development CA");
    Ok(format!(
        r#"device_id = "mode-1"
state_dir = "{state}"
trusted_keys = ["{signer}"]

[hub]
host = "{host}"
address = "127.0.0.1"
port = {port}
ca_file = "{ca}"

[auth]
kind = "sas"
key_file = "{key}"

[api]
bind = "127.0.0.1:0"
secret_key_file = "{api}"
"#,
        state = dir.join("state").display(),
        signer = signer.display(),
        host = hub.handle.hostname(),
        port = hub.handle.mqtt_addr().port(),
        ca = ca.display(),
        key = key_file.display(),
        api = api_secret.display(),
    ))
}

/// Queues a C2D message through the hub's service API, as the backend does.
async fn send_c2d(hub: &EdgeHub, device_id: &str, message: &C2dMessage) -> anyhow::Result<()> {
    let pem = std::fs::read(hub.handle.ca_cert_path().expect("development CA"))?;
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem)?)
        .build()?;
    let url = format!(
        "https://localhost:{}/devices/{device_id}/messages/deviceBound?api-version=2021-04-12",
        hub.handle.http_addr().port()
    );
    let response = http
        .post(url)
        .header(
            "Authorization",
            hub.handle.service_token(Duration::from_secs(600)),
        )
        .header("content-type", "application/json")
        .header("iothub-app-messageType", message.message_type())
        .body(message.encode()?)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "C2D refused: {}",
        response.status()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_mode_reaches_the_twin_and_the_agent_switches_to_it() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-mode").await?;
    let hub = EdgeHub::start(&client, &ns, "edge", 1000).await?;
    let operator = Operator::start(&client, test_config(&ns));

    // The operator writes the mode with the method and host name the device uses.
    apply::<Device>(&client, &ns, device("STRICT")).await?;
    let wanted = json!({"authMethod": "SAS", "hub": "localhost", "mode": "STRICT"});
    eventually("STRICT in desired.provisioning", WAIT, || async {
        Ok((provisioning(&hub).as_ref() == Some(&wanted)).then_some(()))
    })
    .await?;

    // The real agent, with the operator's key, sees that section and accepts an upgrade
    // message that agrees with it.
    let key = device_key(&client, &ns, "mode-1").await?;
    let dir = tempfile::tempdir()?;
    let text = agent_config(&hub, dir.path(), &key)?;
    let config = cloudpillar_agent::config::Config::parse_with_env(
        &text,
        std::path::Path::new("agent.toml"),
        &[],
    )?;
    let agent = cloudpillar_agent::daemon::start(config.clone()).await?;
    let reported = |pointer: &'static str| {
        hub.twin("mode-1")
            .and_then(|t| t.pointer(pointer).cloned())
            .unwrap_or(Value::Null)
    };
    eventually("agent connected and desired applied", WAIT, || async {
        let desired = reported("/properties/desired/$version");
        let applied = reported("/properties/reported/desiredVersionApplied");
        Ok((desired != Value::Null && applied == desired).then_some(()))
    })
    .await?;
    assert!(
        !cloudpillar_agent::mode::strict(&config),
        "strict before any upgrade"
    );

    let upgrade = C2dMessage::UpgradeProvisioning(UpgradeProvisioning {
        auth_method: AuthMethod::Sas,
        hub: "localhost".into(),
        mode: ProvisioningMode::Strict,
        key: key.clone(),
    });
    send_c2d(&hub, "mode-1", &upgrade).await?;
    eventually("upgrade applied", WAIT, || async {
        let applied = reported("/properties/reported/provisioning");
        Ok((applied["status"] == "applied" && applied["mode"] == "STRICT").then_some(()))
    })
    .await?;
    assert!(
        cloudpillar_agent::mode::strict(&config),
        "the agent did not switch to STRICT"
    );

    // A new mode replaces the section; the agent follows the next upgrade.
    apply::<Device>(&client, &ns, device("COMM")).await?;
    eventually("COMM in desired.provisioning", WAIT, || async {
        let mode = provisioning(&hub).map(|p| p["mode"].clone());
        Ok((mode == Some(json!("COMM"))).then_some(()))
    })
    .await?;
    let upgrade = C2dMessage::UpgradeProvisioning(UpgradeProvisioning {
        auth_method: AuthMethod::Sas,
        hub: "localhost".into(),
        mode: ProvisioningMode::Comm,
        key,
    });
    eventually("COMM upgrade applied", WAIT, || async {
        // The agent may still be reconnecting after the first upgrade; resend until applied.
        send_c2d(&hub, "mode-1", &upgrade).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let applied = reported("/properties/reported/provisioning");
        Ok((applied["status"] == "applied" && applied["mode"] == "COMM").then_some(()))
    })
    .await?;
    assert!(cloudpillar_agent::mode::communication_only(&config));

    drop(agent);
    cloudpillar_tests::delete_namespace_and_wait(&client, &ns, Duration::from_secs(20)).await?;
    operator.stop().await
}
