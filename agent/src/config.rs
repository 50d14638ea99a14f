//! Agent configuration: a TOML file with environment overrides.
//!
//! The file is read once at start. Every key can be overridden by an environment
//! variable named `CP_AGENT_` followed by the upper-case dotted path with `__`
//! for the dots, e.g. `CP_AGENT_HUB__HOST` or `CP_AGENT_STRICT_MODE`.

mod env;
mod keys;
mod sections;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use keys::{KeyFileError, read_secret_file};
pub use sections::{
    OWNER_PERSISTENT_HANDLES, ShellConfig, TpmConfig, TransferConfig, ZoneAction, ZoneConfig,
    ZoneKind,
};

/// Errors raised while loading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file {path}")]
    Read {
        /// File that was read.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("failed to parse config file {path}")]
    Parse {
        /// File that was parsed.
        path: PathBuf,
        /// Parser error with line and column.
        source: Box<toml::de::Error>,
    },
    /// An environment override could not be applied.
    #[error("failed to apply environment override {name}: {reason}")]
    Override {
        /// Variable name.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The local API would listen beyond this machine.
    #[error("local API bind address {addr} is not a loopback address; refusing to start")]
    NonLoopbackBind {
        /// The refused address.
        addr: SocketAddr,
    },
    /// A semantic rule of the configuration is broken.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Device id in the hub; with DPS it is learnt at provisioning and may be left out.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Directory holding state, journals and transfer progress.
    pub state_dir: PathBuf,
    /// Working directory of recipes; downloads land below it. Default `<state_dir>/work`.
    #[serde(default)]
    pub work_dir: Option<PathBuf>,
    /// Forbid shell actions and enforce zones.
    #[serde(default)]
    pub strict_mode: bool,
    /// Refuse recipes whose `changeSign` does not verify. Only local configuration may
    /// turn this off.
    #[serde(default = "default_true")]
    pub require_signatures: bool,
    /// PEM files with the public keys allowed to sign recipes and files.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// Hub connection; absent until provisioned through DPS.
    #[serde(default)]
    pub hub: Option<HubConfig>,
    /// Device authentication towards the hub.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Device Provisioning Service.
    #[serde(default)]
    pub dps: Option<DpsConfig>,
    /// Keep the symmetric device key in a TPM 2.0 instead of a file.
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
    /// Local REST API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Named upload and download zones.
    #[serde(default)]
    pub zones: BTreeMap<String, ZoneConfig>,
    /// Transfer tuning.
    #[serde(default)]
    pub transfer: TransferConfig,
    /// Shell step defaults.
    #[serde(default)]
    pub shell: ShellConfig,
}

/// Where the hub listens and how to trust it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Hub host name, also used in the SAS resource URI.
    pub host: String,
    /// MQTT over TLS port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Address to connect to and TLS name to check, when it differs from `host` (an edge
    /// hub reached by IP). Default: `host`.
    #[serde(default)]
    pub address: Option<String>,
    /// PEM bundle of CAs to trust. Default: `/etc/ssl/certs/ca-certificates.crt`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Lifetime of generated SAS tokens.
    #[serde(default = "default_sas_ttl")]
    pub sas_ttl_secs: u64,
}

/// How the device proves its identity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthConfig {
    /// Symmetric key in a file (base64 text, mode 0600).
    Sas {
        /// Key file.
        key_file: PathBuf,
    },
    /// Client certificate and private key in PEM files (key mode 0600).
    X509 {
        /// Certificate chain.
        cert_file: PathBuf,
        /// Private key.
        key_file: PathBuf,
    },
}

/// Device Provisioning Service with a symmetric key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DpsConfig {
    /// DPS global endpoint host.
    pub host: String,
    /// MQTT over TLS port.
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Address to connect to and TLS name to check, when it differs from `host`.
    #[serde(default)]
    pub address: Option<String>,
    /// PEM CA bundle for the DPS endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// ID scope of the DPS instance.
    pub id_scope: String,
    /// Registration id; defaults to the device id.
    #[serde(default)]
    pub registration_id: Option<String>,
    /// Key file (base64, 0600): the individual enrollment key or the group key.
    pub key_file: PathBuf,
    /// The key is an enrollment-group key: the device key is derived from it.
    #[serde(default)]
    pub group: bool,
}

/// The loopback REST API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address; must be loopback.
    #[serde(default = "default_api_bind")]
    pub bind: SocketAddr,
    /// File (0600) with the value callers send in `CP-SECRET-KEY`.
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// Serve HTTPS with a certificate generated at first start and kept in the state dir.
    #[serde(default)]
    pub tls: bool,
}

fn default_true() -> bool {
    true
}
fn default_mqtt_port() -> u16 {
    8883
}
fn default_sas_ttl() -> u64 {
    3600
}
fn default_api_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7070))
}
impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            bind: default_api_bind(),
            secret_key_file: None,
            tls: false,
        }
    }
}

impl Config {
    /// Reads the file at `path`, applies `CP_AGENT_*` overrides from the process
    /// environment and checks the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &vars)
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(path: &Path, vars: &[(String, String)]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_with_env(&text, path, vars)
    }

    /// Parses TOML text, applies overrides and validates.
    pub fn parse_with_env(
        text: &str,
        path: &Path,
        vars: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        env::apply_overrides(&mut table, vars)?;
        let config: Config = table.try_into().map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules that the schema alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.api.bind.ip().is_loopback() {
            return Err(ConfigError::NonLoopbackBind {
                addr: self.api.bind,
            });
        }
        if self
            .device_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err(ConfigError::Invalid("device_id is empty".into()));
        }
        if self.device_id.is_none() && self.dps.is_none() {
            return Err(ConfigError::Invalid(
                "either device_id or [dps] is required".into(),
            ));
        }
        if self.hub.is_some() && self.auth.is_none() && self.dps.is_none() {
            return Err(ConfigError::Invalid("[hub] needs [auth] or [dps]".into()));
        }
        if self.hub.as_ref().is_some_and(|h| h.sas_ttl_secs < 600) {
            // F10: a token must outlive the 300 s skew window well past its renewal point.
            return Err(ConfigError::Invalid(
                "hub.sas_ttl_secs must be at least 600".into(),
            ));
        }
        if let Some(tpm) = &self.tpm {
            if !cfg!(feature = "tpm") {
                return Err(ConfigError::Invalid(
                    "[tpm] is configured but this agent was built without the tpm feature".into(),
                ));
            }
            if !OWNER_PERSISTENT_HANDLES.contains(&tpm.handle) {
                return Err(ConfigError::Invalid(format!(
                    "tpm.handle {:#010x} is not an owner persistent handle \
                     (0x81000000..=0x817fffff)",
                    tpm.handle
                )));
            }
        }
        if self.require_signatures && self.trusted_keys.is_empty() {
            return Err(ConfigError::Invalid(
                "require_signatures is on but trusted_keys is empty".into(),
            ));
        }
        if self.transfer.upload_chunk_bytes == 0 || self.transfer.upload_chunk_bytes > 48 * 1024 {
            return Err(ConfigError::Invalid(
                "transfer.upload_chunk_bytes must be 1..=49152".into(),
            ));
        }
        // Downloads land below the work dir: one holding the state dir would let a recipe
        // overwrite the journal, keys or progress records.
        let (work, state) = (self.work_dir(), &self.state_dir);
        if state.starts_with(&work) {
            return Err(ConfigError::Invalid(format!(
                "work_dir {} holds state_dir {}; recipes would write over the agent's state \
                 (leave work_dir out for {}/work, or give it a directory of its own)",
                work.display(),
                state.display(),
                state.display()
            )));
        }
        for (name, zone) in &self.zones {
            if !cloudpillar_protocol::recipe::is_zone_name(name) {
                return Err(ConfigError::Invalid(format!(
                    "zone name {name:?} must be ASCII letters, digits or '_', not starting \
                     with a digit"
                )));
            }
            if !zone.root.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "zone {name} root must be absolute"
                )));
            }
        }
        Ok(())
    }

    /// The recipe working directory.
    pub fn work_dir(&self) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("work"))
    }
}

#[cfg(test)]
mod sample_tests;
#[cfg(test)]
mod tests;
