//! The recipe fixtures from the field read into the typed `changeSpec` and come back unchanged.

use std::path::PathBuf;

use cloudpillar_crds::recipe::{ActionKind, ChangeSpec, Stage};
use serde_json::Value;

/// Directory of the field recipe fixtures: `CLOUDPILLAR_FIXTURES`, or `shared/fixtures/recipes`
/// next to the repository.
fn fixtures_dir() -> PathBuf {
    std::env::var_os("CLOUDPILLAR_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/recipes"),
        PathBuf::from,
    )
}

fn fixture_change_spec(file: &str, pointer: &str) -> Value {
    let path = fixtures_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading fixture {} (set CLOUDPILLAR_FIXTURES): {e}", path.display()));
    let document: Value = serde_json::from_str(&text).expect("fixture is JSON");
    document.pointer(pointer).cloned().expect("fixture has a changeSpec")
}

#[test]
fn windows_update_fixture_round_trips_unchanged() {
    let raw = fixture_change_spec("windows-update-recipe.json", "/changeSpec");
    let typed: ChangeSpec = serde_json::from_value(raw.clone()).expect("fixture fits the model");

    assert_eq!(typed.id, "1.14.61047.38115.20230418180125");
    assert_eq!(serde_json::to_value(&typed).expect("serializes"), raw);
}

#[test]
fn security_update_fixture_round_trips_unchanged() {
    let raw = fixture_change_spec("security-update-desired.json", "/desired/changeSpec");
    let typed: ChangeSpec = serde_json::from_value(raw.clone()).expect("fixture fits the model");

    assert_eq!(serde_json::to_value(&typed).expect("serializes"), raw);
}

#[test]
fn shell_steps_without_an_action_are_execute_once() {
    let raw = fixture_change_spec("windows-update-recipe.json", "/changeSpec");
    let typed: ChangeSpec = serde_json::from_value(raw).expect("fixture fits the model");
    let patch = typed.patch.expect("fixture has a patch section");

    let first = &patch[&Stage::PreTransitConfig][0];
    assert_eq!(first.action, None, "the field stays absent, as written");
    assert_eq!(first.kind(), ActionKind::ExecuteOnce);
    assert_eq!(patch[&Stage::TransitPackage][1].kind(), ActionKind::SingularDownload);
}

#[test]
fn stages_iterate_in_run_order_whatever_the_written_order() {
    let raw = fixture_change_spec("windows-update-recipe.json", "/changeSpec");
    let mut shuffled = raw.clone();
    let patch = shuffled["patch"].as_object_mut().expect("patch is an object");
    let install = patch.remove("installSteps").expect("has installSteps");
    let mut reordered = serde_json::Map::new();
    reordered.insert("installSteps".into(), install);
    reordered.append(patch);
    shuffled["patch"] = Value::Object(reordered);

    let typed: ChangeSpec = serde_json::from_value(shuffled).expect("fixture fits the model");
    let order: Vec<Stage> = typed.patch.expect("patch").into_keys().collect();
    assert_eq!(
        order,
        [
            Stage::PreTransitConfig,
            Stage::TransitPackage,
            Stage::PreInstallConfig,
            Stage::InstallSteps,
            Stage::PostInstallConfig
        ]
    );
}

#[test]
fn an_unknown_stage_does_not_read_as_a_recipe() {
    let raw = serde_json::json!({
        "id": "x",
        "patch": { "installStepz": [{ "shell": "bash", "command": "true" }] }
    });
    let error = serde_json::from_value::<ChangeSpec>(raw).expect_err("unknown stage accepted");
    assert!(error.to_string().contains("installStepz"), "{error}");
}

#[test]
fn an_unknown_action_does_not_read_as_a_recipe() {
    let raw = serde_json::json!({
        "id": "x",
        "patch": { "installSteps": [{ "action": "rebootNow" }] }
    });
    let error = serde_json::from_value::<ChangeSpec>(raw).expect_err("unknown action accepted");
    assert!(error.to_string().contains("rebootNow"), "{error}");
}
