//! Who the device is and where its hub is: from the configuration or from DPS.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, Config};
use crate::durable::{self, DurableError};

/// How the device authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Credential {
    /// Symmetric key file (base64).
    SasKeyFile(PathBuf),
    /// Symmetric key held by the TPM at the configured `[tpm]` handle.
    Tpm,
    /// Certificate and key files.
    X509 {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
}

/// A device identity on one hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Device id.
    pub device_id: String,
    /// Hub host name (SAS resource and user name).
    pub host: String,
    /// Where to connect and which TLS name to check.
    pub address: String,
    /// MQTT port.
    pub port: u16,
    /// CA bundle.
    pub ca_file: Option<PathBuf>,
    /// Credential.
    pub credential: Credential,
}

impl Identity {
    /// The identity the configuration names, when it names hub, device id and auth.
    pub fn from_config(config: &Config) -> Option<Self> {
        let hub = config.hub.as_ref()?;
        let credential = match config.auth.as_ref()? {
            AuthConfig::Sas { .. } if config.tpm.is_some() => Credential::Tpm,
            AuthConfig::Sas { key_file } => Credential::SasKeyFile(key_file.clone()),
            AuthConfig::X509 {
                cert_file,
                key_file,
            } => Credential::X509 {
                cert: cert_file.clone(),
                key: key_file.clone(),
            },
        };
        Some(Self {
            device_id: config.device_id.clone()?,
            host: hub.host.clone(),
            address: hub.address.clone().unwrap_or_else(|| hub.host.clone()),
            port: hub.port,
            ca_file: hub.ca_file.clone(),
            credential,
        })
    }

    /// The identity DPS assigned earlier, kept in the state dir.
    pub fn load_provisioned(state_dir: &Path) -> Result<Option<Self>, DurableError> {
        durable::read_json(&state_dir.join("identity.json"))
    }

    /// Persists an identity assigned by DPS.
    pub fn save_provisioned(&self, state_dir: &Path) -> Result<(), DurableError> {
        durable::write_json(&state_dir.join("identity.json"), self)
    }
}

/// Writes a secret to `path` with mode 0600, durably.
pub fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        crate::state_dir::create_private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    durable::sync_dir(path.parent().unwrap_or(Path::new(".")))
}
