//! What the operator's ServiceAccount may do, by impersonating it against the API server.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::Context;
use cloudpillar_crds::{Device, DeviceSpec, Hub, Recipe, Rollout, RolloutSpec};
use cloudpillar_tests::fixture_json;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::tools::forbidden;

/// Lease name the chart's default values give the operator.
const LEASE: &str = "cloudpillar-operator";

/// A client that acts as ServiceAccount `name` of `namespace`, with the groups it would have.
async fn impersonating(namespace: &str, name: &str) -> anyhow::Result<Client> {
    let mut config = kube::Config::infer().await.context("reading KUBECONFIG")?;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".into(),
    ]);
    Ok(Client::try_from(config)?)
}

/// Objects of every kind the operator works on, created by the admin.
async fn create_objects(admin: &Client, namespace: &str, other: &str) -> anyhow::Result<()> {
    let post = PostParams::default();
    Api::<Device>::namespaced(admin.clone(), namespace)
        .create(&post, &Device::new("mri-01", DeviceSpec::default()))
        .await?;
    let change_spec = fixture_json("security-update-desired.json", "/desired/changeSpec")?;
    let recipe: Recipe = serde_json::from_value(json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Recipe",
        "metadata": {"name": "security-update"}, "spec": {"changeSpec": change_spec},
    }))?;
    Api::<Recipe>::namespaced(admin.clone(), namespace)
        .create(&post, &recipe)
        .await?;
    let rollout = Rollout::new(
        "fw",
        RolloutSpec::for_label("security-update", "site", "lab-3"),
    );
    Api::<Rollout>::namespaced(admin.clone(), namespace)
        .create(&post, &rollout)
        .await?;
    let hub: Hub = serde_json::from_value(json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Hub", "metadata": {"name": "edge"},
        "spec": {"kind": "edge", "endpoint": {"serviceHost": "hub.example:8443"},
                 "accessPolicy": {"secretRef": {"name": "hub-policy", "key": "primaryKey"}}},
    }))?;
    Api::<Hub>::namespaced(admin.clone(), namespace)
        .create(&post, &hub)
        .await?;
    for ns in [namespace, other] {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "hub-policy"}, "stringData": {"primaryKey": "a2V5"},
        }))?;
        Api::<Secret>::namespaced(admin.clone(), ns)
            .create(&post, &secret)
            .await?;
    }
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "someone-else"}}))?;
    Api::<Lease>::namespaced(admin.clone(), namespace)
        .create(&post, &lease)
        .await?;
    Ok(())
}

/// The operator lists, gets, watches and patches `name`, and patches its status.
async fn works_on<K>(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + 'static,
{
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default())
        .await
        .with_context(|| format!("list {kind}"))?;
    api.get(name).await.with_context(|| format!("get {kind}"))?;
    let mut events = api
        .watch(&WatchParams::default().timeout(2), "0")
        .await
        .with_context(|| format!("watch {kind}"))?
        .boxed();
    events
        .try_next()
        .await
        .with_context(|| format!("watch event of {kind}"))?;
    let label = json!({"metadata": {"labels": {"cloudpillar.io/checked": "true"}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .with_context(|| format!("patch {kind}"))?;
    let status = json!({"status": {"observedGeneration": 1}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("patch {kind} status"))?;
    Ok(())
}

/// Waits until the freshly applied Role takes effect for `client`.
async fn wait_for_rbac(client: &Client, namespace: &str) -> anyhow::Result<()> {
    let devices: Api<Device> = Api::namespaced(client.clone(), namespace);
    for _ in 0..50 {
        if devices.list(&ListParams::default()).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    devices
        .list(&ListParams::default())
        .await
        .context("the operator's Role never took effect")?;
    Ok(())
}

/// Everything the operator needs succeeds as its ServiceAccount; the rest answers 403.
pub async fn check(
    admin: &Client,
    namespace: &str,
    other: &str,
    account: &str,
) -> anyhow::Result<()> {
    create_objects(admin, namespace, other).await?;
    let sa = impersonating(namespace, account).await?;
    wait_for_rbac(&sa, namespace).await?;

    // Its own resources, with status.
    works_on::<Device>(&sa, namespace, "mri-01").await?;
    works_on::<Recipe>(&sa, namespace, "security-update").await?;
    works_on::<Rollout>(&sa, namespace, "fw").await?;
    works_on::<Hub>(&sa, namespace, "edge").await?;

    // Events about them, as kube's recorder writes them (create, then patch the series).
    let events: Api<Event> = Api::namespaced(sa.clone(), namespace);
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": "mri-01.synced"},
        "eventTime": "2026-12-04T10:00:00.000000Z", "type": "Normal", "reason": "Synced",
        "action": "Reconcile", "note": "twin in sync",
        "reportingController": "cloudpillar-operator", "reportingInstance": "test",
        "regarding": {"apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
                      "name": "mri-01", "namespace": namespace},
    }))?;
    events
        .create(&PostParams::default(), &event)
        .await
        .context("create Event")?;
    let series = json!({"series": {"count": 2, "lastObservedTime": "2026-12-04T10:00:05.000000Z"}});
    events
        .patch(
            "mri-01.synced",
            &PatchParams::default(),
            &Patch::Merge(&series),
        )
        .await
        .context("patch Event")?;

    // Its leader Lease: create, get, update.
    let leases: Api<Lease> = Api::namespaced(sa.clone(), namespace);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": LEASE}, "spec": {"holderIdentity": "operator-0"},
    }))?;
    leases
        .create(&PostParams::default(), &lease)
        .await
        .context("create Lease")?;
    let mut lease = leases.get(LEASE).await.context("get Lease")?;
    lease
        .spec
        .get_or_insert_with(Default::default)
        .holder_identity = Some("operator-1".into());
    leases
        .replace(LEASE, &PostParams::default(), &lease)
        .await
        .context("update Lease")?;

    // Secrets in its namespace: read hub keys, create and delete generated device keys.
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), namespace);
    secrets
        .get("hub-policy")
        .await
        .context("get Secret in its namespace")?;
    let key: Secret = serde_json::from_value(json!({
        "metadata": {"name": "mri-01-device-key"}, "stringData": {"primaryKey": "a2V5"},
    }))?;
    secrets
        .create(&PostParams::default(), &key)
        .await
        .context("create Secret")?;
    secrets
        .delete("mri-01-device-key", &DeleteParams::default())
        .await
        .context("delete Secret")?;

    // Refused: other namespaces' Secrets and resources, listing Secrets, other Leases,
    // Pods, Nodes.
    let elsewhere: Api<Secret> = Api::namespaced(sa.clone(), other);
    forbidden(
        elsewhere.get("hub-policy").await,
        "get a Secret in another namespace",
    )?;
    forbidden(secrets.list(&ListParams::default()).await, "list Secrets")?;
    let devices: Api<Device> = Api::namespaced(sa.clone(), other);
    forbidden(
        devices.list(&ListParams::default()).await,
        "list Devices elsewhere",
    )?;
    forbidden(leases.get("someone-else").await, "get another Lease")?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "intruder"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))?;
    let pods: Api<Pod> = Api::namespaced(sa.clone(), namespace);
    forbidden(
        pods.create(&PostParams::default(), &pod).await,
        "create a Pod",
    )?;
    let nodes: Api<Node> = Api::all(sa.clone());
    forbidden(nodes.list(&ListParams::default()).await, "list Nodes")?;
    let cluster_devices: Api<Device> = Api::all(sa);
    forbidden(
        cluster_devices.list(&ListParams::default()).await,
        "list Devices cluster-wide",
    )?;
    Ok(())
}
