//! Defaults and field names of the resource types, as the API server and controllers see them.

use cloudpillar_crds::device::DEFAULT_HUB;
use cloudpillar_crds::{
    AuthMethod, Device, DeviceCounts, DeviceMode, DeviceRolloutPhase, DeviceSpec, DeviceStatus,
    FailureAction, HubKind, HubSpec, MaintenanceWindow, RolloutPhase, RolloutSpec, RolloutStatus,
    Wave,
};
use serde_json::json;

#[test]
fn a_minimal_device_gets_full_mode_sas_and_the_default_hub() {
    let spec: DeviceSpec = serde_json::from_value(json!({})).expect("empty spec reads");

    assert_eq!(spec.mode, DeviceMode::Full);
    assert_eq!(spec.hub_ref.name, DEFAULT_HUB);
    assert_eq!(spec.authentication.permanent.method, AuthMethod::Sas);
    assert!(spec.authentication.provisioning.is_none());
    assert_eq!(spec, DeviceSpec::default());
}

#[test]
fn device_id_defaults_to_the_object_name() {
    let device = Device::new("mri-01", DeviceSpec::default());
    assert_eq!(device.device_id(), "mri-01");

    let named = Device::new(
        "mri-01",
        DeviceSpec {
            device_id: Some("MRI:01@lab".into()),
            ..DeviceSpec::default()
        },
    );
    assert_eq!(named.device_id(), "MRI:01@lab");
}

#[test]
fn device_fields_use_the_documented_spelling() {
    let spec: DeviceSpec = serde_json::from_value(json!({
        "deviceId": "dev-1",
        "hubRef": { "name": "lab" },
        "mode": "STRICT",
        "authentication": {
            "provisioning": { "method": "X509", "thumbprint": "ab".repeat(20) },
            "permanent": { "method": "SAS", "secretRef": { "name": "dev-1-key", "key": "primary" } }
        },
        "tags": { "site": "lab-3" },
        "desired": { "logLevel": "debug", "upload": { "everyMinutes": 15 } }
    }))
    .expect("spec reads");

    assert_eq!(spec.mode, DeviceMode::Strict);
    let provisioning = spec
        .authentication
        .provisioning
        .as_ref()
        .expect("provisioning");
    assert_eq!(provisioning.method, AuthMethod::X509);
    assert_eq!(spec.desired["upload"], json!({ "everyMinutes": 15 }));
    let back = serde_json::to_value(&spec).expect("serializes");
    assert_eq!(
        back["authentication"]["permanent"]["secretRef"]["key"],
        "primary"
    );
}

#[test]
fn owned_desired_keys_are_the_keys_last_applied() {
    let status: DeviceStatus = serde_json::from_value(json!({
        "appliedDesired": { "logLevel": "debug", "uploadEveryMin": 15 },
        "connection": { "state": "Stale", "since": "2026-12-01T10:00:00Z" },
        "recipe": { "id": "r1", "actionPath": "changeSpec.patch.installSteps[0]", "progress": 40 }
    }))
    .expect("status reads");

    let owned: Vec<&str> = status.owned_desired_keys().collect();
    assert_eq!(owned, ["logLevel", "uploadEveryMin"]);
    let recipe = status.recipe.expect("recipe");
    assert_eq!(
        recipe.action_path.as_deref(),
        Some("changeSpec.patch.installSteps[0]")
    );
}

#[test]
fn a_hub_allows_azure_s1_twin_writes_by_default() {
    let spec: HubSpec = serde_json::from_value(json!({
        "kind": "azure",
        "endpoint": { "serviceHost": "contoso.azure-devices.net" },
        "accessPolicy": { "secretRef": { "name": "hub-policy", "key": "primaryKey" } }
    }))
    .expect("spec reads");

    assert_eq!(spec.kind, HubKind::Azure);
    assert_eq!(spec.twin_write_rate_limit, 50);
    assert_eq!(spec.access_policy.policy_name, "iothubowner");
    assert_eq!(spec.endpoint.device_host(), "contoso.azure-devices.net");
}

#[test]
fn a_rollout_without_strategy_is_one_wave_of_everyone() {
    let spec: RolloutSpec = serde_json::from_value(json!({
        "recipeRef": { "name": "fw-2-1" },
        "selector": { "matchLabels": { "site": "lab-3" } }
    }))
    .expect("spec reads");

    assert_eq!(spec.strategy.waves, [Wave::percent(100)]);
    assert!(!spec.paused);
    assert_eq!(spec.strategy.max_concurrent, None);
    assert_eq!(spec, RolloutSpec::for_label("fw-2-1", "site", "lab-3"));
}

#[test]
fn rollout_strategy_reads_durations_and_defaults() {
    let spec: RolloutSpec = serde_json::from_value(json!({
        "recipeRef": { "name": "fw" },
        "selector": {},
        "strategy": {
            "waves": [
                { "name": "canary", "count": 5, "pause": { "untilResumed": true } },
                { "percent": 50, "pause": { "duration": "1h30m" } }
            ],
            "failureThreshold": { "percent": 10 },
            "maintenanceWindow": { "schedule": "0 2 * * 6", "duration": "4h" },
            "deviceTimeout": "6h"
        }
    }))
    .expect("spec reads");

    let strategy = &spec.strategy;
    let pause = strategy.waves[1]
        .pause
        .as_ref()
        .and_then(|p| p.duration.as_ref());
    assert_eq!(
        pause.map(|d| std::time::Duration::from(*d).as_secs()),
        Some(5400)
    );
    assert_eq!(
        strategy.failure_threshold.as_ref().map(|t| t.action),
        Some(FailureAction::Pause)
    );
    let window: &MaintenanceWindow = strategy.maintenance_window.as_ref().expect("window");
    assert_eq!(window.time_zone, "UTC");
    let timeout = strategy
        .device_timeout
        .map(|d| std::time::Duration::from(d).as_secs());
    assert_eq!(timeout, Some(6 * 3600));
}

#[test]
fn a_new_rollout_status_reads_as_pending_with_zero_counts() {
    let status: RolloutStatus = serde_json::from_value(json!({})).expect("empty status reads");
    assert_eq!(status.phase, RolloutPhase::Pending);
    assert_eq!(status.counts, DeviceCounts::default());

    let written = serde_json::to_value(&status).expect("serializes");
    assert_eq!(
        written["counts"]["succeeded"], 0,
        "printer columns show 0, not blank"
    );
}

#[test]
fn counts_add_up_by_phase() {
    use DeviceRolloutPhase::*;
    let counts: DeviceCounts = [
        Succeeded,
        Succeeded,
        Failed,
        Deferred,
        InProgress,
        Unreachable,
    ]
    .into_iter()
    .collect();

    assert_eq!(counts.total, 6);
    assert_eq!(counts.succeeded, 2);
    assert_eq!(counts.deferred, 1);
    assert_eq!(
        counts.in_flight(),
        2,
        "in progress and unreachable hold a slot"
    );
    assert_eq!(counts.finished(), 3);
    assert!(
        !Deferred.is_in_flight(),
        "deferred devices never hold a slot"
    );
    assert!(Failed.is_finished());
}
