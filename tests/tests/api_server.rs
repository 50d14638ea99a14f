//! The CRDs generated from `cloudpillar-crds` against a real API server.

use cloudpillar_crds::{Device, DeviceMode, DeviceSpec};
use cloudpillar_tests::{delete_namespace, install_crds, kube_client, test_namespace};
use kube::api::{Api, PostParams};

#[tokio::test]
async fn device_round_trips_through_the_api_server() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "roundtrip").await?;
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);

    let mut spec = DeviceSpec {
        mode: DeviceMode::Strict,
        ..Default::default()
    };
    spec.hub_ref.name = "edge".into();
    spec.tags.insert("site".into(), "lab-3".into());
    let created = devices
        .create(&PostParams::default(), &Device::new("mri-01", spec.clone()))
        .await?;
    let read = devices.get("mri-01").await?;

    assert_eq!(read.spec, spec);
    assert_eq!(read.metadata.uid, created.metadata.uid);
    delete_namespace(&client, &ns).await
}

#[tokio::test]
async fn api_server_rejects_a_device_that_violates_the_schema() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "schema").await?;
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<Device>(&()),
    );
    let bad: kube::api::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "cloudpillar.io/v1alpha1",
        "kind": "Device",
        "metadata": { "name": "bad-mode" },
        "spec": { "hubRef": { "name": "edge" }, "mode": "TURBO" }
    }))?;

    let err = raw
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("server accepted an invalid mode");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}")
    };
    eprintln!(
        "server refused the object: {} {}",
        status.code, status.message
    );
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("spec.mode"),
        "message names the field: {}",
        status.message
    );
    assert!(
        status.message.contains("TURBO"),
        "message names the value: {}",
        status.message
    );
    delete_namespace(&client, &ns).await
}
