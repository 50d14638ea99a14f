//! Canonical JSON: the exact bytes recipes are signed over.

use cloudpillar_protocol::signing::{SigningKey, TrustStore, canonical_json};
use serde_json::{Value, json};

fn text(value: &Value) -> String {
    String::from_utf8(canonical_json(value)).expect("canonical JSON is UTF-8")
}

#[test]
fn members_are_sorted_at_every_depth_without_whitespace() {
    let value: Value = serde_json::from_str(
        r#"{ "b": 1, "a": { "z": [ {"y": 2, "x": 1} ], "m": "t" }, "A": true, "é": null }"#,
    )
    .expect("json");
    assert_eq!(
        text(&value),
        r#"{"A":true,"a":{"m":"t","z":[{"x":1,"y":2}]},"b":1,"é":null}"#
    );
}

#[test]
fn member_order_of_the_source_text_does_not_matter() {
    let one: Value = serde_json::from_str(r#"{"x":{"b":[3,1],"a":0},"y":"v"}"#).expect("json");
    let two: Value =
        serde_json::from_str("{\n \"y\": \"v\",\n \"x\": {\"a\": 0, \"b\": [3, 1]}\n}")
            .expect("json");
    assert_eq!(canonical_json(&one), canonical_json(&two));
}

#[test]
fn strings_and_numbers_use_serde_json_spelling() {
    let value = json!({"s": "line\nquote\"tab\tü\u{1}", "i": -7, "u": 18446744073709551615u64,
        "f": 1.5, "e": 1e300, "w": 2.0});
    assert_eq!(
        text(&value),
        concat!(
            r#"{"e":1e+300,"f":1.5,"i":-7,"#,
            r#""s":"line\nquote\"tab\tü\u0001","u":18446744073709551615,"w":2.0}"#
        )
    );
}

#[test]
fn signature_over_a_change_spec_survives_reformatting() {
    let key = SigningKey::generate().expect("key");
    let spec =
        json!({"id": "r-1", "patch": {"installSteps": [{"shell": "bash", "command": "true"}]}});
    let signature = key.sign_json(&spec).to_base64();

    let reformatted: Value =
        serde_json::from_str(&serde_json::to_string_pretty(&spec).expect("pretty")).expect("json");
    key.verifying_key()
        .verify_json(&reformatted, &signature)
        .expect("same canonical bytes");

    let mut changed = spec.clone();
    changed["patch"]["installSteps"][0]["command"] = json!("false");
    assert!(
        key.verifying_key()
            .verify_json(&changed, &signature)
            .is_err()
    );
}

#[test]
fn placeholder_signature_in_the_fixture_is_refused() {
    let desired: Value = serde_json::from_str(
        &std::fs::read_to_string(cloudpillar_protocol::fixtures::path(
            "security-update-desired.json",
        ))
        .expect("fixture readable"),
    )
    .expect("fixture is JSON");
    let spec = &desired["desired"]["changeSpec"];
    let sign = desired["desired"]["changeSign"]
        .as_str()
        .expect("changeSign text");

    let mut store = TrustStore::new();
    store.add(SigningKey::generate().expect("key").verifying_key().clone());
    let error = store
        .verify_json(spec, sign)
        .expect_err("placeholder must not verify");
    assert!(
        ["bad_signature", "bad_signature_encoding"].contains(&error.code()),
        "{error}"
    );
}
