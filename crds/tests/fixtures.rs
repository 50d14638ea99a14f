//! The recipe fixtures from the field read into a `RecipeSpec` and come back unchanged.
use cloudpillar_crds::RecipeSpec;
use cloudpillar_protocol::fixtures;
use serde_json::{Value, json};

fn fixture_change_spec(file: &str, pointer: &str) -> Value {
    let path = fixtures::path(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading fixture {} (set CLOUDPILLAR_FIXTURES): {e}",
            path.display()
        )
    });
    let document: Value = serde_json::from_str(&text).expect("fixture is JSON");
    document
        .pointer(pointer)
        .cloned()
        .expect("fixture has a changeSpec")
}

fn round_trip(change_spec: &Value) -> Value {
    let spec: RecipeSpec = serde_json::from_value(json!({ "changeSpec": change_spec }))
        .expect("fixture reads as a RecipeSpec");
    serde_json::to_value(&spec).expect("spec serializes")
}

#[test]
fn windows_update_fixture_round_trips_unchanged() {
    let raw = fixture_change_spec("windows-update-recipe.json", "/changeSpec");
    let back = round_trip(&raw);

    assert_eq!(back["changeSpec"], raw);
    let first_step = &back["changeSpec"]["patch"]["preTransitConfig"][0];
    assert!(
        first_step.get("action").is_none(),
        "no action is added to shell steps"
    );
}

#[test]
fn security_update_fixture_round_trips_unchanged() {
    let raw = fixture_change_spec("security-update-desired.json", "/desired/changeSpec");
    assert_eq!(round_trip(&raw)["changeSpec"], raw);
}

#[test]
fn the_typed_view_finds_the_fixture_steps() {
    use cloudpillar_crds::recipe::{ActionKind, Stage};

    let raw = fixture_change_spec("security-update-desired.json", "/desired/changeSpec");
    let spec: RecipeSpec =
        serde_json::from_value(json!({ "changeSpec": raw })).expect("fixture reads");
    let patch = spec
        .change_spec
        .section("patch")
        .expect("fixture has a patch section");
    let downloads: Vec<&str> = patch
        .stage(Stage::TransitPackage)
        .iter()
        .filter(|step| step.kind() == Some(ActionKind::SingularDownload))
        .filter_map(|step| step.source.as_deref())
        .collect();

    assert_eq!(downloads, ["mcaffeeV3_5150dat.zip", "SPU.zip"]);
}
