//! Secret files: keys must not be readable by other users.

use std::path::{Path, PathBuf};

/// Errors reading a secret file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("failed to read key file {path}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// Group or others may access the file.
    #[error("key file {path} has mode {mode:o}; it must not be accessible by group or others")]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file holds nothing but whitespace: an empty key would sign tokens with no secret
    /// and an empty local API secret would let any local process in.
    #[error("key file {path} is empty")]
    Empty {
        /// The key file.
        path: PathBuf,
    },
}

/// Reads a secret file after checking it is 0600 or stricter; the content is trimmed and must
/// not be empty.
pub fn read_secret_file(path: &Path) -> Result<String, KeyFileError> {
    use std::os::unix::fs::PermissionsExt;

    let meta = std::fs::metadata(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(KeyFileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(secret.to_owned())
}
