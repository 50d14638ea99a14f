//! The `ArtifactsAvailable` condition and the artifact list of a Recipe's status.

use cloudpillar_crds::recipe::RECIPE_ARTIFACTS_AVAILABLE;
use cloudpillar_crds::{Artifact, Condition};
use serde_json::Value;

use super::artifacts::{ArtifactError, ArtifactStore, DEVICE_UPLOADS_PREFIX, download_sources};
use crate::status::condition;

/// Most artifacts listed in status (the schema's limit).
const MAX_ARTIFACTS: usize = 500;

/// What the blob store says about a recipe's downloads.
pub(super) struct Lookup {
    pub(super) artifacts: Vec<Artifact>,
    pub(super) condition: Condition,
    /// Whether every file was found (or there is no store to ask): no early recheck needed.
    pub(super) complete: bool,
}

impl Lookup {
    /// Whether files are missing now and were not reported missing before.
    pub(super) fn newly_missing(&self, before: &[Condition]) -> bool {
        self.condition.reason == "ArtifactsMissing"
            && cloudpillar_crds::conditions::find(before, RECIPE_ARTIFACTS_AVAILABLE).is_none_or(
                |c| c.reason != "ArtifactsMissing" || c.message != self.condition.message,
            )
    }
}

/// Looks every download of `spec` up in `store`: size and hashes of the files found, and the
/// `ArtifactsAvailable` condition naming those missing.
pub(super) async fn look_up_artifacts(
    spec: &Value,
    store: Option<&dyn ArtifactStore>,
    generation: Option<i64>,
) -> Lookup {
    let names: Vec<String> = download_sources(spec)
        .into_iter()
        .take(MAX_ARTIFACTS)
        .collect();
    let mut artifacts: Vec<Artifact> = names
        .iter()
        .map(|name| Artifact {
            name: name.clone(),
            ..Artifact::default()
        })
        .collect();
    let Some(store) = store else {
        let condition = condition_of(
            None,
            "NoArtifactStore",
            "the operator has no blob store configured; files are not looked up".into(),
            generation,
        );
        return Lookup {
            artifacts,
            condition,
            complete: true,
        };
    };

    // A device's own uploads (`uploads/<device>/...`) are per device, not in the store.
    let (mut missing, mut failed) = (Vec::new(), Vec::new());
    for artifact in artifacts
        .iter_mut()
        .filter(|a| !a.name.starts_with(DEVICE_UPLOADS_PREFIX))
    {
        match store.describe(&artifact.name).await {
            Ok(Some(facts)) => {
                artifact.size = i64::try_from(facts.size).ok();
                artifact.sha256 = Some(facts.sha256);
                artifact.sha512 = Some(facts.sha512);
            }
            Ok(None) | Err(ArtifactError::InvalidName { .. }) => {
                missing.push(artifact.name.clone())
            }
            Err(error) => {
                let error = crate::runtime::ErrorChain(&error);
                tracing::warn!(%error, "artifact lookup failed");
                failed.push(artifact.name.clone());
            }
        }
    }
    let condition = match (missing.is_empty(), failed.is_empty()) {
        (false, _) => condition_of(
            Some(false),
            "ArtifactsMissing",
            format!("not in the blob store: {}", missing.join(", ")),
            generation,
        ),
        (true, false) => condition_of(
            None,
            "ArtifactLookupFailed",
            format!("could not read from the blob store: {}", failed.join(", ")),
            generation,
        ),
        (true, true) => condition_of(
            Some(true),
            "ArtifactsFound",
            match names.len() {
                0 => "the recipe downloads no files".to_owned(),
                1 => "the downloaded file is in the blob store".to_owned(),
                n => format!("all {n} downloaded files are in the blob store"),
            },
            generation,
        ),
    };
    Lookup {
        artifacts,
        condition,
        complete: missing.is_empty() && failed.is_empty(),
    }
}

/// The `ArtifactsAvailable` condition: `Some(holds)`, or `None` for Unknown.
fn condition_of(
    holds: Option<bool>,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let mut made = condition(
        RECIPE_ARTIFACTS_AVAILABLE,
        holds.unwrap_or(false),
        reason,
        message,
        generation,
    );
    if holds.is_none() {
        made.status = cloudpillar_crds::conditions::UNKNOWN.to_owned();
    }
    made
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};
    use serde_json::json;

    use super::*;
    use crate::recipe::BlobArtifacts;

    fn spec() -> Value {
        json!({"id": "r", "patch": {"transitPackage": [
            {"action": "singularDownload", "source": "SPU.zip", "destinationPath": "a"},
            {"action": "singularDownload", "source": "gone.zip", "destinationPath": "b"},
            {"action": "singularDownload", "source": "uploads/dev-1/x.log", "destinationPath": "c"},
        ]}})
    }

    #[tokio::test]
    async fn missing_files_are_named_and_found_ones_get_size_and_hashes() {
        let store = Arc::new(InMemory::new());
        store
            .put(&Path::from("SPU.zip"), PutPayload::from_static(b"spu"))
            .await
            .expect("put");
        let artifacts = BlobArtifacts::new(store.clone());
        let lookup = look_up_artifacts(&spec(), Some(&artifacts), Some(1)).await;
        assert_eq!(lookup.condition.status, "False");
        assert_eq!(lookup.condition.reason, "ArtifactsMissing");
        assert_eq!(lookup.condition.message, "not in the blob store: gone.zip");
        assert!(!lookup.complete);
        let spu = &lookup.artifacts[0];
        assert_eq!((spu.name.as_str(), spu.size), ("SPU.zip", Some(3)));
        assert_eq!(spu.sha512.as_ref().map(String::len), Some(128));
        assert_eq!(
            lookup.artifacts[2].size, None,
            "a device upload is not looked up"
        );
        assert!(lookup.newly_missing(&[]));
        assert!(!lookup.newly_missing(std::slice::from_ref(&lookup.condition)));

        store
            .put(&Path::from("gone.zip"), PutPayload::from_static(b"back"))
            .await
            .expect("put");
        let lookup = look_up_artifacts(&spec(), Some(&artifacts), Some(1)).await;
        assert_eq!(lookup.condition.status, "True");
        assert!(lookup.complete);
    }

    #[tokio::test]
    async fn without_a_store_names_are_listed_and_availability_is_unknown() {
        let lookup = look_up_artifacts(&spec(), None, Some(1)).await;
        assert_eq!(lookup.condition.status, "Unknown");
        assert_eq!(lookup.artifacts.len(), 3);
        assert!(lookup.complete);
    }
}
