//! Errors of the edge hub, typed per failed action.

use thiserror::Error;

use crate::config::MaxDeliveryCount;

/// A failure of the durable store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Opening or creating the database file failed.
    #[error("opening the store at {path}")]
    Open {
        /// The database file.
        path: String,
        /// The cause.
        #[source]
        source: redb::DatabaseError,
    },
    /// A transaction could not be started.
    #[error("starting a store transaction")]
    Begin(#[from] redb::TransactionError),
    /// A table could not be opened.
    #[error("opening store table {table}")]
    Table {
        /// The table name.
        table: &'static str,
        /// The cause.
        #[source]
        source: redb::TableError,
    },
    /// Reading or writing a record failed.
    #[error("accessing a store record")]
    Access(#[from] redb::StorageError),
    /// Committing a write batch failed; nothing in the batch was acknowledged.
    #[error("committing a store batch")]
    Commit(#[from] redb::CommitError),
    /// A stored record could not be decoded.
    #[error("decoding stored record {key}")]
    Decode {
        /// The record key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The base64 body of a stored C2D record in the older, all-JSON layout is invalid.
    #[error("decoding the body of stored record {key}")]
    BadBody {
        /// The record key.
        key: String,
        /// The cause.
        #[source]
        source: base64::DecodeError,
    },
    /// The writer thread has stopped.
    #[error("the store writer has stopped")]
    WriterGone,
}

/// The reason a hub operation was refused, carrying Azure's HTTP status and error code.
///
/// The same value answers REST callers (status, `iothub-errorcode` header, JSON body) and
/// MQTT devices (status in the `$iothub/twin/res/{status}` topic).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// HTTP status code Azure answers with.
    pub status: u16,
    /// Azure's error code name, for example `DeviceNotFound`.
    pub code: &'static str,
    /// A human-readable reason.
    pub message: String,
}

impl Refusal {
    /// Builds a refusal.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "ArgumentInvalid", message)
    }

    /// 404: the device is not registered.
    pub fn device_not_found(device: &str) -> Self {
        Self::new(
            404,
            "DeviceNotFound",
            format!("device {device} is not registered"),
        )
    }

    /// 412: the caller's ETag no longer matches.
    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(412, "PreconditionFailed", message)
    }

    /// 413: the payload is larger than allowed.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "MessageTooLarge", message)
    }
}

/// A failure of a hub operation: refused by the rules, or failed in the store.
#[derive(Debug, Error)]
pub enum HubError {
    /// The request was refused; nothing changed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed; the write was not acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HubError {
    /// The HTTP status Azure would answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Refused(r) => r.status,
            Self::Store(_) => 500,
        }
    }
}

/// A failure to start the hub.
#[derive(Debug, Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("opening the hub store")]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("binding {what} listener on {addr}")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Plain (non-TLS) listening was asked for on a non-loopback address.
    #[error("plain listener on non-loopback address {addr} refused; use TLS")]
    PlainNotLoopback {
        /// The address.
        addr: std::net::SocketAddr,
    },
    /// Reading, generating or writing TLS material failed.
    #[error("preparing TLS material: {what}")]
    Tls {
        /// What failed.
        what: String,
    },
    /// Writing a file under the data directory failed.
    #[error("writing {path}")]
    Write {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The MQTT server thread did not come up.
    #[error("starting the MQTT server thread")]
    MqttThread,
}

/// A hub setting the hub does not accept.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The C2D maximum delivery count is outside what IoT Hub accepts.
    #[error(
        "c2d max delivery count {count} is outside {min}..={max}",
        min = MaxDeliveryCount::RANGE.start(),
        max = MaxDeliveryCount::RANGE.end()
    )]
    MaxDeliveryCountOutOfRange {
        /// The count asked for.
        count: u64,
    },
    /// The C2D maximum delivery count is not a number.
    #[error("c2d max delivery count {text:?} is not a number")]
    MaxDeliveryCountNotANumber {
        /// The text given.
        text: String,
        /// The cause.
        #[source]
        source: std::num::ParseIntError,
    },
}
