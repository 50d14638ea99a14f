//! Durable consumer checkpoints, kept as small JSON objects in the state container.
//!
//! A checkpoint names the next event to read: every event before it is completely handled.
//! Work that started but has not finished is recorded next to it as `progress`, keyed by the
//! sequence number of the event that started it, so a restarted consumer re-reads those events
//! and resumes each piece of work from its recorded progress instead of from the beginning.
//!
//! Each replica layout keeps its own checkpoints (`{index}-of-{count}`). A replica with no
//! checkpoint of its own, or whose own checkpoint is behind a layout that ran after it, starts
//! where the layout that got furthest had safely got to: the lowest `next` of a complete set of
//! that layout's checkpoints, with the recorded work of its own devices. Events between that
//! point and where each old replica stood are handled again, which is harmless; starting later
//! could lose events.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::blob::{BlobError, Container};
use crate::partition::Partition;

/// Partly done work a checkpoint records, as a replica of another layout inherits it.
pub trait Progress {
    /// True when this work is `partition`'s to finish (its device is in `partition`).
    fn belongs_to(&self, partition: Partition) -> bool;
}

impl Progress for () {
    fn belongs_to(&self, _partition: Partition) -> bool {
        true
    }
}

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
    folder: String,
    path: String,
    partition: Partition,
}

impl CheckpointStore {
    /// The checkpoint of `consumer` for `partition` in `container`.
    pub fn new(container: Container, consumer: &str, partition: Partition) -> Self {
        let folder = format!("checkpoints/{consumer}");
        Self {
            container,
            path: format!("{folder}/{partition}.json"),
            folder,
            partition,
        }
    }

    /// Path of the checkpoint object in its container.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where this replica starts: its own saved checkpoint, or the point a later or the only
    /// other replica layout had safely reached (see the module documentation), or the start of
    /// the stream when no consumer of this kind saved anything.
    pub async fn load<P: DeserializeOwned + Progress>(
        &self,
    ) -> Result<Checkpoint<P>, CheckpointError> {
        let own = self.read::<P>(&self.path).await?;
        let inherited = self.furthest_other_layout::<P>().await?;
        match (own, inherited) {
            (Some(own), Some((count, other))) if other.next > own.next => {
                tracing::info!(%self.partition, from = other.next, own = own.next, count,
                    "checkpoint behind a later replica layout; continuing from that layout");
                Ok(other)
            }
            (Some(own), _) => Ok(own),
            (None, Some((count, other))) => {
                tracing::info!(%self.partition, from = other.next, count,
                    "no checkpoint of this layout; continuing from the previous layout");
                Ok(other)
            }
            (None, None) => Ok(Checkpoint::default()),
        }
    }

    /// Among the other layouts with a checkpoint for every replica, the one whose slowest
    /// replica got furthest: its lowest `next` and the recorded work of this partition's
    /// devices from there on, with the layout's replica count.
    async fn furthest_other_layout<P: DeserializeOwned + Progress>(
        &self,
    ) -> Result<Option<(u32, Checkpoint<P>)>, CheckpointError> {
        let listed =
            self.container
                .list(&self.folder)
                .await
                .map_err(|source| CheckpointError::Store {
                    path: self.folder.clone(),
                    source,
                })?;
        let mut layouts: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for path in listed {
            let Some(partition) = layout_of(&self.folder, &path) else {
                continue;
            };
            if partition.count() != self.partition.count() {
                layouts.entry(partition.count()).or_default().push(path);
            }
        }
        let mut best: Option<(u32, Checkpoint<P>)> = None;
        for (count, paths) in layouts {
            if paths.len() != count as usize {
                continue;
            }
            let mut merged = Checkpoint {
                next: u64::MAX,
                progress: BTreeMap::new(),
            };
            for path in &paths {
                let Some(saved) = self.read::<P>(path).await? else {
                    continue;
                };
                merged.next = merged.next.min(saved.next);
                merged.progress.extend(saved.progress);
            }
            if merged.next != u64::MAX && best.as_ref().is_none_or(|(_, b)| merged.next > b.next) {
                best = Some((count, merged));
            }
        }
        Ok(best.map(|(count, mut merged)| {
            let partition = self.partition;
            merged.progress = merged.progress.split_off(&merged.next);
            merged.progress.retain(|_, work| work.belongs_to(partition));
            (count, merged)
        }))
    }

    async fn read<P: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<Checkpoint<P>>, CheckpointError> {
        let bytes = match self.container.read_all(path).await {
            Ok(bytes) => bytes,
            Err(BlobError::NotFound { .. }) => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Store {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| CheckpointError::Corrupt {
                path: path.to_owned(),
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

/// The partition a checkpoint path `{folder}/{index}-of-{count}.json` belongs to.
fn layout_of(folder: &str, path: &str) -> Option<Partition> {
    let name = path.strip_prefix(folder)?.strip_prefix('/')?;
    let (index, count) = name.strip_suffix(".json")?.split_once("-of-")?;
    Partition::new(index.parse().ok()?, count.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobConfig;

    async fn state() -> (tempfile::TempDir, Container) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = BlobConfig::Filesystem {
            root: dir.path().to_owned(),
        };
        let state = Container::open(&config, "state").await.expect("state");
        (dir, state)
    }

    async fn save(state: &Container, index: u32, count: u32, next: u64) {
        let partition = Partition::new(index, count).expect("partition");
        let store = CheckpointStore::new(state.clone(), "writer", partition);
        let checkpoint: Checkpoint<()> = Checkpoint {
            next,
            progress: BTreeMap::new(),
        };
        store.save(&checkpoint).await.expect("saved");
    }

    async fn start(state: &Container, index: u32, count: u32) -> u64 {
        let partition = Partition::new(index, count).expect("partition");
        let store = CheckpointStore::new(state.clone(), "writer", partition);
        store.load::<()>().await.expect("loaded").next
    }

    #[tokio::test]
    async fn a_new_layout_starts_at_the_slowest_replica_of_the_layout_that_got_furthest() {
        let (_dir, state) = state().await;
        assert_eq!(
            start(&state, 0, 1).await,
            1,
            "nothing saved: the stream's start"
        );

        save(&state, 0, 1, 100).await;
        assert_eq!(start(&state, 1, 2).await, 100, "1 to 2 replicas");

        // Two replicas ran on; going back to one continues from the slower of them.
        save(&state, 0, 2, 600).await;
        save(&state, 1, 2, 550).await;
        assert_eq!(start(&state, 0, 1).await, 550, "own checkpoint is behind");
        assert_eq!(start(&state, 1, 2).await, 550, "own checkpoint stands");

        // A layout missing a replica's checkpoint says nothing about that replica's devices.
        save(&state, 0, 3, 900).await;
        assert_eq!(start(&state, 0, 4).await, 550);
    }

    #[test]
    fn only_checkpoint_names_of_valid_partitions_are_layouts() {
        let folder = "checkpoints/streamer";
        let of = |name: &str| layout_of(folder, &format!("{folder}/{name}"));
        assert_eq!(of("1-of-3.json"), Partition::new(1, 3).ok());
        assert_eq!(of("0-of-1.json"), Some(Partition::all()));
        for bad in [
            "3-of-3.json",
            "1-of-3.tmp",
            "x-of-2.json",
            "1of2.json",
            "a/0-of-1.json",
        ] {
            assert_eq!(of(bad), None, "{bad}");
        }
    }
}
