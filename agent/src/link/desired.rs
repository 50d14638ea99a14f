//! Desired-property tracking by `$version` (F04).
//!
//! The last applied desired document and its version are persisted. A full twin read
//! is applied once when its version is newer; a patch is applied only when it is the
//! next version, otherwise a gap means notifications were missed and a full read is due.
//! `desiredVersionApplied` therefore never goes down.

use std::path::{Path, PathBuf};

use cloudpillar_protocol::twin::{diff, merge_patch, section_version, without_meta};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::durable::{self, DurableError};

/// What to do with an incoming desired document or patch.
#[derive(Debug, Clone, PartialEq)]
pub enum DesiredChange {
    /// Nothing new: an old or repeated version.
    Stale,
    /// A version was skipped: read the full twin.
    Gap,
    /// Apply: `changes` is the patch from the previous applied document to the new one.
    Apply {
        /// The new version.
        version: u64,
        /// Difference from the last applied document (what changed).
        changes: Value,
    },
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Persisted {
    version: u64,
    doc: Value,
}

/// The last applied desired section.
#[derive(Debug)]
pub struct DesiredTracker {
    path: PathBuf,
    state: Persisted,
}

impl DesiredTracker {
    /// Opens the tracker persisted in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, DurableError> {
        let path = state_dir.join("desired.json");
        let state = durable::read_json(&path)?.unwrap_or_default();
        Ok(Self { path, state })
    }

    /// The version last applied (0 before any).
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// The last applied document, without `$version` and `$metadata`.
    pub fn document(&self) -> &Value {
        &self.state.doc
    }

    /// A full desired section from a twin read.
    pub fn offer_full(&mut self, desired: &Value) -> Result<DesiredChange, DurableError> {
        let Some(version) = section_version(desired) else {
            return Ok(DesiredChange::Stale);
        };
        if version <= self.state.version {
            return Ok(DesiredChange::Stale);
        }
        let doc = without_meta(desired);
        self.commit(version, doc)
    }

    /// A desired patch notification carrying `version` (from its topic or body).
    pub fn offer_patch(
        &mut self,
        patch: &Value,
        version: Option<u64>,
    ) -> Result<DesiredChange, DurableError> {
        let Some(version) = version.or_else(|| section_version(patch)) else {
            return Ok(DesiredChange::Gap);
        };
        if version <= self.state.version {
            return Ok(DesiredChange::Stale);
        }
        if version != self.state.version + 1 || self.state.version == 0 {
            return Ok(DesiredChange::Gap);
        }
        let mut doc = self.state.doc.clone();
        merge_patch(&mut doc, &without_meta(patch));
        self.commit(version, doc)
    }

    fn commit(&mut self, version: u64, doc: Value) -> Result<DesiredChange, DurableError> {
        let base = if self.state.doc.is_object() {
            self.state.doc.clone()
        } else {
            Value::Object(Default::default())
        };
        let changes = diff(&base, &doc).unwrap_or_else(|| Value::Object(Default::default()));
        let next = Persisted { version, doc };
        durable::write_json(&self.path, &next)?;
        self.state = next;
        Ok(DesiredChange::Apply { version, changes })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn f04_after_an_outage_the_full_twin_is_applied_once_against_the_old_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = DesiredTracker::open(dir.path()).expect("open");
        let v40 = json!({"logLevel": "debug", "rollout": {"id": "ro-6"}, "$version": 40});
        assert!(matches!(
            t.offer_full(&v40).expect("apply"),
            DesiredChange::Apply { version: 40, .. }
        ));
        // Link down: v41 and v42 are written meanwhile; link up: full GET returns v42.
        let v42 = json!({"logLevel": "info", "rollout": {"id": "ro-7"}, "$version": 42});
        let change = t.offer_full(&v42).expect("apply");
        assert_eq!(
            change,
            DesiredChange::Apply {
                version: 42,
                changes: json!({"logLevel": "info", "rollout": {"id": "ro-7"}})
            }
        );
        assert_eq!(
            t.offer_full(&v42).expect("again"),
            DesiredChange::Stale,
            "applied once"
        );
        // A late notification for v41 changes nothing.
        let late = t
            .offer_patch(&json!({"logLevel": "info"}), Some(41))
            .expect("late");
        assert_eq!(late, DesiredChange::Stale);
        assert_eq!(
            DesiredTracker::open(dir.path()).expect("reopen").version(),
            42
        );
    }

    #[test]
    fn patches_apply_in_sequence_and_gaps_ask_for_a_full_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = DesiredTracker::open(dir.path()).expect("open");
        t.offer_full(&json!({"a": 1, "$version": 5})).expect("full");
        let next = t
            .offer_patch(&json!({"b": 2, "$version": 6}), Some(6))
            .expect("patch");
        assert_eq!(
            next,
            DesiredChange::Apply {
                version: 6,
                changes: json!({"b": 2})
            }
        );
        assert_eq!(t.document(), &json!({"a": 1, "b": 2}));
        assert_eq!(
            t.offer_patch(&json!({"c": 3}), Some(8)).expect("gap"),
            DesiredChange::Gap
        );
        assert_eq!(t.version(), 6, "a gap applies nothing");
        let del = t.offer_patch(&json!({"a": null}), Some(7)).expect("delete");
        assert_eq!(
            del,
            DesiredChange::Apply {
                version: 7,
                changes: json!({"a": null})
            }
        );
    }

    #[test]
    fn a_patch_before_any_full_read_asks_for_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = DesiredTracker::open(dir.path()).expect("open");
        assert_eq!(
            t.offer_patch(&json!({"a": 1}), Some(1)).expect("gap"),
            DesiredChange::Gap
        );
    }
}
