//! The generated CRDs: names, subresources, printer columns, rules and field documentation.

use std::collections::BTreeSet;

use cloudpillar_crds::all;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn crd(kind: &str) -> CustomResourceDefinition {
    all()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn schema(kind: &str) -> Value {
    let version = &crd(kind).spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.expect("CRD has a schema")).expect("schema serializes")
}

fn columns(kind: &str) -> Vec<String> {
    crd(kind).spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|column| column.priority.unwrap_or(0) == 0)
        .map(|column| column.name.clone())
        .collect()
}

/// Calls `visit(path, node)` for every schema node below `node`.
fn walk(path: &str, node: &Value, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            walk(&format!("{path}.{name}"), child, visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(&format!("{path}[]"), items, visit);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(&format!("{path}{{}}"), values, visit);
    }
}

#[test]
fn every_kind_is_namespaced_in_the_cloudpillar_group_and_category() {
    let kinds: Vec<String> = all().into_iter().map(|crd| crd.spec.names.kind).collect();
    assert_eq!(kinds, ["Hub", "Device", "Recipe", "Rollout"]);
    for crd in all() {
        assert_eq!(crd.spec.group, "cloudpillar.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["cloudpillar".to_owned()])
        );
        let subresources = crd.spec.versions[0].subresources.as_ref();
        assert!(
            subresources.and_then(|s| s.status.as_ref()).is_some(),
            "{}: status",
            crd.spec.names.kind
        );
    }
}

#[test]
fn short_names_are_the_documented_ones() {
    let names = |kind: &str| crd(kind).spec.names.short_names.unwrap_or_default();
    assert_eq!(crd("Hub").spec.names.singular.as_deref(), Some("hub"));
    assert_eq!(crd("Hub").spec.names.plural, "hubs");
    assert_eq!(names("Hub"), ["cphub"]);
    assert_eq!(names("Device"), ["dev"]);
    assert_eq!(names("Recipe"), ["rcp"]);
    assert_eq!(names("Rollout"), ["ro"]);
}

#[test]
fn printer_columns_tell_the_story_in_one_line() {
    assert_eq!(columns("Hub"), ["Kind", "Endpoint", "Ready", "Age"]);
    assert_eq!(
        columns("Device"),
        [
            "Hub",
            "Mode",
            "State",
            "Connection",
            "Recipe",
            "Progress",
            "Age"
        ]
    );
    assert_eq!(columns("Recipe"), ["ID", "Valid", "Signed", "Key", "Age"]);
    assert_eq!(
        columns("Rollout"),
        [
            "Recipe",
            "Phase",
            "Wave",
            "Succeeded",
            "Failed",
            "Deferred",
            "Age"
        ]
    );
}

#[test]
fn every_validation_rule_carries_a_message_for_people() {
    for crd in all() {
        let kind = crd.spec.names.kind.clone();
        let mut rules = 0;
        walk(&kind, &schema(&kind), &mut |path, node| {
            for rule in node["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                rules += 1;
                let message = rule["message"].as_str().unwrap_or_default();
                assert!(
                    message.len() > 10,
                    "{path}: rule {} has no message",
                    rule["rule"]
                );
                assert!(!message.contains('\n'), "{path}: messages are one line");
            }
        });
        assert!(rules > 0, "{kind} has validation rules");
    }
}

#[test]
fn every_spec_and_status_field_is_documented_on_one_paragraph() {
    for kind in ["Hub", "Device", "Recipe", "Rollout"] {
        let root = schema(kind);
        assert!(
            root["description"].as_str().is_some_and(|d| d.len() > 20),
            "{kind}"
        );
        for part in ["spec", "status"] {
            walk(
                &format!("{kind}.{part}"),
                &root["properties"][part],
                &mut |path, node| {
                    let description = node["description"].as_str();
                    // Map values and list items are described by their field.
                    let described_by_field = path.ends_with("{}") || path.ends_with("[]");
                    assert!(
                        described_by_field || description.is_some(),
                        "{path} has no description"
                    );
                    let text = description.unwrap_or_default();
                    assert!(!text.contains('\n'), "{path}: description is reflowed");
                },
            );
        }
    }
}

#[test]
fn wave_percent_is_capped_at_100_and_exclusive_with_count() {
    let waves =
        &schema("Rollout")["properties"]["spec"]["properties"]["strategy"]["properties"]["waves"];
    let wave = &waves["items"];
    assert_eq!(wave["properties"]["percent"]["maximum"], 100.0);
    assert_eq!(wave["properties"]["percent"]["minimum"], 1.0);
    let rules = wave["x-kubernetes-validations"].to_string();
    assert!(
        rules.contains("has(self.count) != has(self.percent)"),
        "{rules}"
    );
    assert_eq!(waves["maxItems"], 20);
}

#[test]
fn desired_properties_keep_unknown_fields_but_refuse_reserved_keys() {
    let desired = &schema("Device")["properties"]["spec"]["properties"]["desired"];
    assert_eq!(desired["type"], "object");
    assert_eq!(desired["x-kubernetes-preserve-unknown-fields"], true);

    let declared: Vec<&str> = desired["properties"]
        .as_object()
        .map(|properties| properties.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut reserved = cloudpillar_crds::device::RESERVED_DESIRED_KEYS.to_vec();
    reserved.sort_unstable();
    assert_eq!(
        declared, reserved,
        "every reserved key is declared for the rule to see"
    );
    let rule = desired["x-kubernetes-validations"][0]["rule"]
        .as_str()
        .unwrap_or_default();
    for key in reserved {
        assert!(
            rule.contains(&format!("!has(self.{key})")),
            "rule refuses {key}: {rule}"
        );
    }
}

#[test]
fn conditions_merge_by_type() {
    for kind in ["Hub", "Device", "Recipe", "Rollout"] {
        let conditions = &schema(kind)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
    }
}

#[test]
fn rendered_yaml_reads_back_as_the_same_crds() {
    let rendered = cloudpillar_crds::rendered().expect("renders");
    let names: Vec<&str> = rendered.iter().map(|(file, _)| file.as_str()).collect();
    assert_eq!(
        names,
        [
            "hubs.cloudpillar.io.yaml",
            "devices.cloudpillar.io.yaml",
            "recipes.cloudpillar.io.yaml",
            "rollouts.cloudpillar.io.yaml"
        ]
    );
    for ((_, yaml), crd) in rendered.iter().zip(all()) {
        let back: CustomResourceDefinition = serde_yaml::from_str(yaml).expect("YAML reads back");
        assert_eq!(back, crd);
    }
}

#[test]
fn recipe_steps_describe_every_field_of_the_protocol_action() {
    let recipe = schema("Recipe");
    let change_spec = &recipe["properties"]["spec"]["properties"]["changeSpec"];
    let step = &change_spec["properties"]["patch"]["additionalProperties"]["items"]["properties"];
    // Compared as sets: the CRD keeps properties sorted, the protocol schema in field order.
    let crd_fields: BTreeSet<&String> = step.as_object().expect("step properties").keys().collect();

    let protocol = schemars::schema_for!(cloudpillar_protocol::recipe::Action);
    let protocol = serde_json::to_value(protocol).expect("schema serializes");
    let protocol_fields: BTreeSet<&String> = protocol["properties"]
        .as_object()
        .expect("action properties")
        .keys()
        .collect();

    assert_eq!(
        crd_fields, protocol_fields,
        "the CRD and the twin protocol agree on step fields"
    );
}

#[test]
fn recipe_sections_share_one_step_schema() {
    let change_spec = &schema("Recipe")["properties"]["spec"]["properties"]["changeSpec"];
    let sections = change_spec["properties"].as_object().expect("sections");
    let names: Vec<&str> = sections
        .keys()
        .map(String::as_str)
        .filter(|n| *n != "id")
        .collect();
    let mut expected = cloudpillar_crds::recipe::SECTIONS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    let patch = &sections["patch"]["additionalProperties"];
    assert_eq!(patch, &sections["base"]["additionalProperties"]);
}

#[test]
fn every_format_is_one_the_api_server_recognizes() {
    // Formats kube-apiserver validates; any other makes each apply of the CRD print
    // `Warning: unrecognized format`.
    let known: Vec<&str> = "int32 int64 float double byte date date-time duration uri email \
                            hostname ipv4 ipv6 cidr mac uuid password"
        .split_whitespace()
        .collect();
    for kind in ["Hub", "Device", "Recipe", "Rollout"] {
        let mut unknown = Vec::new();
        walk(kind, &schema(kind), &mut |path, node| {
            if let Some(format) = node.get("format").and_then(Value::as_str)
                && !known.contains(&format)
            {
                unknown.push(format!("{path}: {format}"));
            }
        });
        assert!(unknown.is_empty(), "unrecognized formats: {unknown:?}");
    }
}

#[test]
fn unsigned_integers_keep_their_lower_bound() {
    let status = &schema("Device")["properties"]["status"]["properties"];
    let wave = &status["assignment"]["properties"]["wave"];
    assert_eq!(wave["format"], "int64", "{wave}");
    assert_eq!(wave["minimum"], 1.0, "{wave}");
}
