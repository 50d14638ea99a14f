//! The Hub controller against the real API server and an embedded edge hub: readiness that
//! follows the hub and its Secret, and a Hub kept until the Devices that use it are gone.

use std::time::Duration;

use cloudpillar_crds::conditions::{HUB_READY, find};
use cloudpillar_crds::{Device, Hub};
use cloudpillar_tests::controllers::{EdgeHub, Operator, apply, eventually, test_config};
use cloudpillar_tests::{install_crds, kube_client, test_namespace};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// The Hub's `Ready` condition as (status, reason, message), once it has one.
async fn ready(hubs: &Api<Hub>, name: &str) -> anyhow::Result<Option<(String, String, String)>> {
    let hub = hubs.get_opt(name).await?;
    let conditions = hub.and_then(|h| h.status).map(|s| s.conditions);
    Ok(conditions
        .as_deref()
        .and_then(|c| find(c, HUB_READY))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())))
}

async fn ready_is(
    hubs: &Api<Hub>,
    name: &str,
    status: &str,
    reason: &str,
) -> anyhow::Result<String> {
    let what = format!("Hub {name} Ready={status} ({reason})");
    eventually(&what, WAIT, || async {
        Ok(ready(hubs, name)
            .await?
            .filter(|(s, r, _)| s == status && r == reason)
            .map(|(_, _, message)| message))
    })
    .await
}

#[tokio::test]
async fn a_hub_that_loses_its_secret_or_stops_answering_is_not_ready_within_a_probe()
-> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-hub-probe").await?;
    let hub = EdgeHub::start(&client, &ns, "edge", 1000).await?;
    let mut config = test_config(&ns);
    config.hub_probe_period = Duration::from_secs(1);
    let operator = Operator::start(&client, config);
    let hubs: Api<Hub> = Api::namespaced(client.clone(), &ns);
    ready_is(&hubs, "edge", "True", "Reachable").await?;

    // The policy Secret deleted: named as the Hub's, not as some Device's.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .delete("edge-policy", &DeleteParams::default())
        .await?;
    let message = ready_is(&hubs, "edge", "False", "SecretMissing").await?;
    assert!(
        message.contains("secret edge-policy key primaryKey for hub edge"),
        "{message}"
    );
    hub.register(&client, &ns, 1000).await?;
    ready_is(&hubs, "edge", "True", "Reachable").await?;

    // The hub gone: not ready within a few probes.
    hub.handle.shutdown().await;
    let message = ready_is(&hubs, "edge", "False", "HubUnavailable").await?;
    assert!(!message.is_empty());
    operator.stop().await
}

#[tokio::test]
async fn a_hub_in_use_goes_only_after_the_devices_that_use_it() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-hub-in-use").await?;
    let hub = EdgeHub::start(&client, &ns, "edge", 1000).await?;
    let operator = Operator::start(&client, test_config(&ns));
    let hubs: Api<Hub> = Api::namespaced(client.clone(), &ns);
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    apply::<Device>(
        &client,
        &ns,
        json!({"apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
               "metadata": {"name": "pc-1"}, "spec": {"hubRef": {"name": "edge"}}}),
    )
    .await?;
    eventually("pc-1 registered in the hub", WAIT, || async {
        Ok(hub.twin("pc-1"))
    })
    .await?;

    hubs.delete("edge", &DeleteParams::default()).await?;
    let message = ready_is(&hubs, "edge", "False", "InUse").await?;
    assert!(
        message.contains("until the Device that uses this hub is deleted: pc-1"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hubs.get_opt("edge").await?.is_some(), "the Hub went first");

    // The Device goes first, through the hub, and takes its identity along; then the Hub.
    devices.delete("pc-1", &DeleteParams::default()).await?;
    eventually("the Hub deleted after its Device", WAIT, || async {
        Ok(hubs.get_opt("edge").await?.is_none().then_some(()))
    })
    .await?;
    assert!(
        hub.twin("pc-1").is_none(),
        "the identity was left in the hub"
    );
    assert!(devices.get_opt("pc-1").await?.is_none());
    operator.stop().await
}
