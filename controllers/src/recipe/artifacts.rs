//! The files a Recipe downloads, looked up in the blob store devices download them from.
//!
//! A `singularDownload` step's `source` names an object in the patches container, the one the
//! streamer reads when a device asks for that file. [`BlobArtifacts`] reads that container
//! through `object_store` (a directory for the edge hub in `cloudpillar run`, Azure Blob
//! Storage in the cloud) and hashes each file once per version: the object's size, ETag and
//! modification time are remembered with the hashes, so a resync costs one HEAD per file.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

/// File ids with this prefix name a device's own upload, not a file in the patches container.
pub const DEVICE_UPLOADS_PREFIX: &str = "uploads/";

/// Size and hashes of one artifact as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFacts {
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// SHA-512 of the content, lowercase hex.
    pub sha512: String,
}

/// Why an artifact could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The name cannot be a path in the container (the streamer refuses it too).
    #[error("artifact name {name:?} is not a valid blob path")]
    InvalidName {
        /// The `source` as written.
        name: String,
    },
    /// The blob store did not answer or the read broke off.
    #[error("reading artifact {name} from the blob store failed")]
    Read {
        /// The `source` as written.
        name: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
}

/// Where the operator finds the files recipes download.
#[async_trait]
pub trait ArtifactStore: Send + Sync + Debug {
    /// Size and hashes of the artifact `name`; `None` when the store does not hold it.
    async fn describe(&self, name: &str) -> Result<Option<ArtifactFacts>, ArtifactError>;
}

/// What identifies one version of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    size: u64,
    e_tag: Option<String>,
    modified: DateTime<Utc>,
}

impl From<&ObjectMeta> for Version {
    fn from(meta: &ObjectMeta) -> Self {
        Self {
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            modified: meta.last_modified,
        }
    }
}

/// [`ArtifactStore`] over one `object_store` container: the patches container of the
/// backend's blob store (`BlobStores::patches`).
pub struct BlobArtifacts {
    store: Arc<dyn ObjectStore>,
    hashed: Mutex<HashMap<String, (Version, ArtifactFacts)>>,
}

impl Debug for BlobArtifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobArtifacts")
            .field("store", &self.store.to_string())
            .finish_non_exhaustive()
    }
}

impl BlobArtifacts {
    /// Artifacts in `store`, the container the streamer serves downloads from.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            hashed: Mutex::new(HashMap::new()),
        }
    }

    fn remembered(&self, name: &str, version: &Version) -> Option<ArtifactFacts> {
        let hashed = self
            .hashed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hashed
            .get(name)
            .filter(|(known, _)| known == version)
            .map(|(_, facts)| facts.clone())
    }

    fn remember(&self, name: &str, version: Version, facts: &ArtifactFacts) {
        self.hashed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), (version, facts.clone()));
    }
}

#[async_trait]
impl ArtifactStore for BlobArtifacts {
    async fn describe(&self, name: &str) -> Result<Option<ArtifactFacts>, ArtifactError> {
        let location = blob_path(name)?;
        let read_error = |source| ArtifactError::Read {
            name: name.to_owned(),
            source,
        };

        // Known version: one HEAD request.
        let meta = match self.store.head(&location).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(read_error(source)),
        };
        if let Some(facts) = self.remembered(name, &Version::from(&meta)) {
            return Ok(Some(facts));
        }

        // New or changed: read it once, hashing as it streams; the version is the one read.
        let object = match self.store.get(&location).await {
            Ok(object) => object,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(read_error(source)),
        };
        let version = Version::from(&object.meta);
        let (mut sha256, mut sha512, mut size) = (Sha256::new(), Sha512::new(), 0_u64);
        let mut pieces = object.into_stream();
        while let Some(piece) = pieces.next().await {
            let piece = piece.map_err(read_error)?;
            sha256.update(&piece);
            sha512.update(&piece);
            size += piece.len() as u64;
        }
        let facts = ArtifactFacts {
            size,
            sha256: hex(&sha256.finalize()),
            sha512: hex(&sha512.finalize()),
        };
        tracing::info!(artifact = name, size, "artifact hashed");
        self.remember(name, version, &facts);
        Ok(Some(facts))
    }
}

/// The container path of `name`, by the rules the streamer applies to a requested file id:
/// relative, no empty, `.` or `..` segment, no control characters.
pub fn blob_path(name: &str) -> Result<Path, ArtifactError> {
    let invalid = || ArtifactError::InvalidName {
        name: name.to_owned(),
    };
    let segment_ok = |part: &str| {
        !part.is_empty() && part != "." && part != ".." && !part.chars().any(char::is_control)
    };
    if name.starts_with('/') || !name.split('/').all(segment_ok) {
        return Err(invalid());
    }
    Path::parse(name).map_err(|_| invalid())
}

/// `source` of every download step, in order of first appearance, without repeats.
pub fn download_sources(spec: &Value) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let sections = spec
        .as_object()
        .into_iter()
        .flat_map(|s| s.values())
        .filter_map(Value::as_object);
    for actions in sections
        .flat_map(|s| s.values())
        .filter_map(Value::as_array)
    {
        for action in actions {
            if action.get("action").and_then(Value::as_str) == Some("singularDownload")
                && let Some(source) = action.get("source").and_then(Value::as_str)
                && !names.iter().any(|n| n == source)
            {
                names.push(source.to_owned());
            }
        }
    }
    names
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use object_store::PutPayload;
    use object_store::memory::InMemory;
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn a_stored_file_gets_its_size_and_hashes_and_a_missing_one_none() {
        let store = Arc::new(InMemory::new());
        store
            .put(&Path::from("fw/abc.bin"), PutPayload::from_static(b"abc"))
            .await
            .expect("put");
        let artifacts = BlobArtifacts::new(store.clone());
        let facts = artifacts
            .describe("fw/abc.bin")
            .await
            .expect("lookup")
            .expect("found");
        assert_eq!(facts.size, 3);
        assert_eq!(
            facts.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(facts.sha512.starts_with("ddaf35a193617aba"));
        assert_eq!(
            artifacts.describe("absent.zip").await.expect("lookup"),
            None
        );

        // A new version is hashed again.
        store
            .put(&Path::from("fw/abc.bin"), PutPayload::from_static(b"abcd"))
            .await
            .expect("put");
        let changed = artifacts.describe("fw/abc.bin").await.expect("lookup");
        assert_eq!(changed.map(|f| f.size), Some(4));
    }

    #[test]
    fn names_the_streamer_would_refuse_are_invalid() {
        for bad in [
            "",
            "/abs.zip",
            "a//b",
            "../up.zip",
            "a/./b",
            "dir/",
            "a\u{1}b",
        ] {
            assert!(blob_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(blob_path("patches-1/SPU.zip").is_ok());
    }

    #[test]
    fn sources_are_listed_once_in_order() {
        let spec = json!({"id": "r", "patch": {
            "transitPackage": [
                {"action": "singularDownload", "source": "b.zip", "destinationPath": "b"},
                {"action": "singularDownload", "source": "a.zip", "destinationPath": "a"},
            ],
            "installSteps": [
                {"action": "singularDownload", "source": "b.zip", "destinationPath": "b2"},
                {"shell": "bash", "command": "true"},
            ],
        }});
        assert_eq!(download_sources(&spec), vec!["b.zip", "a.zip"]);
    }
}
