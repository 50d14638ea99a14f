//! Errors of blob operations.

/// Errors of blob operations, each naming the container and object involved.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The object does not exist.
    #[error("blob {container}/{path} not found")]
    NotFound {
        /// Container name.
        container: String,
        /// Object path inside the container.
        path: String,
    },
    /// A read failed.
    #[error("reading blob {container}/{path} failed")]
    Read {
        /// Container name.
        container: String,
        /// Object path inside the container.
        path: String,
        /// Underlying store error.
        #[source]
        source: object_store::Error,
    },
    /// A write, commit or delete failed.
    #[error("writing blob {container}/{path} failed")]
    Write {
        /// Container name.
        container: String,
        /// Object path inside the container.
        path: String,
        /// Underlying store error.
        #[source]
        source: object_store::Error,
    },
    /// A container could not be opened or created.
    #[error("opening container {container} failed: {reason}")]
    Open {
        /// Container name.
        container: String,
        /// What went wrong.
        reason: String,
        /// Underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A service-state object does not hold what it should.
    #[error("blob {container}/{path} is corrupt")]
    Corrupt {
        /// Container name.
        container: String,
        /// Object path inside the container.
        path: String,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An object path is not acceptable (empty, `..`, control characters).
    #[error("invalid blob path {path:?}")]
    InvalidPath {
        /// The rejected path.
        path: String,
    },
}
