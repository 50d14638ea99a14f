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

    /// Inserts `records` in order; records whose `_id` is already stored are skipped, so a
    /// batch may be written again after a failure without duplicating anything.
    pub async fn insert(
        &self,
        collection: &'static str,
        records: &[Document],
    ) -> Result<(), HistoryError> {
        if records.is_empty() {
            return Ok(());
        }
        let count = records.len();
        match self
            .collection(collection)
            .insert_many(records)
            .ordered(false)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if only_duplicates(&error) => {
                tracing::debug!(collection, count, "records already stored, skipped");
                Ok(())
            }
            Err(source) => Err(HistoryError::Insert {
                collection,
                count,
                source,
            }),
        }
    }
}

/// MongoDB's answer for a collection that does not exist (code 26, `NamespaceNotFound`).
fn is_namespace_not_found(error: &mongodb::error::Error) -> bool {
    matches!(error.kind.as_ref(), ErrorKind::Command(c) if c.code == 26)
}

/// True when every failure of an insert is a duplicate `_id`.
fn only_duplicates(error: &mongodb::error::Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::InsertMany(failure) => {
            failure.write_concern_error.is_none()
                && failure
                    .write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|e| e.code == DUPLICATE_KEY))
        }
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}
