//! The agent against the real edge hub: twin sync, recipes from desired, reported progress.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::{TestHub, parse_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_connects_reports_ready_and_applies_desired_by_version() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("dev-1", dir.path(), "").await);
    let agent = cloudpillar_agent::daemon::start(config).await.unwrap();

    hub.wait_reported("dev-1", "READY and connected", |r| {
        r["deviceState"] == "READY" && r["health"] == "connected"
    })
    .await;
    hub.patch_desired("dev-1", json!({"logLevel": "info"}))
        .await;
    let twin = hub.twin("dev-1").await;
    let version = twin["properties"]["desired"]["$version"].as_u64().unwrap();
    hub.wait_reported("dev-1", "desiredVersionApplied", |r| {
        r["desiredVersionApplied"].as_u64() == Some(version)
    })
    .await;
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f04_desired_changes_made_while_offline_are_applied_once_after_reconnect() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("dev-4", dir.path(), "").await);
    let agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("dev-4", "connected", |r| r["health"] == "connected")
        .await;

    // Link down (BUSY disconnects), two desired versions written meanwhile, link up.
    agent
        .device
        .apply(cloudpillar_agent::state::Command::SetBusy)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    hub.patch_desired("dev-4", json!({"logLevel": "info"}))
        .await;
    hub.patch_desired("dev-4", json!({"rollout": {"id": "ro-8"}}))
        .await;
    let latest = hub.twin("dev-4").await["properties"]["desired"]["$version"]
        .as_u64()
        .unwrap();
    agent
        .device
        .apply(cloudpillar_agent::state::Command::SetReady)
        .unwrap();

    let reported = hub
        .wait_reported("dev-4", "catch-up", |r| {
            r["desiredVersionApplied"].as_u64() == Some(latest)
        })
        .await;
    assert_eq!(reported["deviceState"], "READY");
    let link = agent.link.as_ref().unwrap();
    use cloudpillar_agent::api::LinkControl;
    let desired = link.desired();
    assert_eq!(desired["logLevel"], "info");
    assert_eq!(desired["rollout"]["id"], "ro-8");
}

fn counting_spec(id: &str, counter: &std::path::Path) -> Value {
    let step =
        |n: u32| json!({"shell": "bash", "command": format!("echo {n} >> {}", counter.display())});
    json!({"id": id, "patch": {"preInstallConfig": [step(1)], "installSteps": [step(2)]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_desired_recipe_runs_and_reports_success_once_across_reconnects() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("dev-2", dir.path(), "").await);
    let agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("dev-2", "connected", |r| r["health"] == "connected")
        .await;

    let counter = dir.path().join("count");
    let spec = counting_spec("ro-7", &counter);
    hub.patch_desired(
        "dev-2",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    let reported = hub
        .wait_reported("dev-2", "recipe success", |r| {
            r["changeSpec"]["Status"] == "Success"
        })
        .await;
    assert_eq!(
        reported["changeSpec"]["patch"]["installSteps"][0]["status"],
        "Success"
    );
    assert_eq!(
        reported["changeSpec"]["actionPath"],
        "changeSpec.patch.installSteps[0]"
    );

    // F07 (b): a reconnect re-delivers the full twin; nothing runs again.
    agent
        .device
        .apply(cloudpillar_agent::state::Command::SetBusy)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent
        .device
        .apply(cloudpillar_agent::state::Command::SetReady)
        .unwrap();
    hub.wait_reported("dev-2", "reconnected", |r| r["health"] == "connected")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "1\n2\n");
    assert_eq!(
        hub.twin("dev-2").await["properties"]["reported"]["changeSpec"]["Status"],
        "Success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_fixture_from_desired_is_refused_with_the_reason_in_reported() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("dev-3", dir.path(), "").await);
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("dev-3", "connected", |r| r["health"] == "connected")
        .await;

    let fixture: Value =
        serde_json::from_slice(&common::fixture("security-update-desired.json")).unwrap();
    hub.patch_desired("dev-3", fixture["desired"].clone()).await;
    let reported = hub
        .wait_reported("dev-3", "refusal", |r| {
            r["changeSpec"]["Status"] == "Refused"
        })
        .await;
    let code = reported["changeSpec"]["ResultCode"].as_str().unwrap();
    assert!(
        code == "bad_signature_encoding" || code == "bad_signature",
        "{code}"
    );
    assert!(
        reported["changeSpec"]["ResultText"]
            .as_str()
            .unwrap()
            .starts_with("changeSign refused")
    );
    assert_eq!(reported["deviceState"], "READY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_step_field_refuses_the_recipe_naming_the_field_and_its_path() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = parse_config(&hub.agent_config("spell-1", dir.path(), "").await);
    let _agent = cloudpillar_agent::daemon::start(config).await.unwrap();
    hub.wait_reported("spell-1", "connected", |r| r["health"] == "connected")
        .await;
    let counter = dir.path().join("count");
    let spec = json!({"id": "spell", "patch": {"installSteps": [
        {"shell": "bash", "command": format!("echo ran >> {}", counter.display())},
        {"shell": "bash", "command": "true", "timout": 30}]}});
    hub.patch_desired(
        "spell-1",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    let reported = hub
        .wait_reported("spell-1", "recipe refused", |r| {
            r["changeSpec"]["id"] == "spell" && r["changeSpec"]["Status"] != "InProgress"
        })
        .await;
    let report = &reported["changeSpec"];
    assert_eq!(report["Status"], "Refused", "{report}");
    assert_eq!(report["ResultCode"], "bad_recipe");
    assert_eq!(
        report["ResultText"],
        "changeSpec.patch.installSteps[1].timout: unknown field \"timout\""
    );
    assert!(!counter.exists(), "no step ran");
}
