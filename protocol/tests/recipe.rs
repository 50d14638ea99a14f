//! Recipe model, validation and line endings: fixtures and field cases F05, F06, F19.

use cloudpillar_protocol::fixtures;
use cloudpillar_protocol::recipe::{
    ActionKind, ChangeSpec, Issue, action_paths, has_crlf_in_bash, normalize_crlf, validate,
    zone_variables,
};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Wrapped {
    #[serde(rename = "changeSpec")]
    change_spec: ChangeSpec,
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixtures::path(name)).expect("fixture readable")
}

fn windows_recipe() -> (ChangeSpec, Value) {
    let text = fixture_text("windows-update-recipe.json");
    let wrapped: Wrapped = serde_json::from_str(&text).expect("fixture parses");
    let raw: Value = serde_json::from_str(&text).expect("json");
    (wrapped.change_spec, raw["changeSpec"].clone())
}

fn paths(issues: &[Issue]) -> Vec<&str> {
    issues.iter().map(|issue| issue.path.as_str()).collect()
}

fn spec_with(action: Value) -> Value {
    json!({"id": "r-1", "patch": {"transitPackage": [action]}})
}

#[test]
fn windows_fixture_reads_as_is_and_validates_clean() {
    let (spec, raw) = windows_recipe();
    assert_eq!(spec.id, "1.14.61047.38115.20230418180125");
    let patch = spec.section("patch").expect("patch section");
    assert!(
        patch
            .pre_transit_config
            .iter()
            .all(|a| a.kind() == Some(ActionKind::ExecuteOnce))
    );
    assert_eq!(
        patch.transit_package[1].kind(),
        Some(ActionKind::SingularDownload)
    );
    assert_eq!(validate(&raw), vec![]);
    assert_eq!(serde_json::to_value(&spec).expect("serializes"), raw);
}

#[test]
fn actions_come_in_execution_order_with_their_paths() {
    let (spec, _) = windows_recipe();
    let found: Vec<String> = action_paths(&spec).map(|(path, _)| path).collect();
    let expected: Vec<String> = [
        ("preTransitConfig", 4),
        ("transitPackage", 2),
        ("preInstallConfig", 1),
        ("installSteps", 1),
        ("postInstallConfig", 2),
    ]
    .iter()
    .flat_map(|(stage, count)| (0..*count).map(move |i| format!("changeSpec.patch.{stage}[{i}]")))
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn sections_keep_document_order_and_stages_keep_fixed_order() {
    let text = r#"{"id":"r","base":{"installSteps":[{"shell":"sh","command":"b2"}],
        "preTransitConfig":[{"shell":"sh","command":"b1"}]},
        "patch":{"preTransitConfig":[{"shell":"sh","command":"p1"}]}}"#;
    let spec = ChangeSpec::from_json(text).expect("parses");
    let order: Vec<(String, Option<String>)> = action_paths(&spec)
        .map(|(path, action)| (path, action.command.clone()))
        .collect();
    assert_eq!(
        order,
        [
            (
                "changeSpec.base.preTransitConfig[0]".to_owned(),
                Some("b1".to_owned())
            ),
            (
                "changeSpec.base.installSteps[0]".to_owned(),
                Some("b2".to_owned())
            ),
            (
                "changeSpec.patch.preTransitConfig[0]".to_owned(),
                Some("p1".to_owned())
            ),
        ]
    );
}

#[test]
fn unknown_members_round_trip_unchanged() {
    let raw = json!({"id": "r", "note": "kept", "patch": {"installSteps": [
        {"shell": "bash", "command": "true", "vendorHint": {"x": [1, 2]}}
    ]}});
    let spec = ChangeSpec::from_value(raw.clone()).expect("parses");
    assert_eq!(serde_json::to_value(&spec).expect("serializes"), raw);
    assert_eq!(spec.as_value(), &raw);
}

#[test]
fn typed_view_refuses_unknown_stages_and_actions_naming_the_section() {
    let bad_stage = json!({"id": "r", "patch": {"install": []}});
    let error = ChangeSpec::from_value(bad_stage).expect_err("unknown stage");
    assert!(
        format!("{error:?}").contains("changeSpec.patch"),
        "{error:?}"
    );
    assert!(ChangeSpec::from_value(spec_with(json!({"action": "reboot"}))).is_err());
    assert!(ChangeSpec::from_value(json!({"patch": {}})).is_err());
}

#[test]
fn security_fixture_with_windows_paths_validates_clean() {
    let text = fixture_text("security-update-desired.json");
    let desired: Value = serde_json::from_str(&text).expect("json");
    let spec = &desired["desired"]["changeSpec"];
    assert_eq!(validate(spec), vec![]);
    let typed = ChangeSpec::from_value(spec.clone()).expect("typed view");
    let upload = &typed.section("patch").expect("patch").transit_package[0];
    assert_eq!(
        upload.filename.as_deref(),
        Some("I:\\ExportedData_2023.05.*")
    );
}

#[test]
fn destination_paths_must_stay_inside_their_directory_or_zone() {
    let refused = [
        "../etc/passwd",
        "a/../../b",
        "a\\..\\b",
        "/etc/cron.d/x",
        "\\Windows\\x",
        "I:\\update.zip",
        "c:/update.zip",
        "\\\\server\\share\\x",
        "${Zone}/../../x",
        "${Bad-Name}/x",
        "${Unclosed/x",
        "",
    ];
    for destination in refused {
        let spec = spec_with(json!({"action": "singularDownload", "source": "s",
            "destinationPath": destination}));
        let issues = validate(&spec);
        assert_eq!(
            paths(&issues),
            ["changeSpec.patch.transitPackage[0].destinationPath"],
            "{destination:?}: {issues:?}"
        );
    }
    for destination in [
        "./a.zip",
        "sub\\dir\\a.zip",
        "${DownloadZone}/fw/a.zip",
        "a..b/c..",
        "${Z}\\x",
    ] {
        let spec = spec_with(json!({"action": "singularDownload", "source": "s",
            "destinationPath": destination}));
        assert_eq!(validate(&spec), vec![], "{destination:?}");
    }
}

#[test]
fn unknown_stage_action_shell_and_transport_are_reported_with_paths() {
    let spec = json!({"id": "r", "patch": {
        "install": [],
        "preInstallConfig": [
            {"action": "reboot"},
            {"shell": "zsh", "command": "x"},
            {"description": "nothing to run"},
            {"action": "singularDownload", "source": "s", "destinationPath": "a",
             "protocol": "https|ftp|https"},
            {"action": "periodicUpload", "filename": "${Logs}/x.log", "interval": 0},
            {"action": "singularUpload"},
            {"action": "singularDownload", "source": "s", "destinationPath": "a", "sign": "AAECAw"},
            "not an object"
        ]
    }});
    let issues = validate(&spec);
    let found: Vec<String> = issues.iter().map(|i| i.to_string()).collect();
    let at = |index: usize, rest: &str| format!("changeSpec.patch.preInstallConfig[{index}]{rest}");
    let expected_paths = [
        "changeSpec.patch.install".to_owned(),
        at(7, ""),
        at(0, ".action"),
        at(1, ".shell"),
        at(2, ""),
        at(3, ".protocol"),
        at(3, ".protocol"),
        at(4, ".interval"),
        at(5, ""),
        at(6, ".sign"),
    ];
    assert_eq!(paths(&issues), expected_paths, "{found:#?}");
    assert!(found[3].contains("unknown shell \"zsh\""), "{}", found[3]);
    assert!(found[5].contains("\"ftp\""), "{}", found[5]);
    assert!(found[6].contains("twice"), "{}", found[6]);
    assert!(
        found[8].contains("singularUpload needs filename"),
        "{}",
        found[8]
    );
}

#[test]
fn a_misspelled_step_field_is_reported_with_its_path() {
    let spec = spec_with(json!({"action": "singularDownload", "source": "s",
        "destinationPath": "a", "retransmisionRewind": 1024}));
    let found: Vec<String> = validate(&spec).iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        ["changeSpec.patch.transitPackage[0].retransmisionRewind: \
          unknown field \"retransmisionRewind\""]
    );
}

#[test]
fn forbidden_key_characters_are_reported() {
    let spec =
        json!({"id": "r", "v1.2 hotfix": {"installSteps": [{"shell": "sh", "command": "x"}]}});
    let issues = validate(&spec);
    assert_eq!(paths(&issues), ["changeSpec"]);
    assert!(
        issues[0].message.contains("forbidden character"),
        "{}",
        issues[0]
    );
}

#[test]
fn recipes_too_deep_or_too_large_for_the_twin_are_reported() {
    // Levels below desired: changeSpec, patch, the action (arrays add none), then 7 more = 11.
    let nested = |levels: usize| (0..levels).fold(json!(1), |inner, _| json!({ "n": inner }));
    // `extra` is not a step field (reported as such); only the depth matters here.
    let twin_issues = |spec: &Value| -> Vec<Issue> {
        (validate(spec).into_iter())
            .filter(|issue| !issue.message.starts_with("unknown field"))
            .collect()
    };
    let fits = spec_with(json!({"shell": "sh", "command": "x", "extra": nested(6)}));
    assert_eq!(twin_issues(&fits), vec![]);
    let deep = spec_with(json!({"shell": "sh", "command": "x", "extra": nested(7)}));
    let issues = twin_issues(&deep);
    assert_eq!(paths(&issues), ["changeSpec"]);
    assert!(issues[0].message.contains("11 levels"), "{}", issues[0]);

    let large = spec_with(json!({"shell": "sh", "command": "x".repeat(32 * 1024)}));
    let issues = validate(&large);
    assert_eq!(paths(&issues), ["changeSpec"]);
    assert!(
        issues[0].message.contains("more than 32768"),
        "{}",
        issues[0]
    );
}

#[test]
fn crlf_in_bash_step_is_found_and_normalized_before_signing() {
    // F19
    let mut spec = json!({"id": "r", "patch": {"installSteps": [
        {"shell": "powershell", "command": "Write-Host ok\r\n"},
        {"action": "executeOnce", "shell": "bash", "command": "#!/bin/bash\r\necho ok\r\n",
         "onPause": "kill -STOP 1\r"}
    ]}});
    assert_eq!(
        has_crlf_in_bash(&spec).as_deref(),
        Some("changeSpec.patch.installSteps[1]")
    );

    assert_eq!(normalize_crlf(&mut spec), 2);
    assert_eq!(
        spec["patch"]["installSteps"][1]["command"],
        "#!/bin/bash\necho ok\n"
    );
    assert_eq!(
        spec["patch"]["installSteps"][1]["onPause"],
        "kill -STOP 1\n"
    );
    assert_eq!(
        spec["patch"]["installSteps"][0]["command"],
        "Write-Host ok\r\n"
    );
    assert_eq!(has_crlf_in_bash(&spec), None);
    assert_eq!(
        normalize_crlf(&mut spec),
        0,
        "normalizing twice changes nothing"
    );
}

#[test]
fn zone_variables_are_found_with_offsets() {
    assert_eq!(
        zone_variables("${LogUploadAllow}/app/${_x1}.log").expect("valid"),
        [(0, "LogUploadAllow"), (22, "_x1")]
    );
    assert!(zone_variables("${1abc}").is_err());
    assert!(zone_variables("${}").is_err());
    assert_eq!(zone_variables("$HOME/x").expect("not a zone variable"), []);
}

#[test]
fn schema_describes_sections_and_actions_for_the_crd() {
    let schema = serde_json::to_value(schemars::schema_for!(ChangeSpec)).expect("schema");
    assert_eq!(schema["required"], json!(["id"]));
    assert_eq!(schema["x-kubernetes-preserve-unknown-fields"], true);
    let text = schema.to_string();
    for name in [
        "preTransitConfig",
        "postInstallConfig",
        "destinationPath",
        "singularDownload",
    ] {
        assert!(text.contains(name), "schema names {name}");
    }
}

#[test]
fn file_signatures_may_name_their_key_but_must_be_canonical_base64() {
    let download = |sign: &str| {
        spec_with(json!({
            "action": "singularDownload",
            "source": "patch.tar.gz",
            "destinationPath": "./patch.tar.gz",
            "sign": sign,
        }))
    };
    assert_eq!(validate(&download("AAECAw==")), vec![]);
    assert_eq!(validate(&download("0123456789abcdef:AAECAw==")), vec![]);

    for bad in [
        "0123456789abcdef:AAECAw",
        "not-a-key-id:AAECAw==",
        "AAEC Aw==",
    ] {
        let issues = validate(&download(bad));
        assert_eq!(
            paths(&issues),
            vec!["changeSpec.patch.transitPackage[0].sign"],
            "{bad}"
        );
    }
}
