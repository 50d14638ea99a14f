//! Reported state and per-step progress: the reported-sample fixture.

use cloudpillar_protocol::fixtures;
use cloudpillar_protocol::recipe::ChangeSpec;
use cloudpillar_protocol::reported::{
    DeviceState, Reported, ReportedChangeSpec, StepReport, StepStatus,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures::path(name)).expect("fixture readable");
    serde_json::from_str(&text).expect("fixture is JSON")
}

#[test]
fn reported_sample_round_trips_exactly() {
    let sample = fixture("reported-sample.json");
    let reported: Reported = serde_json::from_value(sample["reported"].clone()).expect("parses");
    assert_eq!(reported.device_state, Some(DeviceState::Ready));
    assert_eq!(
        serde_json::to_value(&reported).expect("serializes"),
        sample["reported"]
    );
}

#[test]
fn reported_sample_reads_into_typed_steps() {
    let sample = fixture("reported-sample.json");
    let spec: ReportedChangeSpec =
        serde_json::from_value(sample["reported"]["changeSpec"].clone()).expect("parses");
    assert_eq!(spec.id, "1.14.61047.38115.20230418180125");
    assert_eq!(spec.status, Some(StepStatus::InProgress));
    assert_eq!(
        spec.action_path.as_deref(),
        Some("changeSpec.patch.postInstallConfig[1]")
    );
    assert_eq!(spec.last_faulted_recipe.as_deref(), Some("patch"));
    assert_eq!(
        spec.last_faulted_path.as_deref(),
        Some("changeSpec.patch.transitPackage[1]")
    );
    let names: Vec<&str> = spec
        .sections
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"patch") && names.contains(&"base"));

    let transit = &spec
        .sections
        .iter()
        .find(|(n, _)| n == "patch")
        .expect("patch")
        .1;
    let streamed = &transit.transit_package[1];
    assert_eq!(streamed.progress, Some(100));
    assert_eq!(streamed.result_code.as_deref(), Some("FinishedTransit"));
    assert_eq!(spec.steps().count(), 10 + 3);
}

#[test]
fn device_states_use_the_contract_spelling() {
    let spelled: Vec<Value> = DeviceState::ALL.iter().map(|s| json!(s)).collect();
    assert_eq!(
        spelled,
        [
            "PROVISIONING",
            "READY",
            "BUSY",
            "PATCH_INTRANSIT",
            "PATCH_READY",
            "PATCH_WAITCONFIRM",
            "PATCH_APPLYING",
            "UPDATE_INTRANSIT",
            "UPDATE_READY",
            "UPDATE_WAITCONFIRM",
            "UPDATE_APPLYING",
            "UPLOAD_INTRANSIT",
            "ACTION_INPROGRESS"
        ]
    );
    for state in DeviceState::ALL {
        assert_eq!(json!(state), json!(state.as_str()));
        assert_eq!(
            serde_json::from_value::<DeviceState>(json!(state.as_str())).ok(),
            Some(state)
        );
    }
    assert!(serde_json::from_value::<DeviceState>(json!("PATCH_IN_TRANSIT")).is_err());
}

#[test]
fn step_statuses_use_the_sample_spelling() {
    let statuses = [
        StepStatus::Pending,
        StepStatus::InProgress,
        StepStatus::Success,
        StepStatus::Failure,
        StepStatus::Skipped,
        StepStatus::Cancelled,
    ];
    let spelled: Vec<Value> = statuses.iter().map(|s| json!(s)).collect();
    assert_eq!(
        spelled,
        [
            "Pending",
            "InProgress",
            "Success",
            "Failure",
            "Skipped",
            "Cancelled"
        ]
    );
    for status in statuses {
        assert_eq!(json!(status), json!(status.as_str()));
    }
    assert!(!StepStatus::InProgress.is_final() && StepStatus::Cancelled.is_final());
}

#[test]
fn pending_report_mirrors_the_recipe_and_steps_update_by_path() {
    let text = std::fs::read_to_string(fixtures::path("windows-update-recipe.json"))
        .expect("fixture readable");
    let raw: Value = serde_json::from_str(&text).expect("json");
    let spec = ChangeSpec::from_value(raw["changeSpec"].clone()).expect("recipe");
    let mut report = ReportedChangeSpec::pending_for(&spec);
    assert_eq!(report.steps().count(), 10);
    assert!(
        report
            .steps()
            .all(|(_, step)| step.status == StepStatus::Pending)
    );

    let path = "changeSpec.patch.transitPackage[1]";
    *report.step_mut(path).expect("step exists") =
        StepReport::finished(StepStatus::Failure, "integrity_mismatch", "hash differs");
    assert!(
        report
            .step_mut("changeSpec.patch.transitPackage[2]")
            .is_none()
    );
    assert!(
        report
            .step_mut("changeSpec.base.transitPackage[0]")
            .is_none()
    );

    let value = serde_json::to_value(&report).expect("serializes");
    assert_eq!(
        value["patch"]["transitPackage"][1],
        json!({"status": "Failure", "ResultCode": "integrity_mismatch",
               "ResultText": "hash differs"})
    );
    assert_eq!(
        value["patch"]["preTransitConfig"][0],
        json!({"status": "Pending"})
    );
    let back: ReportedChangeSpec = serde_json::from_value(value).expect("reads back");
    assert_eq!(back, report);
}
