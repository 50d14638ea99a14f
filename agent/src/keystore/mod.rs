//! Where the device's symmetric key lives and what computes its HMAC.
//!
//! Without `[tpm]` the key is base64 text in a 0600 file, read when a token is made. With
//! `[tpm]` the key is imported once into the TPM (from the key file, which is then removed,
//! or from DPS group derivation or an upgrade message) and every SAS token, for the hub and
//! for DPS, is signed by the TPM's HMAC.

pub mod tpm;

use std::path::{Path, PathBuf};

use cloudpillar_protocol::sas::{self, SasError};

use crate::config::{Config, KeyFileError, read_secret_file};
use crate::link::identity::{Credential, Identity, write_secret};

pub use tpm::{TpmError, TpmKey};

/// A device key could not be read, kept or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The key file could not be read.
    #[error("failed to read the device key")]
    Read(#[source] KeyFileError),
    /// The key is not base64 or HMAC refused it.
    #[error("failed to use the device key")]
    Key(#[source] SasError),
    /// The key file could not be written.
    #[error("failed to write the device key to {path}")]
    Write {
        /// The key file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The TPM failed.
    #[error("failed to use the TPM key store")]
    Tpm(#[source] TpmError),
    /// A device key file holds something that is not a base64 key.
    #[error("device key file {path} does not hold a base64 key")]
    NotAKey {
        /// The key file.
        path: PathBuf,
        /// What the decoder found.
        source: SasError,
    },
    /// The identity names a TPM key but no `[tpm]` is configured.
    #[error("the device key is in a TPM but no [tpm] section is configured")]
    TpmNotConfigured,
    /// The blocking TPM task did not finish.
    #[error("the TPM task stopped before answering")]
    Stopped(#[source] tokio::task::JoinError),
}

/// A symmetric device key, ready to sign.
#[derive(Clone)]
pub enum DeviceKey {
    /// Base64 key text in memory.
    Plain(String),
    /// HMAC-SHA256 key held by a TPM.
    Tpm(TpmKey),
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("Plain(<redacted>)"),
            Self::Tpm(key) => f.debug_tuple("Tpm").field(key).finish(),
        }
    }
}

impl DeviceKey {
    /// Base64 HMAC-SHA256 of `message`; blocks while a TPM answers.
    pub fn hmac_base64_blocking(&self, message: &[u8]) -> Result<String, KeyStoreError> {
        match self {
            Self::Plain(key) => sas::hmac_base64(key, message).map_err(KeyStoreError::Key),
            Self::Tpm(key) => key
                .hmac_sha256(message)
                .map(|mac| cloudpillar_protocol::encoding::encode_base64(&mac))
                .map_err(KeyStoreError::Tpm),
        }
    }

    /// A SAS token text for `resource` until `expiry`, naming the policy `key_name`.
    pub async fn token(
        &self,
        resource: &str,
        expiry: u64,
        key_name: Option<&str>,
    ) -> Result<String, KeyStoreError> {
        let sign = move |key: &DeviceKey, resource: &str, key_name: Option<&str>| {
            sas::token_signed_by(resource, expiry, key_name, |text| {
                key.hmac_base64_blocking(text)
            })
        };
        match self {
            Self::Plain(_) => sign(self, resource, key_name),
            Self::Tpm(_) => {
                let (key, resource) = (self.clone(), resource.to_owned());
                let key_name = key_name.map(str::to_owned);
                tokio::task::spawn_blocking(move || sign(&key, &resource, key_name.as_deref()))
                    .await
                    .map_err(KeyStoreError::Stopped)?
            }
        }
    }
}

/// The device key's home, as the configuration chooses it.
#[derive(Debug, Clone)]
pub struct KeyStore {
    state_dir: PathBuf,
    tpm: Option<TpmKey>,
}

impl KeyStore {
    /// The store `config` names.
    pub fn new(config: &Config) -> Self {
        Self {
            state_dir: config.state_dir.clone(),
            tpm: config.tpm.as_ref().map(|t| TpmKey {
                tcti: t.tcti.clone(),
                handle: t.handle,
            }),
        }
    }

    /// The TPM key, when keys live in a TPM.
    pub fn tpm(&self) -> Option<&TpmKey> {
        self.tpm.as_ref()
    }

    /// The symmetric key `credential` names; `None` for X.509.
    pub fn key_for(&self, credential: &Credential) -> Result<Option<DeviceKey>, KeyStoreError> {
        match credential {
            Credential::SasKeyFile(path) => read_secret_file(path)
                .map(|text| Some(DeviceKey::Plain(text)))
                .map_err(KeyStoreError::Read),
            Credential::Tpm => match &self.tpm {
                Some(key) => Ok(Some(DeviceKey::Tpm(key.clone()))),
                None => Err(KeyStoreError::TpmNotConfigured),
            },
            Credential::X509 { .. } => Ok(None),
        }
    }

    /// Keeps `key` as the device key: `<state_dir>/device.key` (0600), or the TPM when one
    /// is configured. Returns the credential that names it and the key to sign with.
    pub async fn keep(&self, key: DeviceKey) -> Result<(Credential, DeviceKey), KeyStoreError> {
        match (key, &self.tpm) {
            (DeviceKey::Plain(text), None) => {
                let path = self.state_dir.join("device.key");
                write_secret(&path, &text).map_err(|source| KeyStoreError::Write {
                    path: path.clone(),
                    source,
                })?;
                Ok((Credential::SasKeyFile(path), DeviceKey::Plain(text)))
            }
            (DeviceKey::Plain(text), Some(tpm)) => {
                let tpm = tpm.clone();
                let stored = tpm.clone();
                tokio::task::spawn_blocking(move || import(&tpm, &text))
                    .await
                    .map_err(KeyStoreError::Stopped)??;
                Ok((Credential::Tpm, DeviceKey::Tpm(stored)))
            }
            (DeviceKey::Tpm(key), _) => Ok((Credential::Tpm, DeviceKey::Tpm(key))),
        }
    }

    /// At start: refuses a device key file that others may read or that holds no base64
    /// key, so the agent stops with the reason instead of retrying its link for ever. With a
    /// TPM, moves a device key still in a file into the TPM and removes the file; without a
    /// file, checks that the TPM holds the key the configuration relies on.
    pub async fn import_at_start(&self, config: &Config) -> Result<(), KeyStoreError> {
        let provisioned = Identity::load_provisioned(&config.state_dir).unwrap_or_else(|error| {
            tracing::warn!(%error, "provisioned identity unreadable");
            None
        });
        let candidates = key_files(config, provisioned.as_ref());
        let group_key = (config.dps.as_ref())
            .filter(|d| d.group)
            .map(|d| d.key_file.clone());
        for path in candidates.iter().chain(&group_key).filter(|p| p.exists()) {
            read_key_file(path)?;
        }
        let Some(tpm) = self.tpm.clone() else {
            return Ok(());
        };
        let state_dir = config.state_dir.clone();
        let relies_on_tpm = relies_on_tpm(config, provisioned.as_ref());
        tokio::task::spawn_blocking(move || {
            let Some(path) = candidates.iter().find(|p| p.exists()) else {
                if relies_on_tpm {
                    tpm.check().map_err(KeyStoreError::Tpm)?;
                }
                return Ok(());
            };
            import_file(&tpm, path)?;
            if let Some(mut identity) = provisioned {
                identity.credential = Credential::Tpm;
                if let Err(error) = identity.save_provisioned(&state_dir) {
                    tracing::warn!(%error, "failed to record the TPM key in the identity");
                }
            }
            Ok(())
        })
        .await
        .map_err(KeyStoreError::Stopped)?
    }
}

/// Key files that may still hold the device key, freshest first.
fn key_files(config: &Config, provisioned: Option<&Identity>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(Credential::SasKeyFile(path)) = provisioned.map(|i| &i.credential) {
        files.push(path.clone());
    }
    if let Some(crate::config::AuthConfig::Sas { key_file }) = &config.auth {
        files.push(key_file.clone());
    }
    if let Some(dps) = config.dps.as_ref().filter(|d| !d.group) {
        files.push(dps.key_file.clone());
    }
    files
}

/// Whether the identity in use, or the individual DPS enrollment, signs with the TPM key.
fn relies_on_tpm(config: &Config, provisioned: Option<&Identity>) -> bool {
    match provisioned {
        Some(identity) => identity.credential == Credential::Tpm,
        None => {
            matches!(config.auth, Some(crate::config::AuthConfig::Sas { .. }))
                || config.dps.as_ref().is_some_and(|d| !d.group)
        }
    }
}

/// The key text in `path`, once the file is private and holds a base64 key.
fn read_key_file(path: &Path) -> Result<String, KeyStoreError> {
    let text = read_secret_file(path).map_err(KeyStoreError::Read)?;
    sas::decode_key(&text).map_err(|source| KeyStoreError::NotAKey {
        path: path.to_owned(),
        source,
    })?;
    Ok(text)
}

/// Imports the key in `path` and removes the file once the TPM signs like it.
fn import_file(tpm: &TpmKey, path: &Path) -> Result<(), KeyStoreError> {
    let text = read_key_file(path)?;
    import(tpm, &text)?;
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), handle = %format!("{:#010x}", tpm.handle),
            "device key moved into the TPM; key file removed"),
        Err(error) => tracing::warn!(path = %path.display(), %error,
            "device key moved into the TPM; remove the key file by hand"),
    }
    Ok(())
}

/// Imports base64 `text` into the TPM and checks that the TPM signs as the key does.
fn import(tpm: &TpmKey, text: &str) -> Result<(), KeyStoreError> {
    let bytes = sas::decode_key(text).map_err(KeyStoreError::Key)?;
    tpm.import(&bytes).map_err(KeyStoreError::Tpm)?;
    let probe = b"cloudpillar device key check";
    let expected = sas::hmac_base64(text, probe).map_err(KeyStoreError::Key)?;
    if DeviceKey::Tpm(tpm.clone()).hmac_base64_blocking(probe)? != expected {
        return Err(KeyStoreError::Tpm(TpmError::ImportMismatch {
            handle: tpm.handle,
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn config(dir: &Path, key_file: &Path) -> Config {
        let text = format!(
            "device_id = \"dev-1\"\nstate_dir = {state:?}\nrequire_signatures = false\n\
             [hub]\nhost = \"hub.local\"\n[auth]\nkind = \"sas\"\nkey_file = {key:?}\n",
            state = dir.join("state"),
            key = key_file,
        );
        Config::parse_with_env(&text, Path::new("agent.toml"), &[]).expect("config")
    }

    fn key_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("device.key");
        std::fs::write(&path, text).expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    async fn start(dir: &Path, key: &Path) -> Result<(), KeyStoreError> {
        let config = config(dir, key);
        KeyStore::new(&config).import_at_start(&config).await
    }

    #[tokio::test]
    async fn a_key_file_others_may_read_stops_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key_file(dir.path(), "c2VjcmV0a2V5", 0o644);
        let error = start(dir.path(), &key).await.expect_err("0644 refused");
        let chain = format!("{:#}", anyhow::Error::from(error));
        assert!(chain.contains("has mode 644"), "{chain}");
        assert!(chain.contains(&key.display().to_string()), "{chain}");
    }

    #[tokio::test]
    async fn a_key_file_that_is_not_base64_stops_the_start_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key_file(dir.path(), "not a key!", 0o600);
        let error = start(dir.path(), &key).await.expect_err("not base64");
        assert!(matches!(error, KeyStoreError::NotAKey { .. }), "{error}");
        assert!(error.to_string().contains(&key.display().to_string()));
    }

    #[tokio::test]
    async fn a_private_base64_key_or_none_yet_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("written-later.key");
        start(dir.path(), &missing).await.expect("no file yet");
        let key = key_file(dir.path(), "c2VjcmV0a2V5\n", 0o600);
        start(dir.path(), &key).await.expect("a good key");
    }
}
