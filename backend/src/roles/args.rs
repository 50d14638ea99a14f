//! Command-line and environment settings of the backend roles (`clap` argument groups the
//! `cloudpillar` binary flattens into its subcommands).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::blob::{AzureBlobConfig, BlobConfig};
use crate::hub_link::{HubLink, RestHub};
use crate::keys::SignAccess;
use crate::partition::Partition;

use super::RoleError;

/// Where blob containers live: a directory by default, Azure Blob Storage when an account is
/// given.
#[derive(Debug, Clone, clap::Args)]
pub struct BlobArgs {
    /// Root directory of the filesystem blob store (one folder per container).
    #[arg(
        long,
        env = "CP_BLOB_DIR",
        default_value = "/var/lib/cloudpillar/blobs"
    )]
    pub blob_dir: PathBuf,
    /// Azure storage account; when set, containers live in Azure Blob Storage.
    #[arg(long, env = "CP_AZURE_STORAGE_ACCOUNT")]
    pub azure_account: Option<String>,
    /// Azure storage account key (else workload or managed identity from `AZURE_*` variables).
    #[arg(long, env = "CP_AZURE_STORAGE_KEY", hide_env_values = true)]
    pub azure_key: Option<String>,
    /// Blob endpoint for path-style hosts such as Azurite
    /// (`http://127.0.0.1:10000/devstoreaccount1`).
    #[arg(long, env = "CP_AZURE_BLOB_ENDPOINT")]
    pub azure_endpoint: Option<String>,
    /// Prefix of the container names (`{prefix}patches`, `{prefix}uploads`, `{prefix}state`).
    #[arg(long, env = "CP_BLOB_CONTAINER_PREFIX", default_value = "")]
    pub blob_container_prefix: String,
}

impl BlobArgs {
    /// The store these settings name.
    pub fn config(&self) -> BlobConfig {
        match &self.azure_account {
            Some(account) => BlobConfig::Azure(AzureBlobConfig {
                account: account.clone(),
                access_key: self.azure_key.clone(),
                endpoint: self.azure_endpoint.clone(),
            }),
            None => BlobConfig::Filesystem {
                root: self.blob_dir.clone(),
            },
        }
    }
}

/// How a role in its own process reaches the edge hub's REST service API.
#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// Base URL of the hub's service API, e.g. `https://edgehub:8443`.
    #[arg(long, env = "CP_HUB_URL")]
    pub hub_url: Option<String>,
    /// Host name the hub signs SAS tokens for.
    #[arg(long, env = "CP_HUB_HOSTNAME", default_value = "edgehub.local")]
    pub hub_hostname: String,
    /// Shared access policy name.
    #[arg(long, env = "CP_HUB_POLICY_NAME", default_value = "iothubowner")]
    pub hub_policy_name: String,
    /// File holding the shared access policy key (base64).
    #[arg(long, env = "CP_HUB_POLICY_KEY_FILE")]
    pub hub_policy_key_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the hub's TLS, e.g. its generated development CA.
    #[arg(long, env = "CP_HUB_CA_FILE")]
    pub hub_ca_file: Option<PathBuf>,
}

impl HubArgs {
    /// A REST client for the configured hub.
    pub fn connect(&self) -> Result<Arc<dyn HubLink>, RoleError> {
        let url = self.hub_url.clone().ok_or(RoleError::Missing {
            setting: "--hub-url",
        })?;
        let key_file = self
            .hub_policy_key_file
            .as_ref()
            .ok_or(RoleError::Missing {
                setting: "--hub-policy-key-file",
            })?;
        let parsed = reqwest::Url::parse(&url).map_err(|error| RoleError::Invalid {
            setting: "--hub-url",
            reason: format!("{url:?} is not a URL ({error})"),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(RoleError::Invalid {
                setting: "--hub-url",
                reason: format!("{url:?} is not an http(s) URL with a host"),
            });
        }
        let key = read_text(key_file)?;
        if cloudpillar_hub::sas::generate(&key, &self.hub_hostname, 0, None).is_err() {
            return Err(RoleError::Invalid {
                setting: "--hub-policy-key-file",
                reason: format!("{} does not hold a base64 key", key_file.display()),
            });
        }
        let mut builder = reqwest::Client::builder();
        crate::install_tls_provider();
        if let Some(ca) = &self.hub_ca_file {
            let pem = read_text(ca)?;
            let certificate = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|source| {
                RoleError::Http {
                    what: "hub CA certificate",
                    source,
                }
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder.build().map_err(|source| RoleError::Http {
            what: "client",
            source,
        })?;
        let (hostname, policy) = (self.hub_hostname.clone(), self.hub_policy_name.clone());
        let auth = Arc::new(move || {
            let expiry = chrono::Utc::now().timestamp().max(0) as u64 + 3600;
            cloudpillar_hub::sas::generate(&key, &hostname, expiry, Some(&policy))
                .unwrap_or_default()
        });
        Ok(Arc::new(RestHub::new(url, auth, http)))
    }
}

/// Which share of the devices this replica serves.
#[derive(Debug, Clone, clap::Args)]
pub struct PartitionArgs {
    /// This replica's index, `0..count` (a StatefulSet ordinal fits).
    #[arg(long, env = "CP_PARTITION_INDEX", default_value_t = 0)]
    pub partition_index: u32,
    /// Number of replicas sharing the devices.
    #[arg(long, env = "CP_PARTITION_COUNT", default_value_t = 1)]
    pub partition_count: u32,
}

impl PartitionArgs {
    /// The configured partition.
    pub fn partition(&self) -> Result<Partition, RoleError> {
        Partition::new(self.partition_index, self.partition_count)
            .map_err(|source| RoleError::Partition { source })
    }
}

/// MongoDB connection of the history database.
#[derive(Debug, Clone, clap::Args)]
pub struct MongoArgs {
    /// MongoDB URL (`mongodb://` or Atlas `mongodb+srv://user:pass@cluster/...`).
    #[arg(long, env = "CP_MONGODB_URL", hide_env_values = true)]
    pub mongodb_url: Option<String>,
    /// Database holding the `versions`, `logs` and `telemetry` collections.
    #[arg(long, env = "CP_MONGODB_DATABASE", default_value = "cloudpillar")]
    pub mongodb_database: String,
}

/// Settings of the key holder role.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyholderArgs {
    /// Address the key API listens on.
    #[arg(long, env = "CP_KEYHOLDER_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Active signing key: a PKCS#8 or SEC1 PEM file.
    #[arg(long, env = "CP_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Retired keys (public or private PEM files) whose signatures stay valid.
    #[arg(long, env = "CP_RETIRED_KEY_FILES", value_delimiter = ',')]
    pub retired_key_file: Vec<PathBuf>,
    /// Kubernetes Secret `namespace/name` with `signing.pem` and `retired-*.pem` fields.
    #[arg(long, env = "CP_SIGNING_SECRET")]
    pub signing_secret: Option<String>,
    /// Azure Key Vault URL, e.g. `https://example.vault.azure.net`.
    #[arg(long, env = "CP_KEY_VAULT_URL")]
    pub key_vault_url: Option<String>,
    /// Key Vault key name.
    #[arg(long, env = "CP_KEY_VAULT_KEY")]
    pub key_vault_key: Option<String>,
    /// Key Vault key version.
    #[arg(long, env = "CP_KEY_VAULT_KEY_VERSION")]
    pub key_vault_key_version: Option<String>,
    /// File holding a Key Vault access token, re-read for every request.
    #[arg(long, env = "CP_KEY_VAULT_TOKEN_FILE")]
    pub key_vault_token_file: Option<PathBuf>,
    /// File holding the bearer token the signing routes require; read again for every
    /// request, so a rotated Secret counts at once.
    #[arg(long, env = "CP_SIGN_TOKEN_FILE")]
    pub sign_token_file: Option<PathBuf>,
    /// Serve the signing routes without a token, to anyone who reaches `--listen`; refused
    /// unless `--listen` is a loopback address.
    #[arg(long, conflicts_with = "sign_token_file")]
    pub allow_unauthenticated_signing: bool,
}

impl KeyholderArgs {
    /// Who may sign: the holders of the token file's token (the file must hold one now), or
    /// anyone on this machine when unauthenticated signing is allowed on a loopback address.
    pub fn sign_access(&self) -> Result<SignAccess, RoleError> {
        match (&self.sign_token_file, self.allow_unauthenticated_signing) {
            (Some(path), _) => {
                if read_text(path)?.is_empty() {
                    return Err(RoleError::Invalid {
                        setting: "--sign-token-file",
                        reason: format!("{} holds no token", path.display()),
                    });
                }
                Ok(SignAccess::TokenFile(path.clone()))
            }
            (None, true) if self.listen.ip().is_loopback() => Ok(SignAccess::Open),
            (None, true) => Err(RoleError::Conflict {
                reason: "--allow-unauthenticated-signing needs a loopback --listen address",
            }),
            (None, false) => Err(RoleError::Missing {
                setting: "--sign-token-file (or --allow-unauthenticated-signing on loopback)",
            }),
        }
    }
}

/// Tuning shared by the event consumers.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// Longest retry delay after a failure, in seconds.
    #[arg(long, env = "CP_RETRY_CEILING_SECS", default_value_t = 30)]
    pub retry_ceiling_secs: u64,
    /// Streamer only: most bytes per second sent to one device (0: no limit). Keeps patch
    /// downloads from filling a site's uplink.
    #[arg(long, env = "CP_DOWNLOAD_BYTES_PER_SEC", default_value_t = 0)]
    pub download_bytes_per_sec: u64,
}

impl ConsumerArgs {
    /// The retry ceiling.
    pub fn retry_ceiling(&self) -> Duration {
        Duration::from_secs(self.retry_ceiling_secs.max(1))
    }
}

pub(super) fn read_text(path: &std::path::Path) -> Result<String, RoleError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| RoleError::Read {
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(url: &str, key_file: &std::path::Path) -> HubArgs {
        HubArgs {
            hub_url: Some(url.to_owned()),
            hub_hostname: "hub.local".into(),
            hub_policy_name: "service".into(),
            hub_policy_key_file: Some(key_file.to_owned()),
            hub_ca_file: None,
        }
    }

    #[test]
    fn a_hub_url_or_policy_key_that_cannot_work_stops_the_role_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
        std::fs::write(&good, "c2VjcmV0LWtleS1vZi0zMi1ieXRlcy0wMTIzNDU2Nzg=\n").expect("key");
        std::fs::write(&bad, "not base64!\n").expect("key");
        let message = |args: HubArgs| match args.connect() {
            Ok(_) => "accepted".to_owned(),
            Err(error) => error.to_string(),
        };

        assert_eq!(message(hub("https://hub.local:8443", &good)), "accepted");
        for url in ["notaurl", "ftp://hub.local", "unix:/run/hub.sock"] {
            let text = message(hub(url, &good));
            assert!(
                text.starts_with("setting --hub-url is invalid"),
                "{url}: {text}"
            );
        }
        let text = message(hub("https://hub.local:8443", &bad));
        assert!(
            text.starts_with("setting --hub-policy-key-file is invalid"),
            "{text}"
        );
    }
}
