use serde_json::{Value, json};

use super::journal::{Journal, RecipeSource, RecipeStatus, Run};
use super::outcome::StepOutcome;
use super::recipe::*;
use super::report;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/recipes")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn windows_fixture_parses_into_ordered_shell_steps() {
    let bytes = fixture("windows-update-recipe.json");
    let doc: Value = serde_json::from_slice(&bytes).expect("json");
    let order = section_order(&bytes, &["changeSpec"]).expect("order");
    let recipe = Recipe::from_change_spec(&doc["changeSpec"], Some(&order)).expect("recipe");
    assert_eq!(recipe.id, "1.14.61047.38115.20230418180125");
    let steps: Vec<String> = recipe.steps().map(|(p, ..)| p).collect();
    assert_eq!(steps.len(), 10);
    assert_eq!(steps[0], "changeSpec.patch.preTransitConfig[0]");
    assert_eq!(steps[4], "changeSpec.patch.transitPackage[0]");
    assert_eq!(steps[9], "changeSpec.patch.postInstallConfig[1]");
    let (_, _, _, fourth) = recipe.steps().nth(3).expect("step");
    let Action::ExecuteOnce(shell) = fourth else {
        panic!("shell step")
    };
    assert_eq!(shell.shell, "powershell");
    assert!(
        shell
            .on_pause
            .as_deref()
            .is_some_and(|p| p.starts_with("Net stop wuauserv"))
    );
    assert_eq!(shell.on_resume.as_deref(), Some("Net start wuauserv"));
}

#[test]
fn sections_run_in_document_order_not_sorted() {
    let text =
        br#"{"changeSpec":{"id":"r1","patch":{"installSteps":[{"shell":"bash","command":"true"}]},
        "base":{"installSteps":[{"shell":"bash","command":"true"}]}}}"#;
    let doc: Value = serde_json::from_slice(text).expect("json");
    let order = section_order(text, &["changeSpec"]).expect("order");
    let recipe = Recipe::from_change_spec(&doc["changeSpec"], Some(&order)).expect("recipe");
    let names: Vec<&str> = recipe.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["patch", "base"]);
}

#[test]
fn stages_run_in_contract_order_whatever_the_text_order() {
    let spec = json!({"id": "r", "patch": {
        "postInstallConfig": [{"shell": "bash", "command": "c"}],
        "preTransitConfig": [{"shell": "bash", "command": "a"}],
        "installSteps": [{"shell": "bash", "command": "b"}]}});
    let recipe = Recipe::from_change_spec(&spec, None).expect("recipe");
    let stages: Vec<&str> = recipe.steps().map(|(_, _, stage, _)| stage).collect();
    assert_eq!(
        stages,
        ["preTransitConfig", "installSteps", "postInstallConfig"]
    );
}

#[test]
fn bad_recipes_are_refused_with_a_reason() {
    assert_eq!(
        Recipe::from_change_spec(&json!({"patch": {}}), None),
        Err(RecipeError::MissingId)
    );
    let err = Recipe::from_change_spec(&json!({"id": "x", "patch": {"install": []}}), None);
    assert!(matches!(err, Err(RecipeError::BadSection { .. })));
    let unknown = json!({"id": "x", "patch": {"installSteps": [{"action": "reboot"}]}});
    let recipe = Recipe::from_change_spec(&unknown, None).expect("parses");
    assert_eq!(
        recipe.sections[0].stages[0].1[0],
        Action::Unknown("unknown action \"reboot\"".into())
    );
}

fn run_for(recipe: &Recipe) -> Run {
    Run {
        id: recipe.id.clone(),
        source: RecipeSource::Local,
        spec: Value::Null,
        order: vec![],
        steps: Default::default(),
        status: RecipeStatus::InProgress,
        reason: None,
        last_faulted_recipe: None,
        last_faulted_path: None,
    }
}

#[test]
fn reported_changespec_matches_the_field_format() {
    let bytes = fixture("windows-update-recipe.json");
    let doc: Value = serde_json::from_slice(&bytes).expect("json");
    let recipe = Recipe::from_change_spec(&doc["changeSpec"], None).expect("recipe");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = Journal::open(dir.path()).expect("journal");
    journal.start(run_for(&recipe)).expect("start");
    journal
        .record_step(
            "changeSpec.patch.preTransitConfig[0]",
            StepOutcome::succeeded("0", "ok"),
        )
        .expect("record");
    journal
        .record_step(
            "changeSpec.patch.preTransitConfig[1]",
            StepOutcome::failed(
                "shell_missing",
                "shell \"powershell\" is not installed on this device",
            ),
        )
        .expect("record");
    journal.finish(RecipeStatus::Failure, None).expect("finish");
    let run = journal.current().expect("run");
    let reported = report::build(run, Some(&recipe), None, &Default::default());
    assert_eq!(reported["id"], "1.14.61047.38115.20230418180125");
    assert_eq!(
        reported["patch"]["preTransitConfig"][0],
        json!({"status": "Success", "ResultCode": "0", "ResultText": "ok"})
    );
    assert_eq!(
        reported["patch"]["preTransitConfig"][1]["status"],
        "Failure"
    );
    assert_eq!(
        reported["patch"]["preTransitConfig"][2],
        json!({"status": "Pending"})
    );
    assert_eq!(
        reported["actionPath"],
        "changeSpec.patch.preTransitConfig[1]"
    );
    assert_eq!(reported["Status"], "Failure");
    assert_eq!(reported["lastFaultedRecipe"], "patch");
    assert_eq!(
        reported["lastFaultedPath"],
        "changeSpec.patch.preTransitConfig[1]"
    );
}

#[test]
fn f06_oversized_report_keeps_step_summaries_instead_of_failing() {
    let steps: Vec<Value> = (0..400)
        .map(|i| json!({"shell": "bash", "command": format!("echo {i}")}))
        .collect();
    let spec = json!({"id": "big", "patch": {"installSteps": steps}});
    let recipe = Recipe::from_change_spec(&spec, None).expect("recipe");
    let mut run = run_for(&recipe);
    for i in 0..400 {
        run.steps.insert(
            action_path("patch", "installSteps", i),
            StepOutcome::succeeded("0", "x".repeat(200)),
        );
    }
    let reported = report::build(&run, Some(&recipe), None, &Default::default());
    assert_eq!(
        reported["patch"]["installSteps"],
        json!({"summary": {"Success": 400}})
    );
    let wrapped = json!({"changeSpec": reported});
    assert!(cloudpillar_protocol::limits::twin_size(&wrapped) < 32 * 1024);
}

#[test]
fn journal_remembers_ended_recipes_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let recipe = Recipe::from_change_spec(&json!({"id": "a", "p": {}}), None).expect("recipe");
    let mut journal = Journal::open(dir.path()).expect("journal");
    journal.start(run_for(&recipe)).expect("start");
    journal
        .record_step(
            "changeSpec.p.installSteps[0]",
            StepOutcome::succeeded("0", ""),
        )
        .expect("rec");
    journal.finish(RecipeStatus::Success, None).expect("finish");
    let mut second = run_for(&recipe);
    second.id = "b".into();
    journal.start(second).expect("supersede");
    let reopened = Journal::open(dir.path()).expect("reopen");
    assert_eq!(reopened.status_of("a"), Some(RecipeStatus::Success));
    assert_eq!(reopened.status_of("b"), Some(RecipeStatus::InProgress));
    assert_eq!(reopened.status_of("c"), None);
}
