//! The chart's MutatingAdmissionPolicy on a real API server: a Device created where it is
//! bound carries the operator's finalizer from its first version (so the operator writes no
//! finalizer PATCH), finalizers a user set stay, and Devices in other namespaces are left
//! alone. The chart renders the policy only where the cluster serves the API.

use anyhow::{Context, ensure};
use cloudpillar_controllers::device::FINALIZER;
use cloudpillar_crds::Device;
use cloudpillar_tests::{
    FIELD_MANAGER, delete_namespace, install_crds, kube_client, test_namespace,
};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

// Shared with the other chart tests; this one uses only part of them.
#[allow(dead_code)]
#[path = "chart/tools.rs"]
mod tools;

const TEMPLATE: &str = "templates/device-finalizer-policy.yaml";
const SERVED: &str = "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy";

/// The objects the template renders into `namespace`.
async fn rendered(namespace: &str, extra: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["--show-only", TEMPLATE];
    args.extend_from_slice(extra);
    let text = match tools::render(namespace, &args).await {
        Ok(text) => text,
        // Helm refuses --show-only for a template that renders nothing.
        Err(error) if format!("{error:#}").contains("could not find template") => String::new(),
        Err(error) => return Err(error),
    };
    tools::documents(&text)
        .iter()
        .map(|doc| Ok(serde_yaml::from_str(doc)?))
        .collect()
}

fn admission_api(client: &Client, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
    let plural = format!("{}s", kind.to_lowercase()).replace("policys", "policies");
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, &plural),
    )
}

async fn create_device(
    client: &Client,
    namespace: &str,
    name: &str,
    finalizers: &[&str],
) -> anyhow::Result<Device> {
    let device: Device = serde_json::from_value(json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
        "metadata": {"name": name, "finalizers": finalizers},
        "spec": {"hubRef": {"name": "edge"}},
    }))?;
    let devices: Api<Device> = Api::namespaced(client.clone(), namespace);
    Ok(devices.create(&PostParams::default(), &device).await?)
}

#[tokio::test]
async fn rendered_only_where_the_cluster_serves_mutating_admission_policies() -> anyhow::Result<()>
{
    ensure!(rendered("cloudpillar", &[]).await?.is_empty());
    let served = ["--api-versions", SERVED];
    let off = [
        "--api-versions",
        SERVED,
        "--set",
        "operator.finalizerPolicy=false",
    ];
    ensure!(rendered("cloudpillar", &off).await?.is_empty());
    let objects = rendered("cloudpillar", &served).await?;
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    ensure!(
        kinds == ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"],
        "{kinds:?}"
    );
    let expression = objects[0]
        .pointer("/spec/mutations/0/applyConfiguration/expression")
        .and_then(Value::as_str)
        .context("no apply configuration")?;
    ensure!(
        expression.contains(&format!("\"{FINALIZER}\"")),
        "the policy adds another finalizer than the operator's: {expression}"
    );
    let all = [
        "--api-versions",
        SERVED,
        "--set",
        "operator.watchAllNamespaces=true",
    ];
    let binding = &rendered("cloudpillar", &all).await?[1];
    ensure!(binding["spec"]["matchResources"].is_null(), "{binding}");
    Ok(())
}

#[tokio::test]
async fn devices_get_the_operators_finalizer_at_creation_where_the_policy_is_bound()
-> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let bound = test_namespace(&client, "finalizer-policy").await?;
    let other = test_namespace(&client, "finalizer-unbound").await?;

    // The chart's policy and binding as rendered for the bound namespace.
    let objects = rendered(&bound, &["--api-versions", SERVED]).await?;
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for object in &objects {
        let object: DynamicObject = serde_json::from_value(object.clone())?;
        let kind = object
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .context("kind")?;
        let name = object.name_any();
        admission_api(&client, &kind)
            .patch(&name, &apply, &Patch::Apply(&object))
            .await?;
        names.push((kind, name));
    }

    // The policy takes effect once the API server has loaded it: retry the first creation.
    let mut first = None;
    for attempt in 0..60 {
        let name = format!("dev-{attempt}");
        let device = create_device(&client, &bound, &name, &[]).await?;
        if device.finalizers().iter().any(|f| f == FINALIZER) {
            first = Some(device);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let first = first.context("no Device got the finalizer at creation within 30 s")?;
    ensure!(
        first.finalizers() == [FINALIZER],
        "{:?}",
        first.finalizers()
    );

    let kept = create_device(&client, &bound, "dev-kept", &["example.com/keep"]).await?;
    ensure!(
        kept.finalizers() == ["example.com/keep", FINALIZER],
        "{:?}",
        kept.finalizers()
    );
    let elsewhere = create_device(&client, &other, "dev-elsewhere", &[]).await?;
    ensure!(
        elsewhere.finalizers().is_empty(),
        "{:?}",
        elsewhere.finalizers()
    );

    // No operator runs here: take the finalizers off so the namespaces can go.
    let devices: Api<Device> = Api::namespaced(client.clone(), &bound);
    let clear = json!({"metadata": {"finalizers": null}});
    for device in devices.list(&Default::default()).await? {
        devices
            .patch(
                &device.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&clear),
            )
            .await?;
    }
    // The binding is this test's own; the policy is shared with any other user of the cluster.
    for (kind, name) in names.iter().filter(|(kind, _)| kind.ends_with("Binding")) {
        admission_api(&client, kind)
            .delete(name, &DeleteParams::default())
            .await?;
    }
    delete_namespace(&client, &bound).await?;
    delete_namespace(&client, &other).await?;
    Ok(())
}
