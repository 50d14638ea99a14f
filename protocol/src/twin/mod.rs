//! Device twin documents: the Azure JSON shape and RFC 7396 merge patches.
//!
//! Twin sections (`desired`, `reported`, `tags`) are plain JSON objects. Three rules hold for
//! every function here, because the hub may prune empty objects and never stores JSON null:
//!
//! - merging a patch never replaces a parent object, it merges into it, and `null` deletes;
//! - a stored value is never `null`;
//! - comparisons treat an empty object, a `null` member and an absent member alike.

mod cancel;
mod document;

pub use cancel::{CANCEL_KEY, cancel_request, cancelled_id};
pub use document::{
    ConnectionState, METADATA_KEY, Twin, TwinProperties, TwinStatus, VERSION_KEY, section_version,
    set_section_version, without_meta,
};

use serde_json::{Map, Value};

/// Applies a JSON merge patch (RFC 7396) to `target` in place.
///
/// An object patch merges member by member into `target` (turning a non-object target into an
/// object first); a `null` member deletes that key; any other value replaces the member. A
/// `null` aimed at a key under a parent that does not exist yet leaves that parent as `{}`.
/// Applying the same patch twice gives the same document as applying it once.
///
/// A `null` patch at the top level empties the document to `{}`, since a stored value is never
/// `null`. Arrays are replaced whole, as RFC 7396 says.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(members) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(doc) = target {
                merge_members(doc, members);
            }
        }
        Value::Null => *target = Value::Object(Map::new()),
        other => *target = other.clone(),
    }
}

fn merge_members(doc: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        if value.is_null() {
            doc.remove(key);
            continue;
        }
        match doc.get_mut(key) {
            Some(existing) => merge_patch(existing, value),
            None => {
                let mut fresh = Value::Null;
                merge_patch(&mut fresh, value);
                doc.insert(key.clone(), fresh);
            }
        }
    }
}

/// Returns the smallest merge patch that turns `last_applied` into `wanted`, or `None` when the
/// two are already equivalent (see [`is_equivalent`]).
///
/// The patch carries only changed members. It holds `null` only for keys that `last_applied`
/// really has (with a non-empty value), so a writer never deletes keys it did not write.
/// Members of `wanted` that are `null` or empty objects count as absent.
pub fn diff(last_applied: &Value, wanted: &Value) -> Option<Value> {
    if is_equivalent(last_applied, wanted) {
        return None;
    }
    match (last_applied, wanted) {
        (Value::Object(last), Value::Object(want)) => Some(Value::Object(diff_members(last, want))),
        (_, Value::Object(_) | Value::Null) if is_absent(wanted) => {
            // Turning a non-object into an empty document: an empty object patch does it.
            let empty = Value::Object(Map::new());
            match last_applied {
                Value::Object(last) => Some(Value::Object(diff_members(last, &Map::new()))),
                _ => Some(empty),
            }
        }
        _ => Some(cleaned(wanted).unwrap_or_else(|| Value::Object(Map::new()))),
    }
}

fn diff_members(last: &Map<String, Value>, want: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for (key, wanted_value) in want {
        let change = match last.get(key) {
            Some(last_value) if !is_absent(last_value) => {
                if is_absent(wanted_value) {
                    Some(Value::Null)
                } else {
                    diff(last_value, wanted_value)
                }
            }
            _ => cleaned(wanted_value),
        };
        if let Some(change) = change {
            patch.insert(key.clone(), change);
        }
    }
    for (key, last_value) in last {
        if !want.contains_key(key) && !is_absent(last_value) {
            patch.insert(key.clone(), Value::Null);
        }
    }
    patch
}

/// Compares two documents treating `null` members and empty objects as absent, so `{}`,
/// `{"a":{}}` and `{"a":null}` are all equivalent. Array elements compare the same way.
pub fn is_equivalent(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(left), Value::Object(right)) => {
            let present_in_left = left.iter().filter(|(_, v)| !is_absent(v));
            let present_in_right = right.iter().filter(|(_, v)| !is_absent(v)).count();
            let mut matched = 0;
            for (key, value) in present_in_left {
                match right.get(key) {
                    Some(other) if is_equivalent(value, other) => matched += 1,
                    _ => return false,
                }
            }
            matched == present_in_right
        }
        (Value::Array(left), Value::Array(right)) => {
            left.len() == right.len() && left.iter().zip(right).all(|(l, r)| is_equivalent(l, r))
        }
        _ if is_absent(a) && is_absent(b) => true,
        _ => a == b,
    }
}

/// True for `null` and for objects whose members are all absent in this sense.
fn is_absent(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(members) => members.values().all(is_absent),
        _ => false,
    }
}

/// `value` without `null` members and empty objects; `None` when nothing is left.
fn cleaned(value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Object(members) => {
            let kept: Map<String, Value> = members
                .iter()
                .filter_map(|(k, v)| cleaned(v).map(|v| (k.clone(), v)))
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        other => Some(other.clone()),
    }
}
