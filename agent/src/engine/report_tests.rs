use cloudpillar_protocol::recipe::{Plan, Stage, action_path};
use serde_json::{Value, json};

use super::journal::{Journal, RecipeSource, RecipeStatus, Run};
use super::outcome::StepOutcome;
use super::report;
use crate::fixtures::read as fixture;

fn run_for(plan: &Plan) -> Run {
    Run {
        id: plan.id.clone(),
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
    let plan = Plan::from_value(&doc["changeSpec"], None).expect("plan");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = Journal::open(dir.path()).expect("journal");
    journal.start(run_for(&plan)).expect("start");
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
    let reported = report::build(run, Some(&plan), None, &Default::default());
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
    let plan = Plan::from_value(&spec, None).expect("plan");
    let mut run = run_for(&plan);
    for i in 0..400 {
        run.steps.insert(
            action_path("patch", Stage::InstallSteps, i),
            StepOutcome::succeeded("0", "x".repeat(200)),
        );
    }
    let reported = report::build(&run, Some(&plan), None, &Default::default());
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
    let plan = Plan::from_value(&json!({"id": "a", "p": {}}), None).expect("plan");
    let mut journal = Journal::open(dir.path()).expect("journal");
    journal.start(run_for(&plan)).expect("start");
    journal
        .record_step(
            "changeSpec.p.installSteps[0]",
            StepOutcome::succeeded("0", ""),
        )
        .expect("rec");
    journal.finish(RecipeStatus::Success, None).expect("finish");
    let mut second = run_for(&plan);
    second.id = "b".into();
    journal.start(second).expect("supersede");
    let reopened = Journal::open(dir.path()).expect("reopen");
    assert_eq!(reopened.status_of("a"), Some(RecipeStatus::Success));
    assert_eq!(reopened.status_of("b"), Some(RecipeStatus::InProgress));
    assert_eq!(reopened.status_of("c"), None);
}
