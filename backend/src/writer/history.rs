//! The MongoDB collections holding device history.
//!
//! Only plain inserts, finds and index creation are used, so any MongoDB wire-protocol server
//! works: FerretDB in tests, MongoDB Atlas in production (a `mongodb+srv://` URL with
//! credentials and `tls=true`, e.g. `mongodb+srv://user:pass@cluster0.example.mongodb.net/`).

use std::time::Duration;

use mongodb::bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

/// Reported changes, desired changes and connection state transitions.
pub const VERSIONS: &str = "versions";
/// D2C log records and uploaded log files.
pub const LOGS: &str = "logs";
/// Other D2C messages.
pub const TELEMETRY: &str = "telemetry";
/// Records the database refused, each with the reason, so that one refused record never
/// holds up the rest of the stream.
pub const REFUSED: &str = "refused";

/// Longest document text kept for a refused record.
const REFUSED_TEXT_LIMIT: usize = 64 * 1024;

/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11000;

/// Errors of history writes.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The connection URL is invalid.
    #[error("mongodb url is invalid")]
    Url {
        /// Parse error.
        #[source]
        source: mongodb::error::Error,
    },
    /// Indexes could not be created.
    #[error("creating indexes on {collection} failed")]
    Index {
        /// Collection name.
        collection: &'static str,
        /// Driver error.
        #[source]
        source: mongodb::error::Error,
    },
    /// An insert failed for a reason other than a record already being there.
    #[error("inserting {count} records into {collection} failed")]
    Insert {
        /// Collection name.
        collection: &'static str,
        /// Number of records in the failed insert.
        count: usize,
        /// Driver error.
        #[source]
        source: mongodb::error::Error,
    },
}

/// The history database.
#[derive(Debug, Clone)]
pub struct History {
    database: Database,
}

impl History {
    /// Connects to `url` and uses database `name`. The connection is lazy: an unreachable
    /// server shows up as errors of later calls.
    pub async fn connect(url: &str, name: &str) -> Result<Self, HistoryError> {
        let mut options = ClientOptions::parse(url)
            .await
            .map_err(|source| HistoryError::Url { source })?;
        options
            .app_name
            .get_or_insert_with(|| "cloudpillar-writer".to_owned());
        // Fail a call within seconds while the server is away, so the caller's backoff runs.
        options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(5));
        options
            .connect_timeout
            .get_or_insert(Duration::from_secs(5));
        let client =
            Client::with_options(options).map_err(|source| HistoryError::Url { source })?;
        Ok(Self {
            database: client.database(name),
        })
    }

    /// The database, for readers.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// One of [`VERSIONS`], [`LOGS`] or [`TELEMETRY`].
    pub fn collection(&self, name: &str) -> Collection<Document> {
        self.database.collection(name)
    }

    /// Creates the indexes on device and time that are missing.
    ///
    /// Existing indexes are listed first and left alone: FerretDB 1.24 drops the connection
    /// when asked to create an index that already exists.
    pub async fn ensure_indexes(&self) -> Result<(), HistoryError> {
        for collection in [VERSIONS, LOGS, TELEMETRY] {
            let handle = self.collection(collection);
            let existing = match handle.list_index_names().await {
                Ok(names) => names,
                // A collection that does not exist yet has no indexes.
                Err(error) if is_namespace_not_found(&error) => Vec::new(),
                Err(source) => return Err(HistoryError::Index { collection, source }),
            };
            let wanted = [
                (doc! { "deviceId": 1, "time": 1 }, "device_time"),
                (doc! { "time": 1 }, "time"),
            ];
            for (keys, name) in wanted {
                if existing.iter().any(|have| have == name) {
                    continue;
                }
                let index = IndexModel::builder()
                    .keys(keys)
                    .options(IndexOptions::builder().name(name.to_owned()).build())
                    .build();
                handle
                    .create_index(index)
                    .await
                    .map_err(|source| HistoryError::Index { collection, source })?;
            }
        }
        Ok(())
    }

    /// Inserts `records`; records whose `_id` is already stored are skipped, so a batch may be
    /// written again after a failure without duplicating anything.
    ///
    /// A record the database refuses for itself (a per-record write error other than a
    /// duplicate, such as a key or size it does not take) is stored in [`REFUSED`] instead,
    /// with the error and the record's text, and the insert counts as done: retrying would
    /// refuse it again and hold up every record after it. A failure of the whole call (the
    /// server away, a write concern not met) is returned for the caller to retry.
    pub async fn insert(
        &self,
        collection: &'static str,
        records: &[Document],
    ) -> Result<(), HistoryError> {
        if records.is_empty() {
            return Ok(());
        }
        let count = records.len();
        let error = match self
            .collection(collection)
            .insert_many(records)
            .ordered(false)
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        let Some(refusals) = record_refusals(&error) else {
            return Err(HistoryError::Insert {
                collection,
                count,
                source: error,
            });
        };
        if refusals.is_empty() {
            tracing::debug!(collection, count, "records already stored, skipped");
            return Ok(());
        }
        let refused: Vec<Document> = refusals
            .iter()
            .filter_map(|(index, code, reason)| {
                let record = records.get(*index)?;
                tracing::error!(collection, code, reason = %reason, id = ?record.get("_id"),
                    "record refused by the database; kept in the refused collection");
                Some(refused_record(collection, record, *code, reason))
            })
            .collect();
        match self
            .collection(REFUSED)
            .insert_many(&refused)
            .ordered(false)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if record_refusals(&error).is_some() => Ok(()),
            Err(source) => Err(HistoryError::Insert {
                collection: REFUSED,
                count: refused.len(),
                source,
            }),
        }
    }
}

/// What [`REFUSED`] keeps of a refused record: where it was going, why it was refused, and
/// its text (cut at [`REFUSED_TEXT_LIMIT`] bytes).
fn refused_record(collection: &str, record: &Document, code: i32, reason: &str) -> Document {
    let id = record
        .get("_id")
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut text = mongodb::bson::Bson::Document(record.clone())
        .into_relaxed_extjson()
        .to_string();
    if text.len() > REFUSED_TEXT_LIMIT {
        let mut end = REFUSED_TEXT_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    let mut refused = doc! {
        "_id": format!("{collection}:{id}"),
        "collection": collection,
        "code": code,
        "reason": reason,
        "record": text,
        "refusedAt": mongodb::bson::DateTime::now(),
    };
    for key in ["deviceId", "time", "seq"] {
        if let Some(value) = record.get(key) {
            refused.insert(key, value.clone());
        }
    }
    refused
}

/// MongoDB's answer for a collection that does not exist (code 26, `NamespaceNotFound`).
fn is_namespace_not_found(error: &mongodb::error::Error) -> bool {
    matches!(error.kind.as_ref(), ErrorKind::Command(c) if c.code == 26)
}

/// The records an insert failed on for themselves, as (index, code, reason), duplicates left
/// out; `None` when the whole call failed (no per-record errors, or a write concern error).
fn record_refusals(error: &mongodb::error::Error) -> Option<Vec<(usize, i32, String)>> {
    match error.kind.as_ref() {
        ErrorKind::InsertMany(failure) if failure.write_concern_error.is_none() => {
            let errors = failure.write_errors.as_ref()?;
            Some(
                errors
                    .iter()
                    .filter(|e| e.code != DUPLICATE_KEY)
                    .map(|e| (e.index, e.code, e.message.clone()))
                    .collect(),
            )
        }
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(
            (e.code != DUPLICATE_KEY)
                .then(|| (0, e.code, e.message.clone()))
                .into_iter()
                .collect(),
        ),
        _ => None,
    }
}
