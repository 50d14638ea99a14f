//! Status helpers shared by the controllers: conditions and server-side apply of status.

use cloudpillar_crds::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

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

/// Field manager of the status fields a controller owns: `cloudpillar-operator/<controller>`.
pub fn manager(controller: &str) -> String {
    format!("{MANAGER}/{controller}")
}
