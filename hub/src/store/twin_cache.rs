//! Decoded twins kept by the writer thread between batches.
//!
//! A reported patch then neither decodes the stored twin nor, when several patches of one
//! device share a batch, encodes it more than once: changed twins are written to the table
//! once, just before the batch commits. Only the writer thread touches the cache, and every
//! twin write goes through it, so a cached twin is always the newest state of the batch being
//! filled. When a batch fails to commit, the cache may hold writes that never became durable
//! and is emptied.

use std::collections::HashMap;

use redb::{ReadableTable, WriteTransaction};

use super::{TWINS, decode, encode, table_err};
use crate::error::StoreError;
use crate::twins::StoredTwin;

/// Encoded bytes of cached twins above which clean twins are dropped.
const MAX_CACHED_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug)]
struct Entry {
    twin: StoredTwin,
    /// Size of the twin as last encoded (for the cache bound).
    encoded_len: usize,
    /// Number of the batch that last used the entry.
    used: u64,
    /// Changed in the current batch and not yet written to the table.
    dirty: bool,
}

/// The cache; see the module documentation.
#[derive(Debug)]
pub(crate) struct TwinCache {
    entries: HashMap<String, Entry>,
    bytes: usize,
    max_bytes: usize,
    batch: u64,
    dirty: Vec<String>,
}

impl Default for TwinCache {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            max_bytes: MAX_CACHED_BYTES,
            batch: 0,
            dirty: Vec::new(),
        }
    }
}

impl TwinCache {
    /// Starts a new batch.
    pub(crate) fn begin(&mut self) {
        self.batch += 1;
    }

    /// The twin of `id`, from the cache or decoded from the table.
    pub(crate) fn get_mut(
        &mut self,
        txn: &WriteTransaction,
        id: &str,
    ) -> Result<Option<&mut StoredTwin>, StoreError> {
        if !self.entries.contains_key(id) {
            let table = txn
                .open_table(TWINS)
                .map_err(|source| table_err(TWINS, source))?;
            let Some(stored) = table.get(id)? else {
                return Ok(None);
            };
            let bytes = stored.value();
            let twin: StoredTwin = decode(id, bytes)?;
            self.bytes += bytes.len();
            let entry = Entry {
                twin,
                encoded_len: bytes.len(),
                used: self.batch,
                dirty: false,
            };
            self.entries.insert(id.to_string(), entry);
        }
        let batch = self.batch;
        Ok(self.entries.get_mut(id).map(|e| {
            e.used = batch;
            &mut e.twin
        }))
    }

    /// Notes that the twin of `id` (returned by [`TwinCache::get_mut`]) changed.
    pub(crate) fn changed(&mut self, id: &str) {
        if let Some(e) = self.entries.get_mut(id)
            && !e.dirty
        {
            e.dirty = true;
            self.dirty.push(id.to_string());
        }
    }

    /// Replaces (or creates) the twin of `id`.
    pub(crate) fn put(&mut self, id: &str, twin: StoredTwin) {
        let used = self.batch;
        match self.entries.get_mut(id) {
            Some(e) => {
                e.twin = twin;
                e.used = used;
            }
            None => {
                let entry = Entry {
                    twin,
                    encoded_len: 0,
                    used,
                    dirty: false,
                };
                self.entries.insert(id.to_string(), entry);
            }
        }
        self.changed(id);
    }

    /// Deletes the twin of `id` from the table and the cache; true when it existed.
    pub(crate) fn delete(&mut self, txn: &WriteTransaction, id: &str) -> Result<bool, StoreError> {
        let cached = self.entries.remove(id);
        if let Some(e) = &cached {
            self.bytes = self.bytes.saturating_sub(e.encoded_len);
        }
        let mut table = txn
            .open_table(TWINS)
            .map_err(|source| table_err(TWINS, source))?;
        let existed = table.remove(id)?.is_some();
        Ok(existed || cached.is_some_and(|e| e.dirty))
    }

    /// Writes every twin changed in this batch to the table.
    pub(crate) fn flush(&mut self, txn: &WriteTransaction) -> Result<(), StoreError> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut table = txn
            .open_table(TWINS)
            .map_err(|source| table_err(TWINS, source))?;
        for id in std::mem::take(&mut self.dirty) {
            let Some(e) = self.entries.get_mut(&id) else {
                continue; // deleted after it changed
            };
            if !e.dirty {
                continue;
            }
            let bytes = encode(&e.twin);
            table.insert(id.as_str(), bytes.as_slice())?;
            self.bytes = self.bytes.saturating_sub(e.encoded_len) + bytes.len();
            e.encoded_len = bytes.len();
            e.dirty = false;
        }
        Ok(())
    }

    /// Ends the batch: forgets everything when it did not commit, else drops the twins used
    /// longest ago while the cache is over its bound.
    pub(crate) fn end(&mut self, committed: bool) {
        if !committed {
            self.entries.clear();
            self.dirty.clear();
            self.bytes = 0;
            return;
        }
        if self.bytes <= self.max_bytes {
            return;
        }
        // Evict down to three quarters, oldest batches first.
        let mut by_age: Vec<(u64, String)> = self
            .entries
            .iter()
            .map(|(k, e)| (e.used, k.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, id) in by_age {
            if self.bytes <= self.max_bytes / 4 * 3 {
                break;
            }
            if let Some(e) = self.entries.remove(&id) {
                self.bytes = self.bytes.saturating_sub(e.encoded_len);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use redb::{Database, ReadableDatabase};
    use serde_json::json;

    use super::*;

    fn db() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TWINS).unwrap();
        txn.commit().unwrap();
        (dir, db)
    }

    fn stored(db: &Database, id: &str) -> Option<StoredTwin> {
        let read = db.begin_read().unwrap();
        let table = read.open_table(TWINS).unwrap();
        table
            .get(id)
            .unwrap()
            .map(|v| decode(id, v.value()).unwrap())
    }

    /// Runs one batch: `f` on the cache, then flush and commit (or abandon).
    fn batch(
        db: &Database,
        cache: &mut TwinCache,
        commit: bool,
        f: impl FnOnce(&mut TwinCache, &WriteTransaction),
    ) {
        let txn = db.begin_write().unwrap();
        cache.begin();
        f(cache, &txn);
        cache.flush(&txn).unwrap();
        if commit {
            txn.commit().unwrap();
        } else {
            drop(txn);
        }
        cache.end(commit);
    }

    fn bump(cache: &mut TwinCache, txn: &WriteTransaction, id: &str) {
        let twin = cache.get_mut(txn, id).unwrap().unwrap();
        twin.reported_version += 1;
        cache.changed(id);
    }

    #[test]
    fn changes_of_one_batch_are_written_once_at_flush_and_read_back_from_the_cache() {
        let (_dir, db) = db();
        let mut cache = TwinCache::default();
        batch(&db, &mut cache, true, |c, _| c.put("d1", StoredTwin::new()));
        assert_eq!(stored(&db, "d1").unwrap().reported_version, 1);

        batch(&db, &mut cache, true, |c, txn| {
            for _ in 0..3 {
                bump(c, txn, "d1");
            }
            assert_eq!(c.dirty, vec!["d1".to_string()]);
        });
        assert_eq!(stored(&db, "d1").unwrap().reported_version, 4);
        assert!(!cache.entries["d1"].dirty);
    }

    #[test]
    fn a_batch_that_does_not_commit_leaves_no_trace_in_the_cache() {
        let (_dir, db) = db();
        let mut cache = TwinCache::default();
        batch(&db, &mut cache, true, |c, _| c.put("d1", StoredTwin::new()));
        batch(&db, &mut cache, false, |c, txn| bump(c, txn, "d1"));
        assert!(cache.entries.is_empty());
        batch(&db, &mut cache, true, |c, txn| {
            assert_eq!(c.get_mut(txn, "d1").unwrap().unwrap().reported_version, 1);
        });
    }

    #[test]
    fn a_deleted_twin_is_gone_from_table_and_cache_and_can_be_created_again() {
        let (_dir, db) = db();
        let mut cache = TwinCache::default();
        batch(&db, &mut cache, true, |c, txn| {
            c.put("d1", StoredTwin::new());
            bump(c, txn, "d1");
        });
        batch(&db, &mut cache, true, |c, txn| {
            bump(c, txn, "d1");
            assert!(c.delete(txn, "d1").unwrap());
            assert!(c.get_mut(txn, "d1").unwrap().is_none());
        });
        assert!(stored(&db, "d1").is_none());
        batch(&db, &mut cache, true, |c, txn| {
            assert!(!c.delete(txn, "d1").unwrap());
            c.put("d1", StoredTwin::new());
        });
        assert_eq!(stored(&db, "d1").unwrap().reported_version, 1);
    }

    #[test]
    fn the_cache_drops_twins_used_longest_ago_when_over_its_bound() {
        let (_dir, db) = db();
        let mut cache = TwinCache {
            max_bytes: 256 * 1024,
            ..TwinCache::default()
        };
        let big = json!({ "blob": "x".repeat(4 * 1024) });
        let ids: Vec<String> = (0..150).map(|i| format!("d{i}")).collect();
        for chunk in ids.chunks(10) {
            batch(&db, &mut cache, true, |c, _| {
                for id in chunk {
                    let mut twin = StoredTwin::new();
                    twin.reported = big.clone();
                    c.put(id, twin);
                }
            });
        }
        assert!(cache.bytes <= cache.max_bytes, "{}", cache.bytes);
        assert!(cache.entries.contains_key("d149"));
        assert!(!cache.entries.contains_key("d0"));
        // An evicted twin is read back from the table.
        batch(&db, &mut cache, true, |c, txn| {
            assert_eq!(c.get_mut(txn, "d0").unwrap().unwrap().reported, big);
        });
    }
}
