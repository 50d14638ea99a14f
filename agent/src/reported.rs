//! The reported section the agent wants the hub to hold, and what the hub acknowledged.
//!
//! Writers change the wanted document; the link sends the difference to the last
//! acknowledged document as one patch at a time, so updates made while a patch is in
//! flight are coalesced into the next one. The wanted document is persisted so values set
//! while offline survive a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cloudpillar_protocol::twin::{diff, merge_patch};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::durable;

/// Wanted and acknowledged reported documents.
#[derive(Debug)]
pub struct Reported {
    inner: Mutex<Inner>,
    changed: Notify,
    path: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct Inner {
    wanted: Value,
    acked: Value,
}

impl Reported {
    /// Opens the document persisted in `state_dir` (or starts empty).
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join("reported.json");
        let wanted = match durable::read_json::<Value>(&path) {
            Ok(Some(v)) if v.is_object() => v,
            Ok(_) => Value::Object(Map::new()),
            Err(error) => {
                tracing::warn!(%error, "reported cache unreadable; starting empty");
                Value::Object(Map::new())
            }
        };
        Self {
            inner: Mutex::new(Inner {
                wanted,
                acked: Value::Object(Map::new()),
            }),
            changed: Notify::new(),
            path: Some(path),
        }
    }

    /// An in-memory document (tests).
    pub fn in_memory() -> Self {
        Self {
            inner: Mutex::new(Inner {
                wanted: Value::Object(Map::new()),
                acked: Value::Object(Map::new()),
            }),
            changed: Notify::new(),
            path: None,
        }
    }

    /// Replaces the top-level member `key`.
    pub fn set(&self, key: &str, value: Value) {
        self.update(|wanted| {
            if let Value::Object(map) = wanted {
                map.insert(key.to_owned(), value);
            }
        });
    }

    /// Merges `patch` (RFC 7396) into the wanted document.
    pub fn merge(&self, patch: &Value) {
        self.update(|wanted| merge_patch(wanted, patch));
    }

    fn update(&self, change: impl FnOnce(&mut Value)) {
        let snapshot = {
            let Ok(mut inner) = self.inner.lock() else {
                return;
            };
            let before = inner.wanted.clone();
            change(&mut inner.wanted);
            if inner.wanted == before {
                return;
            }
            inner.wanted.clone()
        };
        if let Some(path) = &self.path
            && let Err(error) = durable::write_json(path, &snapshot)
        {
            tracing::warn!(%error, "failed to persist reported cache");
        }
        self.changed.notify_one();
    }

    /// The wanted document.
    pub fn wanted(&self) -> Value {
        self.inner
            .lock()
            .map(|i| i.wanted.clone())
            .unwrap_or_default()
    }

    /// The smallest patch that brings the hub to the wanted document, if any.
    pub fn pending_patch(&self) -> Option<Value> {
        let inner = self.inner.lock().ok()?;
        diff(&inner.acked, &inner.wanted)
    }

    /// Records that the hub accepted `patch`.
    pub fn acknowledge(&self, patch: &Value) {
        if let Ok(mut inner) = self.inner.lock() {
            merge_patch(&mut inner.acked, patch);
        }
    }

    /// Sets what the hub holds, as read by a twin GET (after a reconnect).
    pub fn set_acknowledged(&self, hub_reported: Value) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.acked = cloudpillar_protocol::twin::without_meta(&hub_reported);
        }
        self.changed.notify_one();
    }

    /// Waits until the wanted document changes.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn updates_made_while_a_patch_is_in_flight_are_coalesced() {
        let r = Reported::in_memory();
        r.set("deviceState", json!("READY"));
        let first = r.pending_patch().expect("patch");
        assert_eq!(first, json!({"deviceState": "READY"}));
        // While `first` is in flight, three updates arrive.
        r.set("deviceState", json!("BUSY"));
        r.merge(&json!({"app": {"a": 1}}));
        r.merge(&json!({"app": {"b": 2}}));
        r.acknowledge(&first);
        let second = r.pending_patch().expect("one coalesced patch");
        assert_eq!(
            second,
            json!({"deviceState": "BUSY", "app": {"a": 1, "b": 2}})
        );
        r.acknowledge(&second);
        assert_eq!(r.pending_patch(), None);
    }

    #[test]
    fn after_reconnect_only_the_difference_to_the_hub_is_sent() {
        let r = Reported::in_memory();
        r.merge(&json!({"deviceState": "READY", "desiredVersionApplied": 42}));
        r.set_acknowledged(json!({"deviceState": "READY", "$version": 9, "old": 1}));
        assert_eq!(
            r.pending_patch(),
            Some(json!({"desiredVersionApplied": 42, "old": null}))
        );
    }

    #[test]
    fn wanted_document_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        Reported::open(dir.path()).merge(&json!({"app": {"x": "y"}}));
        let reopened = Reported::open(dir.path());
        assert_eq!(reopened.wanted(), json!({"app": {"x": "y"}}));
        assert_eq!(reopened.pending_patch(), Some(json!({"app": {"x": "y"}})));
    }
}
