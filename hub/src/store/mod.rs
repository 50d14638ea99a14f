//! The durable store: registry, twins, C2D queues, enrollments and the event log on `redb`.
//!
//! Every mutation runs as a closure on one writer thread (see [`writer`]), which packs the
//! closures that arrive together into one write transaction and commits it with fsync before
//! any of them is acknowledged (group commit). Reads use their own read transactions.

mod twin_cache;
pub mod writer;

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::c2d::{C2dMessage, Expiry};
use crate::error::StoreError;

use crate::events::EventBus;
pub use writer::{Batch, Pending, Retention, Writer};

/// Devices by id: JSON [`crate::registry::DeviceRecord`].
pub const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// Twins by device id: JSON [`crate::twins::StoredTwin`].
pub const TWINS: TableDefinition<&str, &[u8]> = TableDefinition::new("twins");
/// C2D messages by (device id, sequence): [`crate::c2d::C2dMessage`] records.
pub const C2D: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("c2d");
/// Event log by sequence number: JSON [`crate::events::HubEvent`].
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// DPS enrollments by kind and id (`individual/{id}`, `group/{id}`).
pub const ENROLLMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrollments");
/// Persistent MQTT sessions by device id: subscribed topic filters.
pub const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Counters: next event sequence, next C2D sequence.
pub const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// The opened database and its writer thread.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: Writer,
}

impl Store {
    /// Opens (or creates) `hub.redb` under `dir` and starts the writer thread.
    pub fn open(dir: &Path, bus: EventBus, retention: Retention) -> Result<Self, StoreError> {
        let path = dir.join("hub.redb");
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let db = Arc::new(db);
        create_tables(&db)?;
        let writer = Writer::start(db.clone(), bus, retention);
        Ok(Self { db, writer })
    }

    /// The database handle, to tell when every user (the writer thread too) has let go.
    pub(crate) fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// The group-commit writer.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Reads one JSON record from a string-keyed table.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let read = self.db.begin_read()?;
        let t = read
            .open_table(table)
            .map_err(|source| table_err(table, source))?;
        match t.get(key)? {
            Some(v) => decode(key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Reads every JSON record of a string-keyed table, in key order.
    pub fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let read = self.db.begin_read()?;
        let t = read
            .open_table(table)
            .map_err(|source| table_err(table, source))?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let key = k.value().to_string();
            let value = decode(&key, v.value())?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Reads pending C2D messages of one device in queue order, from queue sequence `from`.
    pub fn c2d_queue(&self, device: &str, from: u64) -> Result<Vec<(u64, C2dMessage)>, StoreError> {
        let read = self.db.begin_read()?;
        let t = read
            .open_table(C2D)
            .map_err(|source| table_err(C2D, source))?;
        let mut out = Vec::new();
        for row in t.range((device, from)..=(device, u64::MAX))? {
            let (k, v) = row?;
            let seq = k.value().1;
            let key = format!("{device}/{seq}");
            out.push((seq, C2dMessage::from_record(&key, v.value())?));
        }
        Ok(out)
    }

    /// The queue sequence numbers and expiries of one device's pending C2D messages.
    pub fn c2d_expiries(&self, device: &str) -> Result<Vec<(u64, Expiry)>, StoreError> {
        let read = self.db.begin_read()?;
        let t = read
            .open_table(C2D)
            .map_err(|source| table_err(C2D, source))?;
        let mut out = Vec::new();
        for row in t.range((device, 0)..=(device, u64::MAX))? {
            let (k, v) = row?;
            out.push((k.value().1, Expiry::of_record(device, v.value())?));
        }
        Ok(out)
    }

    /// Reads up to `limit` events with sequence number `from` or later.
    pub fn events_from<T: DeserializeOwned>(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let read = self.db.begin_read()?;
        let t = read
            .open_table(EVENTS)
            .map_err(|source| table_err(EVENTS, source))?;
        let mut out = Vec::new();
        for row in t.range(from..)?.take(limit) {
            let (k, v) = row?;
            out.push(decode(&k.value().to_string(), v.value())?);
        }
        Ok(out)
    }

    /// Reads a counter (0 when never written).
    pub fn counter(&self, name: &str) -> Result<u64, StoreError> {
        let read = self.db.begin_read()?;
        let t = read
            .open_table(COUNTERS)
            .map_err(|source| table_err(COUNTERS, source))?;
        Ok(t.get(name)?.map(|v| v.value()).unwrap_or(0))
    }
}

fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(DEVICES)
            .map_err(|source| table_err(DEVICES, source))?;
        txn.open_table(TWINS)
            .map_err(|source| table_err(TWINS, source))?;
        txn.open_table(C2D)
            .map_err(|source| table_err(C2D, source))?;
        txn.open_table(EVENTS)
            .map_err(|source| table_err(EVENTS, source))?;
        txn.open_table(ENROLLMENTS)
            .map_err(|source| table_err(ENROLLMENTS, source))?;
        txn.open_table(SESSIONS)
            .map_err(|source| table_err(SESSIONS, source))?;
        txn.open_table(COUNTERS)
            .map_err(|source| table_err(COUNTERS, source))?;
    }
    txn.commit()?;
    Ok(())
}

/// Maps a table-open failure to [`StoreError::Table`].
pub fn table_err<K: redb::Key + 'static, V: redb::Value + 'static>(
    def: TableDefinition<K, V>,
    source: redb::TableError,
) -> StoreError {
    let table = match def.name() {
        "devices" => "devices",
        "twins" => "twins",
        "c2d" => "c2d",
        "events" => "events",
        "enrollments" => "enrollments",
        "sessions" => "sessions",
        _ => "counters",
    };
    StoreError::Table { table, source }
}

/// Decodes a JSON record.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        key: key.to_string(),
        source,
    })
}

/// Encodes a record as JSON. Serializing our own record types cannot fail.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// Reads one JSON record inside a write transaction.
pub fn txn_get<T: DeserializeOwned>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let t = txn
        .open_table(table)
        .map_err(|source| table_err(table, source))?;
    let found = t.get(key)?;
    match found {
        Some(v) => decode(key, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Writes one JSON record inside a write transaction.
pub fn txn_put<T: Serialize>(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let mut t = txn
        .open_table(table)
        .map_err(|source| table_err(table, source))?;
    t.insert(key, encode(value).as_slice())?;
    Ok(())
}

/// Deletes one record inside a write transaction; true when it existed.
pub fn txn_delete(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<bool, StoreError> {
    let mut t = txn
        .open_table(table)
        .map_err(|source| table_err(table, source))?;
    let existed = t.remove(key)?.is_some();
    Ok(existed)
}

/// Takes the next value of a counter inside a write transaction (first value is 1).
pub fn txn_next(txn: &WriteTransaction, name: &str) -> Result<u64, StoreError> {
    let mut t = txn
        .open_table(COUNTERS)
        .map_err(|source| table_err(COUNTERS, source))?;
    let next = t.get(name)?.map(|v| v.value()).unwrap_or(0) + 1;
    t.insert(name, next)?;
    Ok(next)
}
