//! The backend roles as the `cloudpillar` binary runs them.
//!
//! Each `run_*` function sets its role up from [`args`] and then runs until the process stops.
//! In the all-in-one mode the binary passes an [`crate::hub_link::EmbeddedHub`] for the hub it
//! embeds; a role in its own process passes [`HubArgs::connect`]'s REST client instead.

pub mod args;

use std::sync::Arc;

pub use args::{BlobArgs, ConsumerArgs, HubArgs, KeyholderArgs, MongoArgs, PartitionArgs};

use crate::blob::{BlobError, BlobStores};
use crate::checkpoint::CheckpointStore;
use crate::hub_link::HubLink;
use crate::keys::{FileToken, KeyError, KeyHolder, KeyVaultSigner};
use crate::partition::InvalidPartition;
use crate::streamer::{Streamer, StreamerOptions, UploadSigner};
use crate::writer::history::{History, HistoryError};
use crate::writer::{Writer, WriterOptions};

/// A role could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// A required setting is missing.
    #[error("setting {setting} is required")]
    Missing {
        /// The flag name.
        setting: &'static str,
    },
    /// A setting's value cannot work.
    #[error("setting {setting} is invalid: {reason}")]
    Invalid {
        /// The flag name.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// Settings contradict each other.
    #[error("conflicting settings: {reason}")]
    Conflict {
        /// What conflicts.
        reason: &'static str,
    },
    /// A file could not be read.
    #[error("reading {path} failed")]
    Read {
        /// The file.
        path: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP client could not be built.
    #[error("building the HTTP {what} failed")]
    Http {
        /// What was being built.
        what: &'static str,
        /// reqwest error.
        #[source]
        source: reqwest::Error,
    },
    /// The partition settings are invalid.
    #[error("invalid partition settings")]
    Partition {
        /// Validation error.
        #[source]
        source: InvalidPartition,
    },
    /// The blob store could not be opened.
    #[error("opening the blob store failed")]
    Blob {
        /// Blob error.
        #[source]
        source: Box<BlobError>,
    },
    /// The history database settings are invalid.
    #[error("connecting to the history database failed")]
    History {
        /// History error.
        #[source]
        source: HistoryError,
    },
    /// Signing keys could not be loaded.
    #[error("loading signing keys failed")]
    Keys {
        /// Key error.
        #[source]
        source: Box<KeyError>,
    },
    /// The Kubernetes client could not be created.
    #[error("creating the Kubernetes client failed")]
    Kube {
        /// kube error.
        #[source]
        source: kube::Error,
    },
    /// The listener could not be bound or served.
    #[error("serving the key API on {addr} failed")]
    Serve {
        /// Listen address.
        addr: std::net::SocketAddr,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
}

async fn open_stores(blob: &BlobArgs) -> Result<BlobStores, RoleError> {
    BlobStores::open_prefixed(&blob.config(), &blob.blob_container_prefix)
        .await
        .map_err(|e| RoleError::Blob {
            source: Box::new(e),
        })
}

async fn history(mongo: &MongoArgs) -> Result<Option<History>, RoleError> {
    let Some(url) = &mongo.mongodb_url else {
        return Ok(None);
    };
    let history = History::connect(url, &mongo.mongodb_database)
        .await
        .map_err(|source| RoleError::History { source })?;
    Ok(Some(history))
}

/// Who signs the uploads devices ask to have signed (`SignFile`, RunDiagnostics).
#[derive(Debug, Clone)]
pub enum UploadSigning {
    /// Nobody: such requests are answered `SignFileFailed` with that reason.
    Refused,
    /// A key holder in this process.
    InProcess(KeyHolder),
    /// Another signer, for example the key holder role's HTTP API.
    Remote(Arc<dyn UploadSigner>),
}

/// Runs the streamer role. `mongo` is optional: without it, committed uploads are not linked
/// from the `logs` collection. `signing` signs the uploads devices ask to have signed.
pub async fn run_streamer(
    hub: Arc<dyn HubLink>,
    blob: &BlobArgs,
    mongo: &MongoArgs,
    partition: &PartitionArgs,
    consumer: &ConsumerArgs,
    signing: UploadSigning,
) -> Result<(), RoleError> {
    let options = StreamerOptions {
        retry_ceiling: consumer.retry_ceiling(),
        rate_limit: (consumer.download_bytes_per_sec > 0)
            .then_some(consumer.download_bytes_per_sec),
        ..StreamerOptions::default()
    };
    let streamer = Streamer::new(
        hub,
        open_stores(blob).await?,
        history(mongo).await?,
        partition.partition()?,
        options,
    );
    let streamer = match signing {
        UploadSigning::Refused => streamer,
        UploadSigning::InProcess(holder) => streamer.with_key_holder(holder),
        UploadSigning::Remote(signer) => streamer.with_signer(signer),
    };
    streamer.run().await;
    Ok(())
}

/// Runs the writer role; its checkpoint lives in the blob store's state container.
pub async fn run_writer(
    hub: Arc<dyn HubLink>,
    blob: &BlobArgs,
    mongo: &MongoArgs,
    partition: &PartitionArgs,
    consumer: &ConsumerArgs,
) -> Result<(), RoleError> {
    let history = history(mongo).await?.ok_or(RoleError::Missing {
        setting: "--mongodb-url",
    })?;
    let partition = partition.partition()?;
    let stores = open_stores(blob).await?;
    let checkpoints = CheckpointStore::new(stores.state, "writer", partition);
    let options = WriterOptions {
        retry_ceiling: consumer.retry_ceiling(),
        ..WriterOptions::default()
    };
    Writer::new(hub, history, checkpoints, partition, options)
        .run()
        .await;
    Ok(())
}

/// Loads the key holder the settings describe: exactly one of a PEM file, a Kubernetes
/// Secret or a Key Vault key signs; `--retired-key-file` keys stay trusted.
pub async fn key_holder(args: &KeyholderArgs) -> Result<KeyHolder, RoleError> {
    let keys = |source| RoleError::Keys {
        source: Box::new(source),
    };
    let sources = [
        args.signing_key_file.is_some(),
        args.signing_secret.is_some(),
        args.key_vault_url.is_some(),
    ];
    if sources.iter().filter(|&&set| set).count() != 1 {
        return Err(RoleError::Conflict {
            reason: "give exactly one of --signing-key-file, --signing-secret, --key-vault-url",
        });
    }
    let mut holder = if let Some(file) = &args.signing_key_file {
        KeyHolder::from_files(file, &[]).await.map_err(keys)?
    } else if let Some(secret) = &args.signing_secret {
        let (namespace, name) = secret.split_once('/').ok_or(RoleError::Conflict {
            reason: "--signing-secret must be namespace/name",
        })?;
        let client = kube::Client::try_default()
            .await
            .map_err(|source| RoleError::Kube { source })?;
        KeyHolder::from_secret(client, namespace, name)
            .await
            .map_err(keys)?
    } else {
        let missing = |setting| RoleError::Missing { setting };
        let vault = args
            .key_vault_url
            .as_deref()
            .ok_or(missing("--key-vault-url"))?;
        let name = args
            .key_vault_key
            .as_deref()
            .ok_or(missing("--key-vault-key"))?;
        let version = args
            .key_vault_key_version
            .as_deref()
            .ok_or(missing("--key-vault-key-version"))?;
        let token = args
            .key_vault_token_file
            .clone()
            .ok_or(missing("--key-vault-token-file"))?;
        let http = crate::http_client().map_err(|source| RoleError::Http {
            what: "client",
            source,
        })?;
        let signer =
            KeyVaultSigner::connect(vault, name, version, Arc::new(FileToken(token)), http)
                .await
                .map_err(keys)?;
        KeyHolder::new(Arc::new(signer))
    };
    for path in &args.retired_key_file {
        let pem = std::fs::read(path).map_err(|source| RoleError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let key = crate::keys::retired_key(&path.display().to_string(), &pem).map_err(keys)?;
        holder = holder.with_retired(key);
    }
    Ok(holder)
}

/// Runs the key holder role: loads the keys and serves the key API.
pub async fn run_keyholder(args: &KeyholderArgs, blob: &BlobArgs) -> Result<(), RoleError> {
    let access = args.sign_access()?;
    let holder = key_holder(args).await?;
    let app = crate::keys::router(holder.clone(), open_stores(blob).await?, access);
    let serve_error = |source| RoleError::Serve {
        addr: args.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(serve_error)?;
    tracing::info!(addr = %args.listen, key_id = holder.active_key_id(), "key holder listening");
    axum::serve(listener, app).await.map_err(serve_error)
}
