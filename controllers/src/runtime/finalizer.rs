//! Adding and removing the operator's finalizer, tolerant of objects that vanish (F21).
//!
//! Both patches carry the object's resourceVersion, so a finalizer list changed by someone
//! else is never overwritten: the server answers 409, the object is read again and the patch
//! retried. A 404 while removing means the object is already gone, which is what removal
//! wanted.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::{Error, Result, is_status};

/// Attempts before a finalizer patch that keeps conflicting is left to the next reconcile.
const ATTEMPTS: usize = 3;

/// Adds `finalizer` unless present; returns the object as written.
pub async fn add<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let mut current = object.clone();
    for _ in 0..ATTEMPTS {
        if current.finalizers().iter().any(|f| f == finalizer) {
            return Ok(current);
        }
        let mut finalizers = current.finalizers().to_vec();
        finalizers.push(finalizer.to_owned());
        match patch(api, &current, finalizers).await {
            Ok(written) => return Ok(written),
            Err(error) if is_status(&error, 409) => current = reread(api, &current).await?,
            Err(source) => return Err(kube_error("add finalizer to", &current, source)),
        }
    }
    Err(Error::Conflict {
        object: name_of(&current),
    })
}

/// Removes `finalizer`; an object that is already gone counts as done.
pub async fn remove<K>(api: &Api<K>, object: &K, finalizer: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let mut current = object.clone();
    for _ in 0..ATTEMPTS {
        if !current.finalizers().iter().any(|f| f == finalizer) {
            return Ok(());
        }
        let finalizers: Vec<String> = current
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect();
        match patch(api, &current, finalizers).await {
            Ok(_) => return Ok(()),
            Err(error) if is_status(&error, 404) => {
                tracing::debug!("object gone before its finalizer was removed");
                return Ok(());
            }
            Err(error) if is_status(&error, 409) => match api.get_opt(&current.name_any()).await {
                Ok(Some(fresh)) => current = fresh,
                Ok(None) => return Ok(()),
                Err(source) => return Err(kube_error("read", &current, source)),
            },
            Err(source) => return Err(kube_error("remove finalizer from", &current, source)),
        }
    }
    Err(Error::Conflict {
        object: name_of(&current),
    })
}

async fn patch<K>(api: &Api<K>, object: &K, finalizers: Vec<String>) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let body = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": object.resource_version(),
        }
    });
    api.patch(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&body),
    )
    .await
}

async fn reread<K>(api: &Api<K>, object: &K) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get(&object.name_any())
        .await
        .map_err(|source| kube_error("read", object, source))
}

fn name_of<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

fn kube_error<K: Resource>(action: &'static str, object: &K, source: kube::Error) -> Error {
    Error::Kube {
        action,
        object: name_of(object),
        source,
    }
}
