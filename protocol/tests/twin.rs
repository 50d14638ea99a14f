//! Merge patch, diff and twin model: field cases F01, F02, F03 and properties.

use cloudpillar_protocol::twin::{
    ConnectionState, Twin, TwinStatus, diff, is_equivalent, merge_patch, section_version,
    set_section_version, without_meta,
};
use proptest::prelude::*;
use serde_json::{Value, json};

#[test]
fn null_for_missing_nested_key_keeps_siblings() {
    // F01
    let mut cache = json!({"recipes": {"r1": {"rev": 3}}, "$version": 22});
    let patch = json!({"recipes": {"r2": null}, "$version": 23});

    merge_patch(&mut cache, &patch);
    assert_eq!(without_meta(&cache), json!({"recipes": {"r1": {"rev": 3}}}));
    assert_eq!(section_version(&cache), Some(23));

    let once = cache.clone();
    merge_patch(&mut cache, &patch);
    assert_eq!(cache, once, "a second application changes nothing");
}

#[test]
fn repeated_and_nested_null_deletes_give_rfc7396_results() {
    // F02
    let mut cache = json!({});
    let steps = [
        (json!({"a": null}), json!({})),
        (json!({"a": null}), json!({})),
        (json!({"a": {"b": null}}), json!({"a": {}})),
        (json!({"a": null}), json!({})),
    ];
    for (patch, expected) in steps {
        merge_patch(&mut cache, &patch);
        assert_eq!(cache, expected, "after {patch}");
        assert!(!contains_null(&cache));
    }
}

#[test]
fn diff_never_nulls_keys_missing_from_last_applied() {
    // F02: nothing to delete when the last acknowledged state never had the key.
    assert_eq!(diff(&json!({}), &json!({"a": null})), None);
    assert_eq!(
        diff(&json!({"b": 1}), &json!({"b": 1, "a": {"x": null}})),
        None
    );
    assert_eq!(diff(&json!({"a": {}}), &json!({})), None);
}

#[test]
fn diff_sends_only_null_for_a_removed_spec_key() {
    // F03
    let last = json!({"logLevel": "debug", "uploadEveryMin": 15});
    let wanted = json!({"uploadEveryMin": 15});
    assert_eq!(diff(&last, &wanted), Some(json!({"logLevel": null})));
}

#[test]
fn diff_sends_nothing_for_an_unchanged_spec() {
    // F03
    let spec = json!({"logLevel": "debug", "uploadEveryMin": 15});
    assert_eq!(diff(&spec, &spec.clone()), None);
}

#[test]
fn diff_sends_only_changed_nested_members() {
    let last = json!({"a": {"x": 1, "y": 2}, "b": "keep"});
    let wanted = json!({"a": {"x": 1, "y": 3, "z": {"deep": true}}, "b": "keep"});
    assert_eq!(
        diff(&last, &wanted),
        Some(json!({"a": {"y": 3, "z": {"deep": true}}}))
    );
}

#[test]
fn diff_replaces_scalar_with_object_and_back() {
    let last = json!({"a": 1, "b": {"c": 2}});
    let wanted = json!({"a": {"n": 1}, "b": 7});
    let patch = diff(&last, &wanted).expect("documents differ");
    assert_eq!(patch, json!({"a": {"n": 1}, "b": 7}));
    let mut doc = last;
    merge_patch(&mut doc, &patch);
    assert_eq!(doc, wanted);
}

#[test]
fn equivalence_treats_empty_objects_and_nulls_as_absent() {
    assert!(is_equivalent(&json!({}), &json!({"a": {}})));
    assert!(is_equivalent(&json!({"a": {"b": {}}}), &json!({"a": null})));
    assert!(is_equivalent(
        &json!({"x": [1, {}]}),
        &json!({"x": [1, {"y": null}]})
    ));
    assert!(!is_equivalent(&json!({"a": 1}), &json!({"a": 1, "b": 0})));
    assert!(!is_equivalent(&json!({"a": 1}), &json!({"a": 1.0})));
    assert!(!is_equivalent(&json!({"a": [1]}), &json!({"a": [1, {}]})));
}

#[test]
fn top_level_null_patch_leaves_an_empty_document() {
    let mut doc = json!({"a": 1});
    merge_patch(&mut doc, &Value::Null);
    assert_eq!(doc, json!({}));
}

#[test]
fn azure_twin_json_round_trips_with_unknown_members() {
    let text = json!({
        "deviceId": "dev-1",
        "etag": "AAAAAAAAAAc=",
        "deviceEtag": "ODk0NzA5NTEx",
        "status": "enabled",
        "connectionState": "Disconnected",
        "lastActivityTime": "2023-05-03T15:14:45Z",
        "version": 7,
        "tags": {"site": "lab-3"},
        "properties": {
            "desired": {"logLevel": "info", "$metadata": {}, "$version": 4},
            "reported": {"deviceState": "READY", "$version": 9}
        },
        "capabilities": {"iotEdge": false}
    });
    let twin: Twin = serde_json::from_value(text.clone()).expect("twin parses");
    assert_eq!(twin.status, Some(TwinStatus::Enabled));
    assert_eq!(twin.connection_state, Some(ConnectionState::Disconnected));
    assert_eq!(twin.desired_version(), Some(4));
    assert_eq!(twin.reported_version(), Some(9));
    assert_eq!(serde_json::to_value(&twin).expect("twin serializes"), text);
}

#[test]
fn new_twin_starts_at_version_one() {
    let mut twin = Twin::new("dev-2", "etag-1");
    assert_eq!(
        (
            twin.version,
            twin.desired_version(),
            twin.reported_version()
        ),
        (1, Some(1), Some(1))
    );
    set_section_version(&mut twin.properties.desired, 5);
    assert_eq!(twin.desired_version(), Some(5));
    assert_eq!(without_meta(&twin.properties.desired), json!({}));
}

fn contains_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(members) => members.values().any(contains_null),
        Value::Array(items) => items.iter().any(contains_null),
        _ => false,
    }
}

/// Keys present in `patch` with a null value must exist in `last`.
fn nulls_only_for_present_keys(last: &Value, patch: &Value) -> bool {
    let Value::Object(members) = patch else {
        return true;
    };
    members
        .iter()
        .all(|(key, value)| match (value, last.get(key)) {
            (Value::Null, present) => present.is_some(),
            (_, Some(inner)) => nulls_only_for_present_keys(inner, value),
            (_, None) => !contains_null(value),
        })
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        (-3i64..3).prop_map(Value::from),
        "[ab]{0,2}".prop_map(Value::from),
    ]
}

/// Small documents over a few keys so that generated pairs overlap often.
fn document(with_nulls: bool) -> impl Strategy<Value = Value> {
    let leaf = if with_nulls {
        prop_oneof![4 => scalar(), 1 => Just(Value::Null)].boxed()
    } else {
        scalar().boxed()
    };
    let tree = leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::btree_map("[a-d]", inner, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    });
    prop::collection::btree_map("[a-d]", tree, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    #[test]
    fn merging_the_diff_reaches_the_wanted_document(
        last in document(false),
        wanted in document(true),
    ) {
        let mut doc = last.clone();
        if let Some(patch) = diff(&last, &wanted) {
            prop_assert!(nulls_only_for_present_keys(&last, &patch), "patch {}", patch);
            merge_patch(&mut doc, &patch);
        }
        prop_assert!(is_equivalent(&doc, &wanted), "got {} want {}", doc, wanted);
        prop_assert!(!contains_null(&doc));
        prop_assert_eq!(diff(&doc, &wanted), None);
    }

    #[test]
    fn merge_patch_is_idempotent(doc in document(false), patch in document(true)) {
        let mut once = doc.clone();
        merge_patch(&mut once, &patch);
        let mut twice = once.clone();
        merge_patch(&mut twice, &patch);
        prop_assert_eq!(once, twice);
    }
}
