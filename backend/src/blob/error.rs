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

impl BlobError {
    /// Whether trying again cannot help: the path is refused, a state object is corrupt, or
    /// the store cannot hold the object where its name puts it (a file where a folder would
    /// have to be, or the other way round, on the filesystem store). Outages are not
    /// permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidPath { .. } | Self::Corrupt { .. } => true,
            Self::Write { source, .. } | Self::Read { source, .. } => path_conflict(source),
            Self::NotFound { .. } | Self::Open { .. } => false,
        }
    }
}

/// Whether an I/O error in `error`'s causes says the object's path clashes with what is
/// stored.
fn path_conflict(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::NotADirectory
                    | ErrorKind::IsADirectory
                    | ErrorKind::DirectoryNotEmpty
                    | ErrorKind::InvalidFilename
            )
        {
            return true;
        }
        cause = current.source();
    }
    false
}
