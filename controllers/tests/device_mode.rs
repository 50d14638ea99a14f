//! `Device.spec.mode` reaches the agent: the operator keeps `desired.provisioning` in the twin
//! (real API server, embedded edge hub) and sends one UpgradeProvisioning message per change
//! through the hub, which the real agent applies; status and Events tell each step.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cloudpillar_crds::Device;
use cloudpillar_protocol::signing::SigningKey;
use cloudpillar_tests::controllers::{
    EdgeHub, Operator, apply, device_key, eventually, test_config,
};
use cloudpillar_tests::{install_crds, kube_client, test_namespace};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
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

/// `status.provisioningUpgrade` of `mode-1`: mode and state.
async fn upgrade_record(api: &Api<Device>) -> anyhow::Result<Option<(String, String)>> {
    let device = api.get("mode-1").await?;
    Ok(device
        .status
        .and_then(|s| s.provisioning_upgrade)
        .map(|u| (u.mode, u.state)))
}

/// Reasons of the Events about `mode-1`, oldest first.
async fn event_reasons(client: &kube::Client, ns: &str) -> anyhow::Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut listed = events.list(&ListParams::default()).await?.items;
    listed.sort_by_key(|e| e.metadata.creation_timestamp.clone().map(|t| t.0));
    Ok(listed
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("mode-1"))
        .filter_map(|e| e.reason)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_mode_reaches_the_twin_and_the_agent_switches_to_it() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("CP_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ))
        .with_ansi(false)
        .try_init();
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

    // Before the agent runs nothing is sent: it could not match a message with the section.
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        upgrade_record(&devices).await?,
        None,
        "sent before the agent ran"
    );

    // The real agent, with the operator's key, takes that section.
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

    // The operator queues the UpgradeProvisioning message once the agent took the section,
    // and records it; the agent applies it.
    eventually("upgrade applied", WAIT, || async {
        let applied = reported("/properties/reported/provisioning");
        Ok((applied["status"] == "applied" && applied["mode"] == "STRICT").then_some(()))
    })
    .await?;
    assert!(
        cloudpillar_agent::mode::strict(&config),
        "the agent did not switch to STRICT"
    );
    let applied = Some(("STRICT".to_owned(), "Applied".to_owned()));
    eventually("the upgrade recorded as applied", WAIT, || async {
        Ok((upgrade_record(&devices).await? == applied).then_some(()))
    })
    .await?;

    // A restarted operator sends nothing again for the same mode.
    operator.stop().await?;
    let operator = Operator::start(&client, test_config(&ns));

    // A new mode replaces the section; the operator sends the next upgrade and the agent
    // follows it.
    apply::<Device>(&client, &ns, device("COMM")).await?;
    eventually("COMM upgrade applied", WAIT, || async {
        let applied = reported("/properties/reported/provisioning");
        Ok((applied["status"] == "applied" && applied["mode"] == "COMM").then_some(()))
    })
    .await?;
    assert!(cloudpillar_agent::mode::communication_only(&config));
    let applied = Some(("COMM".to_owned(), "Applied".to_owned()));
    eventually("the COMM upgrade recorded as applied", WAIT, || async {
        Ok((upgrade_record(&devices).await? == applied).then_some(()))
    })
    .await?;

    // One message per change, each with its Events (an Event is posted just after the status
    // write the test waited for, so wait for the second Applied one to show).
    let reasons = eventually("both upgrades' Events", WAIT, || async {
        let reasons = event_reasons(&client, &ns).await?;
        let applied = reasons
            .iter()
            .filter(|r| *r == "ProvisioningUpgradeApplied")
            .count();
        Ok((applied >= 2).then_some(reasons))
    })
    .await?;
    let count = |reason: &str| reasons.iter().filter(|r| *r == reason).count();
    assert_eq!(count("ProvisioningUpgradeSent"), 2, "{reasons:?}");
    assert_eq!(count("ProvisioningUpgradeApplied"), 2, "{reasons:?}");
    assert_eq!(count("ProvisioningUpgradeFailed"), 0, "{reasons:?}");

    drop(agent);
    cloudpillar_tests::delete_namespace_and_wait(&client, &ns, Duration::from_secs(20)).await?;
    operator.stop().await
}
