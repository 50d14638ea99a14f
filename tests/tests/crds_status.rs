//! Status as the controllers write it goes through the status subresource and reads back
//! unchanged, so a status write never fails on the CRD schema.

use std::collections::BTreeMap;

use cloudpillar_crds::conditions::{self, Condition};
use cloudpillar_crds::{
    Artifact, Connection, ConnectionState, Device, DeviceAssignment, DeviceCounts,
    DeviceRecipeStatus, DeviceRolloutPhase, DeviceSpec, DeviceStatus, FailedDevice,
    ProvisioningUpgrade, Recipe, RecipeSpec, RecipeStatus, Rollout, RolloutPhase, RolloutSpec,
    RolloutStatus, Wave, WaveStatus,
};
use cloudpillar_tests::{
    FIELD_MANAGER, delete_namespace, fixture_json, install_crds, kube_client, test_namespace,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(1_796_000_000 + second).expect("valid time"))
}

fn condition(type_: &str, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: format!("{type_} is {status} because {reason}"),
        observed_generation: Some(1),
        last_transition_time: at(0),
    }
}

/// Writes `status` through the status subresource and returns the object read back.
async fn write_status<K>(
    api: &Api<K>,
    name: &str,
    status: impl k8s_openapi::serde::Serialize,
) -> anyhow::Result<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let patch = json!({
        "apiVersion": "cloudpillar.io/v1alpha1",
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &params, &Patch::Apply(&patch))
        .await?;
    Ok(api.get(name).await?)
}

#[tokio::test]
async fn a_full_device_status_reads_back_unchanged() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "crd-status-dev").await?;
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    devices
        .create(
            &PostParams::default(),
            &Device::new("mri-01", DeviceSpec::default()),
        )
        .await?;

    let status = DeviceStatus {
        observed_generation: Some(1),
        device_state: Some("PATCH_INTRANSIT".into()),
        connection: Some(Connection {
            state: ConnectionState::Stale,
            since: at(10),
        }),
        last_activity_time: Some(at(5)),
        desired_twin_version: Some(42),
        reported_twin_version: Some(17),
        recipe: Some(DeviceRecipeStatus {
            id: Some("1.14.61047.38115.20230418180125".into()),
            action_path: Some("changeSpec.patch.transitPackage[1]".into()),
            status: Some("InProgress".into()),
            progress: Some(47),
            last_faulted_recipe: Some("patch".into()),
            last_faulted_path: Some("changeSpec.patch.transitPackage[1]".into()),
            result_text: None,
        }),
        assignment: Some(DeviceAssignment {
            rollout: "fw-rollout".into(),
            rollout_uid: "3f1c2a52-0d5e-4d8e-9c3b-0b0c1f6f7a10".into(),
            recipe: "windows-update".into(),
            recipe_id: "1.14.61047.38115.20230418180125".into(),
            wave: 2,
            phase: DeviceRolloutPhase::Unreachable,
            reason: Some("Stale".into()),
            assigned_time: Some(at(1)),
            phase_time: Some(at(10)),
        }),
        previous_assignments: vec![DeviceAssignment {
            rollout: "canary-rollout".into(),
            rollout_uid: "7a0d9e41-5b2c-4f7e-8d1a-2c3e4f5a6b7c".into(),
            recipe: "quick-fix".into(),
            recipe_id: "quick-fix-1".into(),
            wave: 1,
            phase: DeviceRolloutPhase::Succeeded,
            reason: None,
            assigned_time: Some(at(0)),
            phase_time: Some(at(1)),
        }],
        provisioning_upgrade: Some(ProvisioningUpgrade {
            mode: "STRICT".into(),
            hub: "hub.example".into(),
            auth_method: "SAS".into(),
            state: "Sent".into(),
            message: None,
            message_id: Some("provisioning-mri-01-STRICT-2".into()),
            sent_time: Some(at(9)),
        }),
        applied_tags: BTreeMap::from([("site".into(), "lab-3".into())]),
        applied_desired: BTreeMap::from([
            ("logLevel".into(), json!("debug")),
            (
                "upload".into(),
                json!({ "everyMinutes": 15, "paths": ["a", "b"] }),
            ),
        ]),
        conditions: vec![
            condition(
                conditions::DEVICE_REGISTERED,
                conditions::TRUE,
                "Registered",
            ),
            condition(
                conditions::DEVICE_SYNCED,
                conditions::FALSE,
                "HubUnreachable",
            ),
        ],
    };
    let read = write_status(&devices, "mri-01", &status).await?;

    assert_eq!(read.status, Some(status));
    delete_namespace(&client, &ns).await
}

#[tokio::test]
async fn a_full_recipe_status_reads_back_unchanged() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "crd-status-rcp").await?;
    let recipes: Api<Recipe> = Api::namespaced(client.clone(), &ns);
    let change_spec = serde_json::from_value(fixture_json(
        "security-update-desired.json",
        "/desired/changeSpec",
    )?)?;
    let recipe = Recipe::new("security-update", RecipeSpec { change_spec });
    recipes.create(&PostParams::default(), &recipe).await?;

    let status = RecipeStatus {
        observed_generation: Some(1),
        digest: Some("ab".repeat(64)),
        signature: Some("AauRfo25DQRQGwtWSkr89gJQOX7YhL17vKI2dSyhXktKYBR33nhH".into()),
        key_id: Some("recipe-signing/2026-12".into()),
        artifacts: vec![
            Artifact {
                name: "SPU.zip".into(),
                size: Some(268_435_456),
                sha256: Some("0f".repeat(32)),
                sha512: Some("e3".repeat(64)),
            },
            Artifact {
                name: "mcaffeeV3_5150dat.zip".into(),
                ..Artifact::default()
            },
        ],
        conditions: vec![
            condition(conditions::RECIPE_VALID, conditions::TRUE, "Checked"),
            condition(conditions::RECIPE_SIGNED, conditions::TRUE, "Signed"),
        ],
    };
    let read = write_status(&recipes, "security-update", &status).await?;

    assert_eq!(read.status, Some(status));
    delete_namespace(&client, &ns).await
}

#[tokio::test]
async fn a_full_rollout_status_with_twenty_failures_reads_back_unchanged() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "crd-status-ro").await?;
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns);
    let mut spec = RolloutSpec::for_label("windows-update", "site", "lab-3");
    spec.strategy.waves = vec![Wave::count(2), Wave::percent(100)];
    rollouts
        .create(&PostParams::default(), &Rollout::new("fw", spec))
        .await?;

    let counts: DeviceCounts = [
        DeviceRolloutPhase::Succeeded,
        DeviceRolloutPhase::Failed,
        DeviceRolloutPhase::Deferred,
        DeviceRolloutPhase::InProgress,
    ]
    .into_iter()
    .collect();
    let status = RolloutStatus {
        observed_generation: Some(1),
        phase: RolloutPhase::Paused,
        recipe_id: Some("1.14.61047.38115.20230418180125".into()),
        current_wave: Some(2),
        counts: counts.clone(),
        waves: vec![
            WaveStatus {
                number: 1,
                name: Some("canary".into()),
                size: 2,
                counts: counts.clone(),
                start_time: Some(at(0)),
                completion_time: Some(at(60)),
                resume_time: Some(at(120)),
            },
            WaveStatus {
                number: 2,
                size: 2,
                counts,
                ..WaveStatus::default()
            },
        ],
        failed_devices: (0..20)
            .map(|n| FailedDevice {
                name: format!("mri-{n:02}"),
                wave: 2,
                reason: "StepFailed".into(),
                message: Some("exit code 2: Install-Update.ps1 failed".into()),
                action_path: Some("changeSpec.patch.installSteps[0]".into()),
                time: Some(at(n)),
            })
            .collect(),
        start_time: Some(at(0)),
        completion_time: None,
        conditions: vec![condition(
            conditions::ROLLOUT_PAUSED,
            conditions::TRUE,
            "FailureThreshold",
        )],
    };
    let read = write_status(&rollouts, "fw", &status).await?;
    assert_eq!(read.status, Some(status.clone()));

    let mut too_many = status;
    too_many
        .failed_devices
        .push(too_many.failed_devices[0].clone());
    let refused = write_status(&rollouts, "fw", &too_many).await;
    assert!(refused.is_err(), "the failed-device list is bounded at 20");
    delete_namespace(&client, &ns).await
}
