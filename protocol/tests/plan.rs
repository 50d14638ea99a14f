//! Recipes read for running on a device: plans, section order and zone variables.

use cloudpillar_protocol::fixtures;
use cloudpillar_protocol::recipe::{
    ChangeSpec, Plan, PlanError, Stage, Step, StepError, ZoneExpandError, ZoneSyntaxError,
    action_paths, expand_zone_variables, is_zone_name, section_order,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures::path(name)).expect("fixture readable")
}

fn plan_of(bytes: &[u8], pointer: &[&str]) -> Plan {
    let doc: Value = serde_json::from_slice(bytes).expect("json");
    let spec = pointer.iter().fold(&doc, |value, key| &value[*key]);
    let order = section_order(bytes, pointer).expect("order");
    Plan::from_value(spec, Some(&order)).expect("plan")
}

#[test]
fn windows_fixture_plans_ten_shell_steps_in_run_order() {
    let plan = plan_of(&fixture("windows-update-recipe.json"), &["changeSpec"]);
    assert_eq!(plan.id, "1.14.61047.38115.20230418180125");
    let paths: Vec<String> = plan.steps().map(|step| step.path()).collect();
    assert_eq!(paths.len(), 10);
    assert_eq!(paths[0], "changeSpec.patch.preTransitConfig[0]");
    assert_eq!(paths[4], "changeSpec.patch.transitPackage[0]");
    assert_eq!(paths[9], "changeSpec.patch.postInstallConfig[1]");
    let fourth = plan.steps().nth(3).expect("fourth step");
    let Ok(Step::Shell(shell)) = fourth.step else {
        panic!("a shell step: {:?}", fourth.step);
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
fn fixtures_plan_the_same_steps_the_typed_view_reads() {
    for (name, pointer) in [
        ("windows-update-recipe.json", &["changeSpec"][..]),
        (
            "security-update-desired.json",
            &["desired", "changeSpec"][..],
        ),
    ] {
        let bytes = fixture(name);
        let plan = plan_of(&bytes, pointer);
        let doc: Value = serde_json::from_slice(&bytes).expect("json");
        let spec = pointer.iter().fold(&doc, |value, key| &value[*key]);
        let typed = ChangeSpec::from_value(spec.clone()).expect("typed view");
        let typed_steps: Vec<(String, Result<Step, StepError>)> = action_paths(&typed)
            .map(|(path, action)| (path, Step::from_action(action)))
            .collect();
        let planned: Vec<(String, Result<Step, StepError>)> = plan
            .steps()
            .map(|step| (step.path(), step.step.clone()))
            .collect();
        assert_eq!(planned, typed_steps, "{name}");
        assert!(planned.iter().all(|(_, step)| step.is_ok()), "{name}");
    }
}

#[test]
fn security_fixture_plans_its_transfers_with_their_members() {
    let plan = plan_of(
        &fixture("security-update-desired.json"),
        &["desired", "changeSpec"],
    );
    let steps: Vec<_> = plan.steps().collect();
    let Ok(Step::PeriodicUpload(upload)) = steps[0].step else {
        panic!("periodic upload first");
    };
    assert_eq!(upload.filename, "I:\\ExportedData_2023.05.*");
    assert_eq!((upload.interval_secs, upload.enabled), (120, true));
    let Ok(Step::Download(download)) = steps[1].step else {
        panic!("download second");
    };
    assert_eq!(download.rewind, Some(33_554_432));
    assert!(download.allows("https") && download.allows("iotmqtt"));
    assert!(!download.allows("ftp") && !download.allows("http"));
    let Ok(Step::Download(signed)) = steps[2].step else {
        panic!("signed download third");
    };
    assert!(
        signed
            .sign
            .as_deref()
            .is_some_and(|s| s.starts_with("AauR"))
    );
}

#[test]
fn sections_follow_the_delivering_text_and_stages_the_contract() {
    let text =
        br#"{"changeSpec":{"id":"r1","patch":{"postInstallConfig":[{"shell":"sh","command":"c"}],
        "preTransitConfig":[{"shell":"sh","command":"a"}]},"base":{"installSteps":[]}}}"#;
    let plan = plan_of(text, &["changeSpec"]);
    let names: Vec<&str> = plan.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["patch", "base"]);
    let stages: Vec<Stage> = plan.steps().map(|step| step.stage).collect();
    assert_eq!(stages, [Stage::PreTransitConfig, Stage::PostInstallConfig]);
    assert_eq!(
        plan.sections[1].stages,
        [(Stage::InstallSteps, vec![])],
        "an empty stage the text lists is kept"
    );
    let reordered = Plan::from_value(
        &json!({"id": "r", "a": {}, "b": {}, "c": {}}),
        Some(&["c".to_owned(), "zz".to_owned()]),
    )
    .expect("plan");
    let names: Vec<&str> = reordered.sections.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["c", "a", "b"]);
}

#[test]
fn section_order_reads_nested_objects_and_refuses_what_is_not_there() {
    let text = br#"{"desired":{"changeSpec":{"id":"x","zeta":{},"alpha":{}}}}"#;
    assert_eq!(
        section_order(text, &["desired", "changeSpec"]),
        Some(vec!["id".to_owned(), "zeta".to_owned(), "alpha".to_owned()])
    );
    assert_eq!(section_order(text, &["changeSpec"]), None);
    assert_eq!(section_order(text, &["desired", "changeSpec", "id"]), None);
    assert_eq!(section_order(b"not json", &[]), None);
}

#[test]
fn a_broken_shape_refuses_the_whole_plan() {
    assert_eq!(
        Plan::from_value(&json!({"patch": {}}), None),
        Err(PlanError::MissingId)
    );
    assert_eq!(
        Plan::from_value(&json!([1]), None),
        Err(PlanError::NotAnObject)
    );
    let unknown_stage = Plan::from_value(&json!({"id": "x", "patch": {"install": []}}), None);
    assert_eq!(
        unknown_stage.map_err(|e| e.to_string()),
        Err("changeSpec section \"patch\": unknown stage \"install\"".to_owned())
    );
    let not_a_list = Plan::from_value(&json!({"id": "x", "patch": {"installSteps": {}}}), None);
    assert!(matches!(not_a_list, Err(PlanError::BadSection { .. })));
    let misspelled = json!({"id": "x", "patch": {"transitPackage": [
        {"action": "singularDownload", "source": "a", "destinationPath": "./a"},
        {"action": "singularDownload", "sorce": "b", "destinationPath": "./b"}]}});
    assert_eq!(
        Plan::from_value(&misspelled, None).map_err(|e| e.to_string()),
        Err("changeSpec.patch.transitPackage[1].sorce: unknown field \"sorce\"".to_owned())
    );
    assert_eq!(
        Plan::from_value(&json!({"id": "", "patch": {}}), None),
        Err(PlanError::EmptyId)
    );
    // A member of the wrong type refuses the recipe before its first step runs.
    let wrong_type = json!({"id": "x", "patch": {"installSteps": [
        {"shell": "bash", "command": "true"},
        {"shell": "bash", "command": "true", "timeout": -1}]}});
    match Plan::from_value(&wrong_type, None) {
        Err(PlanError::UnreadableStep { path, .. }) => {
            assert_eq!(path, "changeSpec.patch.installSteps[1]");
        }
        other => panic!("expected the step refused up front, got {other:?}"),
    }
}

#[test]
fn every_field_of_a_step_is_a_known_field() {
    let full = cloudpillar_protocol::recipe::Action {
        action: Some(cloudpillar_protocol::recipe::ActionKind::ExecuteOnce),
        description: Some(String::new()),
        shell: Some(String::new()),
        command: Some(String::new()),
        on_pause: Some(String::new()),
        on_resume: Some(String::new()),
        success_codes: Some(vec![]),
        timeout: Some(1),
        source: Some(String::new()),
        protocol: Some(String::new()),
        destination_path: Some(String::new()),
        sign: Some(String::new()),
        retransmission_rewind: Some(1),
        filename: Some(String::new()),
        interval: Some(1),
        enabled: Some(true),
    };
    let value = serde_json::to_value(&full).expect("json");
    let mut members: Vec<&str> = value
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut known = cloudpillar_protocol::recipe::ACTION_FIELDS.to_vec();
    members.sort_unstable();
    known.sort_unstable();
    assert_eq!(members, known);
}

#[test]
fn a_step_that_cannot_run_keeps_its_place_with_the_reason() {
    let spec = json!({"id": "x", "patch": {"installSteps": [
        {"shell": "bash", "command": "true"},
        {"action": "reboot"},
        {"action": "executeOnce", "shell": "bash"},
        {"action": "singularUpload", "filename": "a.log"},
        {"description": "nothing to do"},
        "echo"
    ]}});
    let plan = Plan::from_value(&spec, None).expect("plan");
    let texts: Vec<String> = plan
        .steps()
        .map(|step| match step.step {
            Ok(_) => "ok".to_owned(),
            Err(error) => error.to_string(),
        })
        .collect();
    assert_eq!(texts[0], "ok");
    assert_eq!(texts[1], "unknown action \"reboot\"");
    assert_eq!(texts[2], "executeOnce without shell and command");
    assert_eq!(texts[3], "singularUpload does not run on a device");
    assert_eq!(texts[4], "step names no action");
    assert_eq!(texts[5], "step names no action");
}

#[test]
fn defaults_fill_what_a_runnable_step_may_leave_out() {
    let spec = json!({"id": "x", "p": {"transitPackage": [
        {"action": "singularDownload", "source": "a.zip", "destinationPath": "a.zip"},
        {"action": "periodicUpload", "filename": "*.log"}
    ]}});
    let plan = Plan::from_value(&spec, None).expect("plan");
    let steps: Vec<_> = plan.steps().map(|step| step.step.clone()).collect();
    let Ok(Step::Download(download)) = &steps[0] else {
        panic!("download");
    };
    assert_eq!(download.protocol, "iotmqtt");
    assert!(download.allows("iotmqtt") && !download.allows("https"));
    let Ok(Step::PeriodicUpload(upload)) = &steps[1] else {
        panic!("upload");
    };
    assert_eq!((upload.interval_secs, upload.enabled), (600, true));
}

#[test]
fn zone_variables_expand_to_their_roots() {
    let root = |name: &str| (name == "LogUploadAllow").then(|| "/var/log/app".to_owned());
    assert_eq!(
        expand_zone_variables("${LogUploadAllow}/x/${LogUploadAllow}.log", root),
        Ok("/var/log/app/x//var/log/app.log".to_owned())
    );
    assert_eq!(
        expand_zone_variables("$HOME/plain", root),
        Ok("$HOME/plain".to_owned())
    );
    assert_eq!(
        expand_zone_variables("${Nope}/x", root),
        Err(ZoneExpandError::UnknownZone {
            name: "Nope".to_owned()
        })
    );
    assert_eq!(
        expand_zone_variables("a/${Log/x", root),
        Err(ZoneExpandError::Syntax(ZoneSyntaxError::Unclosed {
            offset: 2
        }))
    );
    assert_eq!(
        expand_zone_variables("${a b}", root),
        Err(ZoneExpandError::Syntax(ZoneSyntaxError::BadName {
            offset: 0
        }))
    );
}

#[test]
fn zone_names_start_with_a_letter_or_underscore() {
    assert!(is_zone_name("LogUploadAllow") && is_zone_name("_x1"));
    assert!(!is_zone_name("1abc") && !is_zone_name("") && !is_zone_name("a-b"));
}
