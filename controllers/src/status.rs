//! Status helpers shared by the controllers: conditions, and status writes by server-side
//! apply or by JSON merge patch.

use cloudpillar_crds::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::config::MANAGER;
use crate::error::{KubeContext, Result};
use crate::runtime::key_of;

/// Now, to the second: Kubernetes keeps `metav1.Time` in whole seconds, so a time written
/// with a fraction would never compare equal to what is read back.
pub fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A condition observed now for `generation`.
pub fn condition(
    type_: &str,
    holds: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if holds { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into().chars().take(32_000).collect(),
        observed_generation: generation,
        last_transition_time: Time(now()),
    }
}

/// Merges `wanted` conditions into `current` (kept transition times when a status did not
/// flip) and returns the merged list.
pub fn merge_conditions(current: &[Condition], wanted: Vec<Condition>) -> Vec<Condition> {
    let mut merged = current.to_vec();
    for condition in wanted {
        cloudpillar_crds::conditions::set(&mut merged, condition);
    }
    merged
}

/// Applies `status` to `object` with server-side apply under `manager`, owning exactly the
/// fields present in `status`.
pub async fn apply_status<K, S>(api: &Api<K>, object: &K, manager: &str, status: &S) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": object.name_any() },
        "status": status,
    });
    let params = PatchParams::apply(manager).force();
    api.patch_status(&object.name_any(), &params, &Patch::Apply(&body))
        .await
        .kube("apply status of", &key_of(object))
}

/// Writes the change from `before` to `after` into the status of `object` with a JSON merge
/// patch under `manager`, and returns the object as written (`None` when nothing changed).
///
/// The API server merges a merge patch without the structured merge and conflict check of
/// server-side apply, so this costs it less per write; in exchange, the caller must know what
/// the status holds: `before` must be the status as last written or read. A member `after`
/// drops becomes an explicit `null`, at any depth. Members of the status that neither side
/// names (fields other controllers own) are left alone. The API server is spared the search
/// for unknown fields (`fieldValidation=Ignore`): the status comes from the CRD's own types,
/// and the client drops the warnings that search would send.
pub async fn patch_status<K, S>(
    api: &Api<K>,
    object: &K,
    manager: &str,
    before: &S,
    after: &S,
) -> Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let encode = |status: &S| {
        serde_json::to_value(status)
            .map_err(kube::Error::SerdeError)
            .kube("encode status of", &key_of(object))
    };
    let Some(change) = merge_diff(&encode(before)?, &encode(after)?) else {
        return Ok(None);
    };
    let params = PatchParams {
        field_manager: Some(manager.to_owned()),
        ..PatchParams::default()
    }
    .validation_ignore();
    let body = json!({ "status": change });
    api.patch_status(&object.name_any(), &params, &Patch::Merge(&body))
        .await
        .kube("patch status of", &key_of(object))
        .map(Some)
}

/// The JSON merge patch (RFC 7386) that turns `before` into `after`, or `None` when they are
/// equal: changed members only, `null` for each member `after` no longer has, objects merged
/// member by member, arrays and scalars replaced whole.
pub fn merge_diff(before: &Value, after: &Value) -> Option<Value> {
    if before == after {
        return None;
    }
    let (Value::Object(before), Value::Object(after)) = (before, after) else {
        return Some(after.clone());
    };
    let mut patch = Map::new();
    for (key, old) in before {
        if !after.contains_key(key) && !old.is_null() {
            patch.insert(key.clone(), Value::Null);
        }
    }
    for (key, new) in after {
        let change = match before.get(key) {
            Some(old) if new.is_object() => merge_diff(old, new),
            Some(old) if old == new => None,
            _ => Some(new.clone()),
        };
        if let Some(change) = change {
            patch.insert(key.clone(), change);
        }
    }
    Some(Value::Object(patch))
}

/// Field manager of the status fields a controller owns: `cloudpillar-operator/<controller>`.
pub fn manager(controller: &str) -> String {
    format!("{MANAGER}/{controller}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::merge_diff;

    #[test]
    fn merge_diff_nulls_what_is_dropped_at_any_depth() {
        let before = json!({
            "deviceState": "READY",
            "recipe": {"id": "r1", "lastFaultedPath": "a[1]"},
            "appliedTags": {"site": "lab", "room": "2"},
        });
        let after = json!({
            "recipe": {"id": "r1"},
            "appliedTags": {"site": "lab"},
        });
        let patch = merge_diff(&before, &after).expect("a change");
        assert_eq!(
            patch,
            json!({
                "deviceState": null,
                "recipe": {"lastFaultedPath": null},
                "appliedTags": {"room": null},
            })
        );
    }

    #[test]
    fn merge_diff_replaces_lists_and_scalars_whole_and_skips_equal_documents() {
        let before = json!({"conditions": [{"type": "Synced"}], "version": 1, "empty": {}});
        let after = json!({"conditions": [{"type": "Synced"}, {"type": "Registered"}],
                           "version": 2, "empty": {}, "new": {}});
        let patch = merge_diff(&before, &after).expect("a change");
        assert_eq!(
            patch,
            json!({"conditions": [{"type": "Synced"}, {"type": "Registered"}], "version": 2,
                   "new": {}})
        );
        assert_eq!(merge_diff(&after, &after), None);
    }
}
