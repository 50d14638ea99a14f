//! `cloudpillar artifact put`: publishes a file for devices to download and signs it.
//!
//! The file goes into the patches container of the blob store (where the streamer reads
//! `singularDownload` sources) and is signed by the key holder (`SignBlob`). The printed
//! `sign` value is what a recipe's `singularDownload` step carries.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use cloudpillar_backend::blob::BlobStores;
use cloudpillar_backend::keys::KeyHolder;
use cloudpillar_backend::roles::BlobArgs;
use cloudpillar_controllers::recipe::{ArtifactStore, BlobArtifacts};

/// Options of `cloudpillar artifact put`.
#[derive(Debug, clap::Args)]
pub struct PutArgs {
    /// The file to publish.
    pub file: PathBuf,
    /// Name devices ask for (a recipe step's `source`); defaults to the file name.
    #[arg(long)]
    pub name: Option<String>,
    /// Kubernetes Secret `namespace/name` holding the signing key (`signing.pem`).
    #[arg(
        long,
        env = "CP_SIGNING_SECRET",
        default_value = "default/cloudpillar-signing"
    )]
    pub signing_secret: String,
    #[command(flatten)]
    pub blob: BlobArgs,
}

/// Copies the file into the patches container, signs it, and prints `name`, `size`,
/// `sha512` and `sign` lines.
pub async fn put(args: PutArgs) -> anyhow::Result<()> {
    cloudpillar_backend::install_tls_provider();
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .context("the file has no usable name; pass --name")?
            .to_owned(),
    };
    let data =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let stores = open_stores(&args.blob).await?;
    stores
        .patches
        .put(&name, Bytes::from(data))
        .await
        .with_context(|| format!("storing {name} in the patches container"))?;

    let (namespace, secret) = args
        .signing_secret
        .split_once('/')
        .context("--signing-secret must be namespace/name")?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let holder = KeyHolder::from_secret(client, namespace, secret)
        .await
        .context("loading the signing key")?;
    let signed = holder
        .sign_blob(&stores.patches, &name)
        .await
        .with_context(|| format!("signing {name}"))?;
    tracing::info!(name, size = signed.size, key_id = %signed.key_id, "artifact published and signed");

    let mut out = std::io::stdout().lock();
    writeln!(out, "name: {name}")?;
    writeln!(out, "size: {}", signed.size)?;
    writeln!(out, "sha512: {}", signed.sha512)?;
    writeln!(out, "sign: {}", signed.text)?;
    Ok(())
}

/// The patches container as the controllers look artifacts up in it: the files recipes
/// download, read from the same store the streamer serves them from.
pub async fn lookup_store(blob: &BlobArgs) -> anyhow::Result<Arc<dyn ArtifactStore>> {
    let stores = open_stores(blob).await?;
    tracing::info!(
        container = stores.patches.name(),
        "recipe files are looked up in the blob store"
    );
    Ok(Arc::new(BlobArtifacts::new(stores.patches.store().clone())))
}

async fn open_stores(blob: &BlobArgs) -> anyhow::Result<BlobStores> {
    BlobStores::open_prefixed(&blob.config(), &blob.blob_container_prefix)
        .await
        .context("opening the blob store")
}
