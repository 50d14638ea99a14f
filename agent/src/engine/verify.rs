//! `changeSign` verification against the locally trusted keys.

use std::path::PathBuf;

use cloudpillar_protocol::signing::{TrustStore, VerifyingKey};
use serde_json::Value;

use super::outcome::codes;
use crate::causes::with_causes;

/// Errors loading trusted keys.
#[derive(Debug, thiserror::Error)]
pub enum TrustLoadError {
    /// A key file could not be read.
    #[error("failed to read trusted key {path}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// A key file is not a P-521 public key in PEM.
    #[error("failed to parse trusted key {path}")]
    Parse {
        /// The key file.
        path: PathBuf,
        /// Parser error.
        source: cloudpillar_protocol::signing::KeyMaterialError,
    },
}

/// Loads the PEM public keys named in the configuration.
pub fn load_trust(paths: &[PathBuf]) -> Result<TrustStore, TrustLoadError> {
    let mut store = TrustStore::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| TrustLoadError::Read {
            path: path.clone(),
            source,
        })?;
        let key = VerifyingKey::from_pem(&text).map_err(|source| TrustLoadError::Parse {
            path: path.clone(),
            source,
        })?;
        store.add(key);
    }
    Ok(store)
}

/// A recipe refused before anything ran: `(ResultCode, ResultText)`.
pub type Refusal = (String, String);

/// Checks `sign` over the canonical `spec`. Without a signature the recipe passes only
/// when local configuration made signatures optional.
pub fn check_change_sign(
    trust: &TrustStore,
    spec: &Value,
    sign: Option<&str>,
    required: bool,
) -> Result<(), Refusal> {
    let Some(sign) = sign.filter(|s| !s.is_empty()) else {
        if required {
            return Err((
                codes::MISSING_SIGNATURE.into(),
                "changeSign is missing and this device requires signed recipes".into(),
            ));
        }
        return Ok(());
    };
    match trust.verify_json(spec, sign) {
        Ok(key_id) => {
            tracing::debug!(key_id, "changeSign verified");
            Ok(())
        }
        Err(error) if required || !trust.is_empty() => {
            let text = format!("changeSign refused: {}", with_causes(&error));
            Err((error.code().to_owned(), text))
        }
        Err(error) => {
            tracing::warn!(%error, "changeSign does not verify; signatures are optional here");
            Ok(())
        }
    }
}
