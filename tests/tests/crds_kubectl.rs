//! What a person sees with `kubectl get` and `kubectl explain` against a real API server.

use std::time::Duration;

use anyhow::{Context, bail};
use cloudpillar_crds::conditions::{RECIPE_SIGNED, RECIPE_VALID, TRUE};
use cloudpillar_tests::{
    FIELD_MANAGER, delete_namespace, fixture_json, install_crds, kube_client, test_namespace,
};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::{Value, json};

/// Runs kubectl with `args` against the cluster in `KUBECONFIG` and returns its output.
async fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("kubectl")
        .args(args)
        .output()
        .await
        .context("running kubectl (apt-get install kubectl)")?;
    if !output.status.success() {
        bail!(
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// Applies `object` and then its `status` through the status subresource.
async fn apply_with_status(
    client: &kube::Client,
    ns: &str,
    resource: &ApiResource,
    object: Value,
    status: Value,
) -> anyhow::Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    let name = object["metadata"]["name"]
        .as_str()
        .context("object has a name")?
        .to_owned();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&object)).await?;
    let mut with_status = object;
    with_status["status"] = status;
    api.patch_status(&name, &params, &Patch::Apply(&with_status))
        .await?;
    Ok(())
}

fn condition(type_: &str) -> Value {
    json!({
        "type": type_, "status": TRUE, "reason": "Checked", "message": "",
        "lastTransitionTime": "2026-12-01T10:00:00Z",
    })
}

/// The line of `table` whose first column is `name`, split into cells.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
}

#[tokio::test]
async fn kubectl_get_shows_each_device_recipe_and_rollout_in_one_line() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "crd-kubectl").await?;
    let api_version = "cloudpillar.io/v1alpha1";

    let device = json!({
        "apiVersion": api_version, "kind": "Device", "metadata": { "name": "mri-01" },
        "spec": { "hubRef": { "name": "lab" }, "mode": "STRICT" },
    });
    let device_status = json!({
        "deviceState": "PATCH_INTRANSIT",
        "connection": { "state": "Connected", "since": "2026-12-01T10:00:00Z" },
        "recipe": { "id": "1.14.61047", "progress": 42 },
    });
    let resource = ApiResource::erase::<cloudpillar_crds::Device>(&());
    apply_with_status(&client, &ns, &resource, device, device_status).await?;

    let change_spec = fixture_json("windows-update-recipe.json", "/changeSpec")?;
    let recipe = json!({
        "apiVersion": api_version, "kind": "Recipe", "metadata": { "name": "windows-update" },
        "spec": { "changeSpec": change_spec },
    });
    let recipe_status = json!({
        "keyId": "signing-2026",
        "conditions": [condition(RECIPE_VALID), condition(RECIPE_SIGNED)],
    });
    let resource = ApiResource::erase::<cloudpillar_crds::Recipe>(&());
    apply_with_status(&client, &ns, &resource, recipe, recipe_status).await?;

    let rollout = json!({
        "apiVersion": api_version, "kind": "Rollout", "metadata": { "name": "fw" },
        "spec": {
            "recipeRef": { "name": "windows-update" },
            "selector": { "matchLabels": { "site": "lab-3" } },
            "strategy": { "waves": [{ "count": 2 }, { "percent": 100 }] },
        },
    });
    let rollout_status = json!({
        "phase": "Progressing", "currentWave": 2,
        "counts": { "total": 10, "succeeded": 6, "failed": 1, "deferred": 2, "inProgress": 1 },
    });
    let resource = ApiResource::erase::<cloudpillar_crds::Rollout>(&());
    apply_with_status(&client, &ns, &resource, rollout, rollout_status).await?;

    let table = kubectl(&["get", "devices,recipes,rollouts", "-n", &ns]).await?;
    eprintln!("{table}");

    let device_row = row(&table, "device.cloudpillar.io/mri-01");
    let recipe_row = row(&table, "recipe.cloudpillar.io/windows-update");
    let rollout_row = row(&table, "rollout.cloudpillar.io/fw");
    let tables: Vec<&str> = table.split("\n\n").collect();
    assert_eq!(tables.len(), 3, "one table per kind:\n{table}");
    for (part, expected) in tables.iter().zip([
        "HUB MODE STATE CONNECTION RECIPE PROGRESS AGE",
        "ID VALID SIGNED KEY AGE",
        "RECIPE PHASE WAVE SUCCEEDED FAILED DEFERRED AGE",
    ]) {
        let header = part.lines().next().unwrap_or_default();
        assert_eq!(
            header
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" "),
            expected
        );
    }
    assert_eq!(
        &device_row[1..7],
        [
            "lab",
            "STRICT",
            "PATCH_INTRANSIT",
            "Connected",
            "1.14.61047",
            "42"
        ]
    );
    assert_eq!(
        &recipe_row[1..5],
        [
            "1.14.61047.38115.20230418180125",
            "True",
            "True",
            "signing-2026"
        ]
    );
    assert_eq!(
        &rollout_row[1..7],
        ["windows-update", "Progressing", "2", "6", "1", "2"]
    );
    delete_namespace(&client, &ns).await
}

#[tokio::test]
async fn kubectl_explain_describes_the_rollout_strategy() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;

    // The API server publishes a changed CRD's OpenAPI document a moment after it is applied.
    let mut text = String::new();
    for _ in 0..50 {
        text = kubectl(&[
            "explain",
            "rollouts.spec.strategy",
            "--api-version=cloudpillar.io/v1alpha1",
        ])
        .await
        .unwrap_or_default();
        if text.contains("How fast the recipe spreads") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{text}");

    assert!(
        text.contains("How fast the recipe spreads"),
        "strategy is described:\n{text}"
    );
    for field in [
        "waves",
        "maxConcurrent",
        "failureThreshold",
        "maintenanceWindow",
        "deviceTimeout",
    ] {
        assert!(text.contains(field), "explain lists {field}:\n{text}");
    }
    let flowing = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flowing.contains("the last wave also takes every device still left"),
        "{text}"
    );

    let percent = kubectl(&[
        "explain",
        "rollouts.spec.strategy.waves.percent",
        "--api-version=cloudpillar.io/v1alpha1",
    ])
    .await?;
    assert!(percent.contains("from 1 to 100 percent"), "{percent}");
    Ok(())
}
