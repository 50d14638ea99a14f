//! Durable consumer checkpoints, kept as small JSON objects in the state container.
//!
//! A checkpoint names the next event to read: every event before it is completely handled.
//! Work that started but has not finished is recorded next to it as `progress`, keyed by the
//! sequence number of the event that started it, so a restarted consumer re-reads those events
//! and resumes each piece of work from its recorded progress instead of from the beginning.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::blob::{BlobError, Container};
use crate::partition::Partition;

/// Where a consumer stands in the event stream.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint<P> {
    /// Sequence number to read next; every event before it is done.
    pub next: u64,
    /// Partly done work started by events at or after `next`, by sequence number.
    #[serde(default = "BTreeMap::new")]
    pub progress: BTreeMap<u64, P>,
}

impl<P> Default for Checkpoint<P> {
    fn default() -> Self {
        Self {
            next: 1,
            progress: BTreeMap::new(),
        }
    }
}

/// Errors loading or saving a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The blob could not be read or written.
    #[error("checkpoint {path} not accessible")]
    Store {
        /// Checkpoint path in the state container.
        path: String,
        /// Underlying blob error.
        #[source]
        source: BlobError,
    },
    /// The stored document is not a checkpoint.
    #[error("checkpoint {path} is corrupt")]
    Corrupt {
        /// Checkpoint path in the state container.
        path: String,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// The checkpoint of one consumer (`streamer`, `writer`) for one partition.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    container: Container,
    path: String,
}

impl CheckpointStore {
    /// The checkpoint of `consumer` for `partition` in `container`.
    pub fn new(container: Container, consumer: &str, partition: Partition) -> Self {
        Self {
            container,
            path: format!("checkpoints/{consumer}/{partition}.json"),
        }
    }

    /// Path of the checkpoint object in its container.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The saved checkpoint, or the start of the stream when none was saved.
    pub async fn load<P: DeserializeOwned>(&self) -> Result<Checkpoint<P>, CheckpointError> {
        let bytes = match self.container.read_all(&self.path).await {
            Ok(bytes) => bytes,
            Err(BlobError::NotFound { .. }) => return Ok(Checkpoint::default()),
            Err(source) => {
                return Err(CheckpointError::Store {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Corrupt {
            path: self.path.clone(),
            source,
        })
    }

    /// Replaces the saved checkpoint (atomic, durable when the put returns).
    pub async fn save<P: Serialize>(
        &self,
        checkpoint: &Checkpoint<P>,
    ) -> Result<(), CheckpointError> {
        let bytes = serde_json::to_vec(checkpoint).map_err(|source| CheckpointError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        self.container
            .put(&self.path, Bytes::from(bytes))
            .await
            .map_err(|source| CheckpointError::Store {
                path: self.path.clone(),
                source,
            })
    }
}
