//! The twin patch that brings tags and desired properties in line with a Device spec (pure).
//!
//! The patch is the difference between what the operator last wrote (recorded in status) and
//! what the spec wants now (field case F03): a key removed from the spec becomes an explicit
//! `null`, an unchanged spec gives no patch at all, and keys the operator never wrote are
//! never touched. On top of that, an owned key whose twin value someone changed behind the
//! operator's back is written again. Reserved keys (`provisioning`) belong to the operator
//! alone: they are compared with the twin only.

use std::collections::BTreeMap;

use cloudpillar_protocol::keys::encode_key;
use cloudpillar_protocol::limits::{LimitError, TwinLimits};
use cloudpillar_protocol::twin::{diff, is_equivalent, merge_patch, without_meta};
use serde_json::{Map, Value};

use cloudpillar_crds::Device;

use crate::twin::{Twin, TwinPatch};

/// What the operator wants in the twin, and what it last wrote there.
#[derive(Debug, Clone, Copy)]
pub struct Owned<'a> {
    /// `spec.tags`.
    pub tags: &'a BTreeMap<String, String>,
    /// `spec.desired`.
    pub desired: &'a BTreeMap<String, Value>,
    /// `status.appliedTags`.
    pub applied_tags: &'a BTreeMap<String, String>,
    /// `status.appliedDesired`.
    pub applied_desired: &'a BTreeMap<String, Value>,
    /// Reserved desired keys the operator alone writes, with their wanted values.
    pub reserved: &'a BTreeMap<String, Value>,
}

/// The patch to send; empty when the twin needs nothing.
pub fn plan(owned: Owned<'_>, twin: &Twin) -> TwinPatch {
    let wanted_tags = tags_value(owned.tags);
    let last_tags = tags_value(owned.applied_tags);
    let wanted_desired = desired_value(owned.desired);
    let last_desired = desired_value(owned.applied_desired);

    let current_desired = without_meta(&twin.properties.desired);
    let mut desired = section_patch(&last_desired, &wanted_desired, &current_desired);
    for (key, value) in owned.reserved {
        if current_desired
            .get(key)
            .is_some_and(|now| covers(now, value))
        {
            continue;
        }
        let patch = desired.get_or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(members) = patch {
            members.insert(key.clone(), value.clone());
        }
    }
    TwinPatch {
        tags: section_patch(&last_tags, &wanted_tags, &twin.tags),
        desired,
    }
}

/// Difference against the last write, plus owned keys that drifted in the twin, minus what
/// the twin already shows (a write from a reconcile whose cache lagged, for example).
fn section_patch(last: &Value, wanted: &Value, current: &Value) -> Option<Value> {
    let mut patch = match diff(last, wanted) {
        Some(Value::Object(members)) => members,
        _ => Map::new(),
    };
    if let Value::Object(wanted) = wanted {
        for (key, value) in wanted {
            let drifted = !current.get(key).is_some_and(|now| covers(now, value));
            if drifted && !patch.contains_key(key) {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    patch.retain(|key, change| match (current.get(key), change.is_null()) {
        (Some(_), true) => true,
        (None, true) => false,
        (Some(now), false) => !covers(now, change),
        (None, false) => true,
    });
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// Whether merging `wanted` into `current` would change nothing.
fn covers(current: &Value, wanted: &Value) -> bool {
    let mut merged = current.clone();
    merge_patch(&mut merged, wanted);
    is_equivalent(&merged, current)
}

/// Whether a twin change event body (`tags` and `properties.desired` as changed) sets a tag
/// or desired property `device` owns to something its spec does not hold: someone else wrote
/// it, and the Device must write it back. The operator's own writes carry the spec's values.
pub fn drifted(device: &Device, change: &Value) -> bool {
    let tags = change
        .get("tags")
        .is_some_and(|tags| contradicts(tags, &tags_value(&device.spec.tags)));
    let desired = change
        .pointer("/properties/desired")
        .is_some_and(|desired| contradicts(desired, &desired_value(&device.spec.desired)));
    tags || desired
}

/// Whether applying the merge patch `change` to a document holding `wanted` would change a
/// member of `wanted`. Members `wanted` lacks are someone else's and never count.
fn contradicts(change: &Value, wanted: &Value) -> bool {
    match (change, wanted) {
        (Value::Object(change), Value::Object(wanted)) => wanted
            .iter()
            .any(|(key, want)| change.get(key).is_some_and(|now| contradicts(now, want))),
        (change, wanted) => !is_equivalent(change, wanted),
    }
}

/// Checks the tags and desired properties a spec wants against IoT Hub's twin limits (depth 10,
/// 8 KiB tags, 32 KiB desired), so that a twin the hub would refuse is never sent (F06).
pub fn within_limits(
    tags: &BTreeMap<String, String>,
    desired: &BTreeMap<String, Value>,
) -> Result<(), LimitError> {
    let limits = TwinLimits::default();
    limits.check_tags(&tags_value(tags))?;
    limits.check_desired(&desired_value(desired))
}

fn tags_value(tags: &BTreeMap<String, String>) -> Value {
    Value::Object(
        tags.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// `spec.desired` with every key, at every depth, passed through the twin key codec (F05).
pub fn desired_value(desired: &BTreeMap<String, Value>) -> Value {
    Value::Object(
        desired
            .iter()
            .map(|(k, v)| (encode_key(k), encode_keys(v)))
            .collect(),
    )
}

fn encode_keys(value: &Value) -> Value {
    match value {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (encode_key(k), encode_keys(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(encode_keys).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).expect("object")
    }

    fn twin_with_desired(desired: Value) -> Twin {
        let mut twin = Twin::new("dev-1", "etag");
        if let (Value::Object(section), Value::Object(extra)) =
            (&mut twin.properties.desired, desired)
        {
            section.extend(extra);
        }
        twin
    }

    #[test]
    fn a_removed_field_is_sent_as_an_explicit_null_and_nothing_else() {
        let last = map(json!({"logLevel": "debug", "uploadEveryMin": 15}));
        let wanted = map(json!({"uploadEveryMin": 15}));
        let twin = twin_with_desired(json!({"logLevel": "debug", "uploadEveryMin": 15}));
        let none = BTreeMap::new();
        let owned = Owned {
            tags: &none,
            desired: &wanted,
            applied_tags: &none,
            applied_desired: &last,
            reserved: &BTreeMap::new(),
        };
        let patch = plan(owned, &twin);
        assert_eq!(patch.desired, Some(json!({"logLevel": null})));
        assert_eq!(patch.tags, None);
    }

    #[test]
    fn an_unchanged_spec_writes_nothing() {
        let last = map(json!({"uploadEveryMin": 15}));
        let twin = twin_with_desired(json!({"uploadEveryMin": 15, "other": "theirs"}));
        let tags = BTreeMap::from([("site".to_owned(), "lab".to_owned())]);
        let mut twin = twin;
        twin.tags = json!({"site": "lab"});
        let owned = Owned {
            tags: &tags,
            desired: &last,
            applied_tags: &tags,
            applied_desired: &last,
            reserved: &BTreeMap::new(),
        };
        assert!(plan(owned, &twin).is_empty());
    }

    #[test]
    fn keys_written_by_others_are_never_nulled() {
        let (no_tags, nothing) = (BTreeMap::new(), BTreeMap::new());
        let twin = twin_with_desired(json!({"theirs": 1}));
        let owned = Owned {
            tags: &no_tags,
            desired: &nothing,
            applied_tags: &no_tags,
            applied_desired: &nothing,
            reserved: &BTreeMap::new(),
        };
        assert!(plan(owned, &twin).is_empty());
    }

    #[test]
    fn an_owned_key_changed_in_the_twin_is_written_again() {
        let wanted = map(json!({"logLevel": "info"}));
        let twin = twin_with_desired(json!({"logLevel": "trace"}));
        let none = BTreeMap::new();
        let owned = Owned {
            tags: &none,
            desired: &wanted,
            applied_tags: &none,
            applied_desired: &wanted,
            reserved: &BTreeMap::new(),
        };
        assert_eq!(
            plan(owned, &twin).desired,
            Some(json!({"logLevel": "info"}))
        );
    }

    #[test]
    fn members_others_added_inside_an_owned_object_cause_no_rewrite() {
        let wanted = map(json!({"upload": {"everyMin": 15}}));
        let twin = twin_with_desired(json!({"upload": {"everyMin": 15, "extra": true}}));
        let none = BTreeMap::new();
        let owned = Owned {
            tags: &none,
            desired: &wanted,
            applied_tags: &none,
            applied_desired: &wanted,
            reserved: &BTreeMap::new(),
        };
        assert!(plan(owned, &twin).is_empty());
    }

    #[test]
    fn desired_properties_nested_too_deep_are_refused_before_sending() {
        let mut deep = json!(1);
        for _ in 0..11 {
            deep = json!({ "level": deep });
        }
        let wanted = map(json!({ "deep": deep }));
        assert!(within_limits(&BTreeMap::new(), &wanted).is_err());
        let fine = map(json!({ "logLevel": "info" }));
        assert!(within_limits(&BTreeMap::new(), &fine).is_ok());
    }

    #[test]
    fn what_the_twin_already_shows_is_not_sent_again() {
        let wanted = map(json!({"logLevel": "info", "gone": null}));
        let twin = twin_with_desired(json!({"logLevel": "info"}));
        let none = BTreeMap::new();
        let stale = map(json!({"gone": 1}));
        let owned = Owned {
            tags: &none,
            desired: &wanted,
            applied_tags: &none,
            applied_desired: &stale,
            reserved: &BTreeMap::new(),
        };
        assert!(
            plan(owned, &twin).is_empty(),
            "a lagging cache must not cause a rewrite"
        );
    }

    #[test]
    fn a_reserved_section_is_written_until_the_twin_shows_it() {
        let none = BTreeMap::new();
        let strict = BTreeMap::from([(
            "provisioning".to_owned(),
            json!({"authMethod": "SAS", "hub": "h", "mode": "STRICT"}),
        )]);
        let owned = Owned {
            tags: &none,
            desired: &BTreeMap::new(),
            applied_tags: &none,
            applied_desired: &BTreeMap::new(),
            reserved: &strict,
        };
        let bare = twin_with_desired(json!({}));
        assert_eq!(
            plan(owned, &bare).desired,
            Some(json!({"provisioning": {"authMethod": "SAS", "hub": "h", "mode": "STRICT"}}))
        );
        let full = twin_with_desired(json!({"provisioning":
            {"authMethod": "SAS", "hub": "h", "mode": "FULL"}}));
        assert_eq!(
            plan(owned, &full).desired,
            Some(json!({"provisioning": {"authMethod": "SAS", "hub": "h", "mode": "STRICT"}}))
        );
        let shown = twin_with_desired(json!({"provisioning":
            {"authMethod": "SAS", "hub": "h", "mode": "STRICT"}}));
        assert!(plan(owned, &shown).is_empty());
    }

    fn device(tags: Value, desired: Value) -> Device {
        Device::new(
            "pc-02",
            cloudpillar_crds::DeviceSpec {
                tags: serde_json::from_value(tags).expect("tags"),
                desired: map(desired),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_twin_change_by_someone_else_to_an_owned_key_is_drift() {
        let device = device(
            json!({"site": "lab"}),
            json!({"logLevel": "info", "upload": {"everyMin": 15}}),
        );
        let drift = |change: Value| drifted(&device, &change);

        // Another writer's values, or removal, of what the spec holds.
        assert!(drift(json!({"version": 7, "tags": {"site": "elsewhere"}})));
        assert!(drift(json!({"tags": {"site": null}})));
        assert!(drift(
            json!({"properties": {"desired": {"logLevel": "trace", "$version": 4}}})
        ));
        assert!(drift(
            json!({"properties": {"desired": {"upload": {"everyMin": 1}}}})
        ));
        assert!(drift(json!({"properties": {"desired": {"upload": null}}})));

        // The operator's own writes, and keys the spec does not own.
        assert!(!drift(json!({"version": 7, "tags": {"site": "lab"}})));
        assert!(!drift(json!({"tags": {"owner": "it"}})));
        assert!(!drift(
            json!({"properties": {"desired": {"logLevel": "info", "$version": 5}}})
        ));
        assert!(!drift(
            json!({"properties": {"desired": {"upload": {"extra": true}}}})
        ));
        assert!(!drift(
            json!({"properties": {"desired": {"changeSpec": {"id": "fw-1"}}}})
        ));
        assert!(!drift(
            json!({"properties": {"reported": {"deviceState": "READY"}}})
        ));
    }

    #[test]
    fn nested_keys_with_forbidden_characters_are_encoded() {
        let wanted = map(json!({"files": {"firmware.bin": {"crc": "0943260c"}}}));
        assert_eq!(
            desired_value(&wanted),
            json!({"files": {"firmware%2Ebin": {"crc": "0943260c"}}})
        );
    }
}
