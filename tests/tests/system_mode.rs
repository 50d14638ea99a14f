//! A changed Device mode on the whole system: `cloudpillar run` and a real agent process that
//! provisioned through DPS (its key derived from the enrollment group). The operator sends one
//! UpgradeProvisioning message through the edge hub; the agent applies it, also after an
//! operator restart that must not send it again.

use std::time::Duration;

use cloudpillar_tests::system::{System, SystemOptions, objects};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};

const WAIT: Duration = Duration::from_secs(60);

/// `(mode, state)` of the Device's `status.provisioningUpgrade`.
async fn upgrade(system: &System, device: &str) -> anyhow::Result<Option<(String, String)>> {
    let status = system.device(device).await?.status.unwrap_or_default();
    Ok(status.provisioning_upgrade.map(|u| (u.mode, u.state)))
}

#[tokio::test]
async fn a_changed_mode_reaches_a_dps_provisioned_agent_once() {
    let mut system = System::start("sys-mode", SystemOptions::default())
        .await
        .expect("system");
    system.add_devices(&["mode-01"], &[]).await.expect("device");
    let agent = system.agent("mode-01").expect("agent");
    system
        .wait_for("mode-01 connected", WAIT, || async {
            let (_, state) = agent.call("GET", "GetDeviceState", None).await?;
            Ok((state["reported"]["health"] == "connected").then_some(()))
        })
        .await
        .expect("the agent connects");
    assert_eq!(upgrade(&system, "mode-01").await.expect("device"), None);

    // STRICT: the agent reports the upgrade applied and the Device says so.
    let mut strict = objects::device("mode-01", &[]);
    strict["spec"]["mode"] = "STRICT".into();
    system.apply(strict).await.expect("mode change");
    let applied = Some(("STRICT".to_owned(), "Applied".to_owned()));
    system
        .wait_for("STRICT applied", WAIT, || async {
            let (_, state) = agent.call("GET", "GetDeviceState", None).await?;
            let reported = &state["reported"]["provisioning"];
            let done = reported["status"] == "applied" && reported["mode"] == "STRICT";
            let recorded = upgrade(&system, "mode-01").await? == applied;
            Ok((done && recorded).then_some(()))
        })
        .await
        .expect("the agent runs STRICT");

    // A restarted operator sends nothing again: one message, one Event.
    system.kill_server().expect("kill");
    system.start_server().await.expect("restart");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(upgrade(&system, "mode-01").await.expect("device"), applied);
    let events: Api<Event> = Api::namespaced(system.client.clone(), &system.namespace);
    let sent = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ProvisioningUpgradeSent"))
        .count();
    assert_eq!(sent, 1, "{}", system.server_log());
    system.shutdown().await.expect("shutdown");
}
