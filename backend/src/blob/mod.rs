//! Blob storage for patch files, uploaded files and service state.
//!
//! Every backend sits behind the `object_store` crate's [`ObjectStore`] trait; a [`Container`]
//! pairs one store with the name it is known by. The filesystem store is the default (one
//! directory per container, fsync on every write); Azure Blob Storage maps each container to an
//! Azure container of the same name and is tested against Azurite.

mod azure;
mod error;
mod upload;

pub use azure::{AZURITE_ACCOUNT, AZURITE_KEY, AzureBlobConfig};
pub use error::BlobError;
pub use upload::{CommittedUpload, UploadAssembler, UploadChunk, UploadProgress};

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Default container for files devices download (patches, packages).
pub const PATCHES: &str = "patches";
/// Default container for files devices upload (logs, diagnostics).
pub const UPLOADS: &str = "uploads";
/// Default container for service state (streamer and writer checkpoints, upload staging).
pub const STATE: &str = "state";

/// Where the blob containers live.
#[derive(Debug, Clone)]
pub enum BlobConfig {
    /// One directory per container under `root`.
    Filesystem {
        /// Root directory; created when missing.
        root: PathBuf,
    },
    /// Azure Blob Storage (or Azurite).
    Azure(AzureBlobConfig),
}

/// One named container of a blob store.
#[derive(Debug, Clone)]
pub struct Container {
    name: String,
    store: Arc<dyn ObjectStore>,
}

/// The containers the backend services use.
#[derive(Debug, Clone)]
pub struct BlobStores {
    /// Files devices download.
    pub patches: Container,
    /// Files devices upload.
    pub uploads: Container,
    /// Checkpoints and upload staging.
    pub state: Container,
}

impl BlobStores {
    /// Opens (and on Azure, creates when missing) the three default containers.
    pub async fn open(config: &BlobConfig) -> Result<Self, BlobError> {
        Self::open_prefixed(config, "").await
    }

    /// Opens the containers named `{prefix}patches`, `{prefix}uploads` and `{prefix}state`,
    /// so several installations (or tests) can share one storage account.
    pub async fn open_prefixed(config: &BlobConfig, prefix: &str) -> Result<Self, BlobError> {
        Ok(Self {
            patches: Container::open(config, &format!("{prefix}{PATCHES}")).await?,
            uploads: Container::open(config, &format!("{prefix}{UPLOADS}")).await?,
            state: Container::open(config, &format!("{prefix}{STATE}")).await?,
        })
    }
}

/// Azure's rules for container names, applied to every store so that a name (and a
/// container prefix) works on both and never leaves the filesystem store's root: 3 to 63
/// lowercase letters, digits and single hyphens, starting and ending with a letter or digit.
fn check_container_name(name: &str) -> Result<(), BlobError> {
    let fits = (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if fits {
        return Ok(());
    }
    Err(BlobError::Open {
        container: name.to_owned(),
        reason: "a container name (with its prefix) must be 3 to 63 lowercase letters, digits \
                 and single hyphens, starting and ending with a letter or digit"
            .into(),
        source: None,
    })
}

impl Container {
    /// Opens the container `name` of the configured store, creating it when missing.
    pub async fn open(config: &BlobConfig, name: &str) -> Result<Self, BlobError> {
        check_container_name(name)?;
        let store: Arc<dyn ObjectStore> = match config {
            BlobConfig::Filesystem { root } => {
                let dir = root.join(name);
                std::fs::create_dir_all(&dir).map_err(|source| BlobError::Open {
                    container: name.to_owned(),
                    reason: format!("cannot create directory {}", dir.display()),
                    source: Some(Box::new(source)),
                })?;
                let store = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|source| BlobError::Open {
                        container: name.to_owned(),
                        reason: format!("cannot use directory {}", dir.display()),
                        source: Some(Box::new(source)),
                    })?
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                Arc::new(store)
            }
            BlobConfig::Azure(azure) => Arc::new(azure.open_container(name).await?),
        };
        Ok(Self {
            name: name.to_owned(),
            store,
        })
    }

    /// Wraps an existing store (for example `object_store::memory::InMemory`) under `name`.
    pub fn from_store(name: impl Into<String>, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            name: name.into(),
            store,
        }
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying store, for operations this type does not wrap.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Size of the object at `path` in bytes.
    pub async fn size(&self, path: &str) -> Result<u64, BlobError> {
        let location = self.location(path)?;
        match self.store.head(&location).await {
            Ok(meta) => Ok(meta.size),
            Err(error) => Err(self.read_error(path, error)),
        }
    }

    /// True when an object exists at `path`.
    pub async fn exists(&self, path: &str) -> Result<bool, BlobError> {
        match self.size(path).await {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The bytes of `range` of the object at `path`.
    pub async fn read_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        let location = self.location(path)?;
        self.store
            .get_range(&location, range)
            .await
            .map_err(|error| self.read_error(path, error))
    }

    /// The whole object at `path` in memory (small objects only: checkpoints, test data).
    pub async fn read_all(&self, path: &str) -> Result<Bytes, BlobError> {
        let location = self.location(path)?;
        let result = self
            .store
            .get(&location)
            .await
            .map_err(|e| self.read_error(path, e))?;
        result
            .bytes()
            .await
            .map_err(|error| self.read_error(path, error))
    }

    /// The object at `path` as a stream of byte pieces, for reading objects of any size.
    pub async fn read_stream(
        &self,
        path: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let location = self.location(path)?;
        let result = self
            .store
            .get(&location)
            .await
            .map_err(|e| self.read_error(path, e))?;
        let (container, path) = (self.name.clone(), path.to_owned());
        Ok(result
            .into_stream()
            .map(move |piece| {
                piece.map_err(|source| BlobError::Read {
                    container: container.clone(),
                    path: path.clone(),
                    source,
                })
            })
            .boxed())
    }

    /// Writes `data` as the whole object at `path`, replacing it atomically.
    pub async fn put(&self, path: &str, data: Bytes) -> Result<(), BlobError> {
        let location = self.location(path)?;
        self.store
            .put(&location, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|source| self.write_error(path, source))
    }

    /// Starts a block (multipart) write of the object at `path`; nothing is visible until
    /// [`BlobWriter::finish`].
    pub async fn writer(&self, path: &str) -> Result<BlobWriter, BlobError> {
        let location = self.location(path)?;
        let upload = self
            .store
            .put_multipart(&location)
            .await
            .map_err(|source| self.write_error(path, source))?;
        Ok(BlobWriter {
            inner: WriteMultipart::new(upload),
            container: self.name.clone(),
            path: path.to_owned(),
        })
    }

    /// Deletes the object at `path`; a missing object counts as deleted.
    pub async fn delete(&self, path: &str) -> Result<(), BlobError> {
        let location = self.location(path)?;
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(self.write_error(path, source)),
        }
    }

    /// Paths of all objects under `prefix` (a folder path, no trailing slash).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let location = self.location(prefix)?;
        let mut listing = self.store.list(Some(&location));
        let mut paths = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|error| self.read_error(prefix, error))?;
            paths.push(meta.location.to_string());
        }
        paths.sort();
        Ok(paths)
    }

    fn location(&self, path: &str) -> Result<Path, BlobError> {
        check_path(path)?;
        Path::parse(path).map_err(|_| BlobError::InvalidPath {
            path: path.to_owned(),
        })
    }

    fn read_error(&self, path: &str, source: object_store::Error) -> BlobError {
        match source {
            object_store::Error::NotFound { .. } => BlobError::NotFound {
                container: self.name.clone(),
                path: path.to_owned(),
            },
            source => BlobError::Read {
                container: self.name.clone(),
                path: path.to_owned(),
                source,
            },
        }
    }

    fn write_error(&self, path: &str, source: object_store::Error) -> BlobError {
        BlobError::Write {
            container: self.name.clone(),
            path: path.to_owned(),
            source,
        }
    }
}

/// A block write in progress (Azure blocks, or a staged local file).
#[derive(Debug)]
pub struct BlobWriter {
    inner: WriteMultipart,
    container: String,
    path: String,
}

impl BlobWriter {
    /// Appends `data`, waiting when too many blocks are in flight.
    pub async fn write(&mut self, data: Bytes) -> Result<(), BlobError> {
        const MAX_BLOCKS_IN_FLIGHT: usize = 4;
        self.inner
            .wait_for_capacity(MAX_BLOCKS_IN_FLIGHT)
            .await
            .map_err(|source| BlobError::Write {
                container: self.container.clone(),
                path: self.path.clone(),
                source,
            })?;
        self.inner.put(data);
        Ok(())
    }

    /// Commits the blocks written so far as the object.
    pub async fn finish(self) -> Result<(), BlobError> {
        let Self {
            inner,
            container,
            path,
        } = self;
        inner
            .finish()
            .await
            .map(|_| ())
            .map_err(|source| BlobError::Write {
                container,
                path,
                source,
            })
    }

    /// Drops the blocks written so far.
    pub async fn abort(self) -> Result<(), BlobError> {
        let Self {
            inner,
            container,
            path,
        } = self;
        inner.abort().await.map_err(|source| BlobError::Write {
            container,
            path,
            source,
        })
    }
}

/// Checks an object path: `/`-separated segments, none of them empty, `.` or `..`, and no
/// control characters.
pub fn check_path(path: &str) -> Result<(), BlobError> {
    let valid_part = |part: &str| {
        !part.is_empty() && part != "." && part != ".." && !part.chars().any(char::is_control)
    };
    if path.split('/').all(valid_part) {
        Ok(())
    } else {
        Err(BlobError::InvalidPath {
            path: path.to_owned(),
        })
    }
}
