//! The Device controller against the real API server and an embedded edge hub.

use std::sync::Arc;
use std::time::Duration;

use cloudpillar_controllers::device::FINALIZER;
use cloudpillar_controllers::runtime::finalizer;
use cloudpillar_crds::{ConnectionState, Device};
use cloudpillar_tests::controllers::{
    EdgeHub, Operator, apply, device_key, events_for, eventually, test_config,
};
use cloudpillar_tests::recording::RecordingConnector;
use cloudpillar_tests::{fixture_json, install_crds, kube_client, test_namespace};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn device(name: &str, desired: Value) -> Value {
    json!({
        "apiVersion": "cloudpillar.io/v1alpha1",
        "kind": "Device",
        "metadata": { "name": name, "labels": { "site": "lab" } },
        "spec": { "hubRef": { "name": "edge" }, "tags": { "site": "lab" }, "desired": desired },
    })
}

async fn status_of(api: &Api<Device>, name: &str) -> anyhow::Result<Option<Device>> {
    Ok(api.get_opt(name).await?)
}

fn condition_true(device: &Device, type_: &str) -> bool {
    let conditions = device
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    cloudpillar_crds::conditions::is_true(&conditions, type_)
        && cloudpillar_crds::conditions::find(&conditions, type_)
            .is_some_and(|c| c.observed_generation == device.metadata.generation)
}

#[tokio::test]
async fn device_is_registered_synced_mirrored_and_cleaned_up() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-device").await?;
    let hub = EdgeHub::start(&client, &ns, "edge", 1000).await?;
    let recorder = RecordingConnector::default();
    let mut config = test_config(&ns);
    config.connector = Arc::new(recorder.clone());
    let operator = Operator::start(&client, config);
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);

    // Registration: identity with the keys of the operator's Secret; tags and desired written.
    apply::<Device>(
        &client,
        &ns,
        device("dev-1", json!({"logLevel": "debug", "uploadEveryMin": 15})),
    )
    .await?;
    let registered = eventually("dev-1 registered and synced", WAIT, || async {
        let device = status_of(&devices, "dev-1").await?;
        Ok(device.filter(|d| condition_true(d, "Registered") && condition_true(d, "Synced")))
    })
    .await?;
    assert!(registered.finalizers().iter().any(|f| f == FINALIZER));
    let key = device_key(&client, &ns, "dev-1").await?;
    let identity = serde_json::to_value(hub.handle.core().get_device("dev-1")?)?;
    assert_eq!(
        identity["authentication"]["symmetricKey"]["primaryKey"],
        key.as_str()
    );
    let status_text = serde_json::to_string(&registered.status)?;
    assert!(
        !status_text.contains(&key),
        "a device key leaked into status"
    );
    let twin = hub.twin("dev-1").expect("twin exists");
    assert_eq!(twin["tags"]["site"], "lab");
    assert_eq!(twin["properties"]["desired"]["logLevel"], "debug");
    assert_eq!(twin["properties"]["desired"]["uploadEveryMin"], 15);

    // F03: removing a field sends exactly {"logLevel": null}.
    recorder.clear();
    apply::<Device>(&client, &ns, device("dev-1", json!({"uploadEveryMin": 15}))).await?;
    eventually("logLevel removed from the twin", WAIT, || async {
        let desired = hub
            .twin("dev-1")
            .map(|t| t["properties"]["desired"].clone())
            .unwrap_or_default();
        Ok((desired.get("logLevel").is_none() && desired["uploadEveryMin"] == 15).then_some(()))
    })
    .await?;
    let sent = recorder.patches_for("dev-1");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].desired, Some(json!({"logLevel": null})));
    assert_eq!(sent[0].tags, None);
    eventually("logLevel gone from status.appliedDesired", WAIT, || async {
        let device = status_of(&devices, "dev-1").await?;
        let applied = device.and_then(|d| d.status).map(|s| s.applied_desired);
        Ok(applied.filter(|a| !a.contains_key("logLevel") && a.contains_key("uploadEveryMin")))
    })
    .await?;

    // Reported state comes back into status as the device reports it over MQTT; an
    // unchanged spec writes nothing meanwhile (F03).
    recorder.clear();
    let mut link = hub.connect("dev-1", &key).await?;
    let sample = fixture_json("reported-sample.json", "/reported/changeSpec")?;
    link.report(json!({"deviceState": "PATCH_APPLYING", "changeSpec": sample}))
        .await?;
    let mirrored = eventually("reported mirrored into status", WAIT, || async {
        let device = status_of(&devices, "dev-1").await?;
        Ok(device.filter(|d| {
            let s = d.status.clone().unwrap_or_default();
            s.device_state.as_deref() == Some("PATCH_APPLYING")
                && s.connection
                    .as_ref()
                    .is_some_and(|c| c.state == ConnectionState::Connected)
        }))
    })
    .await?;
    let status = mirrored.status.unwrap_or_default();
    let recipe = status.recipe.clone().expect("recipe status");
    assert_eq!(
        recipe.id.as_deref(),
        Some("1.14.61047.38115.20230418180125")
    );
    assert_eq!(
        recipe.action_path.as_deref(),
        Some("changeSpec.patch.postInstallConfig[1]")
    );
    assert_eq!(
        recipe.last_faulted_path.as_deref(),
        Some("changeSpec.patch.transitPackage[1]")
    );
    assert_eq!(recipe.status.as_deref(), Some("InProgress"));
    assert_eq!(recipe.progress, Some(100));
    assert!(status.reported_twin_version.is_some() && status.last_activity_time.is_some());
    assert!(
        recorder.patches_for("dev-1").is_empty(),
        "an unchanged spec wrote to the twin"
    );

    // A fault the device clears from reported is cleared from status too.
    link.report(json!({"changeSpec": {"lastFaultedPath": null, "lastFaultedRecipe": null}}))
        .await?;
    eventually("lastFaultedPath cleared in status", WAIT, || async {
        let device = status_of(&devices, "dev-1").await?;
        let recipe = device.and_then(|d| d.status).and_then(|s| s.recipe);
        Ok(recipe.filter(|r| r.last_faulted_path.is_none() && r.id.is_some()))
    })
    .await?;

    // Disconnecting shows in status and as an Event.
    link.disconnect().await;
    eventually("connection Disconnected", WAIT, || async {
        let device = status_of(&devices, "dev-1").await?;
        Ok(device.filter(|d| {
            d.status
                .as_ref()
                .and_then(|s| s.connection.as_ref())
                .map(|c| c.state)
                == Some(ConnectionState::Disconnected)
        }))
    })
    .await?;
    // A Device registered alone gets its own Registered Event.
    eventually("Registered and Disconnected Events", WAIT, || async {
        let events = events_for(&client, &ns, "dev-1").await?;
        let reasons: Vec<&str> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
        Ok((reasons.contains(&"Registered") && reasons.contains(&"Disconnected")).then_some(()))
    })
    .await?;

    // Deletion removes the hub identity and the key Secret before the object goes.
    devices.delete("dev-1", &DeleteParams::default()).await?;
    eventually("dev-1 gone", WAIT, || async {
        Ok(status_of(&devices, "dev-1").await?.is_none().then_some(()))
    })
    .await?;
    assert!(hub.twin("dev-1").is_none(), "hub identity left behind");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let key_secret = cloudpillar_controllers::device::key_secret_name("dev-1");
    assert!(
        secrets.get_opt(&key_secret).await?.is_none(),
        "key Secret left behind"
    );

    cloudpillar_tests::delete_namespace_and_wait(&client, &ns, Duration::from_secs(20)).await?;
    operator.stop().await?;
    Ok(())
}

/// How many registrations a `Registered` Event announces: one on a Device, the leading count
/// on a Hub.
fn registrations_in(event: &Event) -> anyhow::Result<usize> {
    let kind = event.regarding.as_ref().and_then(|r| r.kind.as_deref());
    let note = event.note.as_deref().unwrap_or_default();
    match kind {
        Some("Device") => Ok(1),
        Some("Hub") => Ok(note.split_whitespace().next().unwrap_or_default().parse()?),
        other => anyhow::bail!("a Registered Event about {other:?}: {note}"),
    }
}

#[tokio::test]
async fn a_burst_of_registrations_is_announced_on_the_hub_not_per_device() -> anyhow::Result<()> {
    const BURST: usize = 12;
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-burst").await?;
    let _hub = EdgeHub::start(&client, &ns, "edge", 1000).await?;
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);

    // The fleet exists before the operator starts, as at a cold start.
    for i in 0..BURST {
        apply::<Device>(&client, &ns, device(&format!("burst-{i:02}"), json!({}))).await?;
    }
    let operator = Operator::start(&client, test_config(&ns));
    eventually("every Device registered", WAIT, || async {
        let list = devices.list(&ListParams::default()).await?;
        let registered = list
            .items
            .iter()
            .filter(|d| condition_true(d, "Registered"))
            .count();
        Ok((registered == BURST).then_some(()))
    })
    .await?;

    // Every registration is announced once, most of them together on the Hub.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let announced = eventually("every registration announced", WAIT, || async {
        let list = events.list(&ListParams::default()).await?;
        let registered: Vec<Event> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Registered"))
            .collect();
        let mut count = 0;
        for event in &registered {
            count += registrations_in(event)?;
        }
        Ok((count >= BURST).then_some(registered))
    })
    .await?;
    let total: usize = announced
        .iter()
        .map(registrations_in)
        .sum::<anyhow::Result<usize>>()?;
    assert_eq!(total, BURST, "each registration announced once");
    assert!(
        announced.len() < BURST / 2,
        "{} Registered Events for {BURST} registrations",
        announced.len()
    );
    let series = announced.iter().filter(|e| e.series.is_some()).count();
    assert_eq!(
        series, 0,
        "each burst has an Event of its own: {announced:?}"
    );
    let on_hub = announced
        .iter()
        .find(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Hub"))
        .and_then(|e| e.note.clone())
        .unwrap_or_default();
    assert!(
        on_hub.contains("identities created in hub edge: burst-"),
        "{on_hub}"
    );

    cloudpillar_tests::delete_namespace_and_wait(&client, &ns, Duration::from_secs(20)).await?;
    operator.stop().await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_device_whose_hub_identity_is_already_gone_completes() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-f21").await?;
    let hub = EdgeHub::start(&client, &ns, "edge", 1000).await?;
    let operator = Operator::start(&client, test_config(&ns));
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);

    apply::<Device>(&client, &ns, device("dev-2", json!({}))).await?;
    eventually("dev-2 registered", WAIT, || async {
        Ok(status_of(&devices, "dev-2")
            .await?
            .filter(|d| condition_true(d, "Registered")))
    })
    .await?;

    // F21: while the operator is down, someone removes the identity in the hub by hand and
    // the Device is deleted; the operator's first reconcile meets a 404 and finishes.
    operator.stop().await?;
    hub.handle.core().delete_device("dev-2", None).await?;
    devices.delete("dev-2", &DeleteParams::default()).await?;
    assert!(
        status_of(&devices, "dev-2").await?.is_some(),
        "the finalizer holds the Device"
    );
    let operator = Operator::start(&client, test_config(&ns));
    eventually("dev-2 gone", WAIT, || async {
        Ok(status_of(&devices, "dev-2").await?.is_none().then_some(()))
    })
    .await?;
    let events = events_for(&client, &ns, "dev-2").await?;
    let note = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("Deregistered"))
        .and_then(|e| e.note.clone())
        .unwrap_or_default();
    assert!(note.contains("already gone"), "{note}");

    cloudpillar_tests::delete_namespace_and_wait(&client, &ns, Duration::from_secs(20)).await?;
    operator.stop().await?;
    Ok(())
}

#[tokio::test]
async fn finalizer_removal_succeeds_when_the_object_vanished_or_changed_meanwhile()
-> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-fin").await?;
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let mut object: Device = serde_json::from_value(device("dev-3", json!({})))?;
    object.metadata.finalizers = Some(vec![FINALIZER.into(), "example.com/other".into()]);
    let created = devices.create(&PostParams::default(), &object).await?;

    // Someone else changes the finalizer list: the stale copy conflicts, is re-read, and
    // the removal still takes only our finalizer.
    let bump = json!({"metadata": {"labels": {"touched": "yes"}}});
    devices
        .patch("dev-3", &PatchParams::default(), &Patch::Merge(&bump))
        .await?;
    finalizer::remove(&devices, &created, FINALIZER).await?;
    let now = devices.get("dev-3").await?;
    assert_eq!(now.finalizers(), ["example.com/other".to_owned()]);

    // The object disappears between reading it and removing the finalizer: that is success.
    let stale = now.clone();
    devices.delete("dev-3", &DeleteParams::default()).await?;
    let clear = json!({"metadata": {"finalizers": null}});
    devices
        .patch("dev-3", &PatchParams::default(), &Patch::Merge(&clear))
        .await?;
    assert!(devices.get_opt("dev-3").await?.is_none());
    let mut with_ours = stale;
    with_ours.metadata.finalizers = Some(vec![FINALIZER.into()]);
    finalizer::remove(&devices, &with_ours, FINALIZER).await?;

    cloudpillar_tests::delete_namespace(&client, &ns).await?;
    Ok(())
}

#[tokio::test]
async fn a_hub_whose_certificate_is_not_trusted_says_why_in_hub_and_device_conditions()
-> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-tls").await?;
    let hub = EdgeHub::start(&client, &ns, "edge", 1000).await?;
    let operator = Operator::start(&client, test_config(&ns));

    // A Hub for the same endpoint that trusts another CA.
    let other = tempfile::tempdir()?;
    cloudpillar_hub::tls::server_material(other.path(), None, "localhost")?;
    let other_ca = std::fs::read_to_string(other.path().join(cloudpillar_hub::tls::DEV_CA_FILE))?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "wrong-policy"},
        "stringData": {"primaryKey": hub.handle.policy_key(), "ca.crt": other_ca},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let wrong = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Hub", "metadata": {"name": "wrong"},
        "spec": {
            "kind": "edge",
            "endpoint": {"serviceHost": format!("localhost:{}", hub.handle.http_addr().port())},
            "accessPolicy": {
                "policyName": hub.handle.policy_name(),
                "secretRef": {"name": "wrong-policy", "key": "primaryKey"},
            },
            "caBundle": {"name": "wrong-policy", "key": "ca.crt"},
        },
    });
    apply::<cloudpillar_crds::Hub>(&client, &ns, wrong).await?;
    let mut on_wrong = device("dev-tls", json!({}));
    on_wrong["spec"]["hubRef"]["name"] = json!("wrong");
    apply::<Device>(&client, &ns, on_wrong).await?;

    // Both conditions carry the TLS refusal, not only "the hub call failed".
    let hubs: Api<cloudpillar_crds::Hub> = Api::namespaced(client.clone(), &ns);
    let message = eventually("Hub wrong not ready", WAIT, || async {
        let status = hubs.get("wrong").await?.status.unwrap_or_default();
        let ready = cloudpillar_crds::conditions::find(&status.conditions, "Ready").cloned();
        Ok(ready.filter(|c| c.status == "False").map(|c| c.message))
    })
    .await?;
    assert!(message.contains("certificate"), "{message}");
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    let message = eventually("dev-tls out of sync", WAIT, || async {
        let status = devices.get("dev-tls").await?.status.unwrap_or_default();
        let synced = cloudpillar_crds::conditions::find(&status.conditions, "Synced").cloned();
        // Before the Hub reaches the operator's cache the Device says "no such Hub".
        Ok(synced
            .filter(|c| c.status == "False" && c.message.contains("certificate"))
            .map(|c| c.message))
    })
    .await?;
    assert!(
        message.contains("handshake") || message.contains("certificate"),
        "{message}"
    );

    // The hub stays unreachable for this Device: release it and the Hubs so the namespace
    // can go without the operator.
    operator.stop().await?;
    let release = json!({"metadata": {"finalizers": null}});
    devices
        .patch("dev-tls", &PatchParams::default(), &Patch::Merge(&release))
        .await?;
    for name in ["edge", "wrong"] {
        hubs.patch(name, &PatchParams::default(), &Patch::Merge(&release))
            .await?;
    }
    cloudpillar_tests::delete_namespace_and_wait(&client, &ns, Duration::from_secs(20)).await
}

fn condition_of(device: &Device, type_: &str) -> Option<cloudpillar_crds::Condition> {
    let conditions = device.status.as_ref().map(|s| s.conditions.as_slice());
    cloudpillar_crds::conditions::find(conditions.unwrap_or_default(), type_).cloned()
}

fn primary_key(hub: &EdgeHub, device_id: &str) -> anyhow::Result<Value> {
    let identity = serde_json::to_value(hub.handle.core().get_device(device_id)?)?;
    Ok(identity["authentication"]["symmetricKey"]["primaryKey"].clone())
}

#[tokio::test]
async fn a_second_device_naming_a_held_device_id_is_refused_and_cannot_remove_it()
-> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-dup").await?;
    let hub = EdgeHub::start(&client, &ns, "edge", 1000).await?;
    let operator = Operator::start(&client, test_config(&ns));
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);

    // pc-02 is registered and its agent connected.
    apply::<Device>(&client, &ns, device("pc-02", json!({}))).await?;
    eventually("pc-02 registered and synced", WAIT, || async {
        let device = status_of(&devices, "pc-02").await?;
        Ok(device.filter(|d| condition_true(d, "Registered") && condition_true(d, "Synced")))
    })
    .await?;
    let key = device_key(&client, &ns, "pc-02").await?;
    let mut link = hub.connect("pc-02", &key).await?;
    link.report(json!({"deviceState": "READY"})).await?;

    // A second Device names the same id: refused, and it writes nothing.
    let named = |name: &str, site: &str| {
        json!({
            "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
            "metadata": { "name": name },
            "spec": { "deviceId": "pc-02", "hubRef": { "name": "edge" }, "tags": { "site": site } },
        })
    };
    apply::<Device>(&client, &ns, named("impostor", "elsewhere")).await?;
    let refused = eventually("impostor refused", WAIT, || async {
        let device = status_of(&devices, "impostor").await?;
        Ok(device.filter(|d| {
            condition_of(d, "Registered")
                .is_some_and(|c| c.status == "False" && c.reason == "DuplicateDeviceId")
        }))
    })
    .await?;
    let registered = condition_of(&refused, "Registered").expect("Registered");
    assert!(
        registered.message.contains("held by Device pc-02"),
        "{}",
        registered.message
    );
    let synced = condition_of(&refused, "Synced").expect("Synced");
    assert_eq!(
        (synced.status.as_str(), synced.reason.as_str()),
        ("False", "DuplicateDeviceId")
    );
    let status = refused.status.clone().unwrap_or_default();
    assert!(
        status.connection.is_none() && status.device_state.is_none(),
        "the impostor shows pc-02's twin: {status:?}"
    );
    eventually("DuplicateDeviceId Warning Event", WAIT, || async {
        let events = events_for(&client, &ns, "impostor").await?;
        Ok(events
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("DuplicateDeviceId")
                    && e.type_.as_deref() == Some("Warning")
            })
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let twin = hub.twin("pc-02").expect("twin");
    assert_eq!(twin["tags"]["site"], "lab", "the impostor wrote the twin");
    assert_eq!(
        primary_key(&hub, "pc-02")?,
        key.as_str(),
        "the impostor replaced the keys"
    );

    // Deleting the impostor leaves the identity, its keys and pc-02 as they were.
    devices.delete("impostor", &DeleteParams::default()).await?;
    eventually("impostor gone", WAIT, || async {
        Ok(status_of(&devices, "impostor")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    assert!(
        hub.twin("pc-02").is_some(),
        "deleting the impostor removed pc-02"
    );
    assert_eq!(primary_key(&hub, "pc-02")?, key.as_str());
    link.report(json!({"deviceState": "BUSY"})).await?;
    eventually("pc-02 still mirrored", WAIT, || async {
        let device = status_of(&devices, "pc-02").await?;
        Ok(device.filter(|d| {
            condition_true(d, "Registered")
                && d.status.as_ref().and_then(|s| s.device_state.as_deref()) == Some("BUSY")
        }))
    })
    .await?;

    // Once the holder goes, the Device next in line takes the id over.
    apply::<Device>(&client, &ns, named("spare", "spare")).await?;
    eventually("spare refused while pc-02 holds the id", WAIT, || async {
        let device = status_of(&devices, "spare").await?;
        Ok(device.filter(|d| {
            condition_of(d, "Registered").is_some_and(|c| c.reason == "DuplicateDeviceId")
        }))
    })
    .await?;
    link.disconnect().await;
    devices.delete("pc-02", &DeleteParams::default()).await?;
    eventually("spare registered and synced", WAIT, || async {
        let device = status_of(&devices, "spare").await?;
        Ok(device.filter(|d| condition_true(d, "Registered") && condition_true(d, "Synced")))
    })
    .await?;
    let twin = hub.twin("pc-02").expect("twin of the new holder");
    assert_eq!(twin["tags"]["site"], "spare");
    let spare_key = device_key(&client, &ns, "spare").await?;
    assert_eq!(primary_key(&hub, "pc-02")?, spare_key.as_str());

    cloudpillar_tests::delete_namespace_and_wait(&client, &ns, Duration::from_secs(20)).await?;
    operator.stop().await?;
    Ok(())
}

#[tokio::test]
async fn an_owned_tag_or_desired_property_changed_behind_the_operator_is_written_back()
-> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-drift").await?;
    let hub = EdgeHub::start(&client, &ns, "edge", 1000).await?;
    // A resync far beyond the test: only the hub's twin change events can bring it back.
    let mut config = test_config(&ns);
    config.resync_period = Duration::from_secs(600);
    let operator = Operator::start(&client, config);
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);

    apply::<Device>(
        &client,
        &ns,
        device("dev-drift", json!({"logLevel": "info"})),
    )
    .await?;
    eventually("dev-drift synced", WAIT, || async {
        let device = status_of(&devices, "dev-drift").await?;
        Ok(device.filter(|d| condition_true(d, "Synced")))
    })
    .await?;

    // Someone else writes the twin with the service API.
    let service = cloudpillar_controllers::twin::AzureTwinService::new(hub.connection(1000))?;
    let other = |tags: Value, desired: Value| cloudpillar_controllers::twin::TwinPatch {
        tags: Some(tags),
        desired: Some(desired),
    };
    use cloudpillar_controllers::twin::TwinService;
    service
        .patch_twin(
            "dev-drift",
            &other(
                json!({"site": "elsewhere", "owner": "it"}),
                json!({"logLevel": "trace"}),
            ),
            None,
        )
        .await?;
    let twin = eventually(
        "owned keys written back",
        Duration::from_secs(20),
        || async {
            let twin = hub.twin("dev-drift").expect("twin");
            let back = twin["tags"]["site"] == "lab"
                && twin["properties"]["desired"]["logLevel"] == "info";
            Ok(back.then_some(twin))
        },
    )
    .await?;
    assert_eq!(
        twin["tags"]["owner"], "it",
        "a key the Device does not own was touched"
    );

    cloudpillar_tests::delete_namespace_and_wait(&client, &ns, Duration::from_secs(20)).await?;
    operator.stop().await?;
    Ok(())
}
