//! `cloudpillar run`: the all-in-one mode. One process runs the edge hub, the operator's
//! controllers, the key holder, the streamer and (when MongoDB is configured) the writer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cloudpillar_backend::hub_link::{EmbeddedHub, HubLink};
use cloudpillar_backend::keys::KeyHolder;
use cloudpillar_backend::roles::{BlobArgs, ConsumerArgs, MongoArgs, PartitionArgs, UploadSigning};
use cloudpillar_hub::{Hub, HubConfig, HubHandle};
use cloudpillar_protocol::signing::SigningKey;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;

/// Field manager of the objects the all-in-one mode writes itself.
const MANAGER: &str = "cloudpillar-run";
/// Field of the signing Secret holding the active P-521 key (the key holder's layout).
const SIGNING_FIELD: &str = cloudpillar_backend::keys::SECRET_ACTIVE_KEY;

/// Options of `cloudpillar run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory for the hub's database and TLS material, the blob store and published keys.
    #[arg(long, env = "CP_DATA_DIR", default_value = "cloudpillar-data")]
    pub data_dir: PathBuf,
    /// Namespace the controllers watch and where the hub and signing Secrets are written.
    #[arg(long, env = "CP_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// MQTT device endpoint of the edge hub (TLS).
    #[arg(long, default_value = "127.0.0.1:8883")]
    pub mqtt: SocketAddr,
    /// Service REST API of the edge hub (HTTPS).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub http: SocketAddr,
    /// Host name of the hub in SAS tokens and its development certificate.
    #[arg(long, default_value = "localhost")]
    pub hostname: String,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub metrics: SocketAddr,
    /// Secret (in `--namespace`) with the hub's policy key and CA, for `Hub` objects to use.
    #[arg(long, default_value = "cloudpillar-edge-hub")]
    pub hub_secret: String,
    /// Secret (in `--namespace`) holding the recipe signing key; generated when missing.
    #[arg(long, default_value = "cloudpillar-signing")]
    pub signing_secret: String,
    /// DPS enrollment groups to make sure exist; each group key is written to
    /// `<data-dir>/enrollments/<name>.key`.
    #[arg(long = "enrollment-group")]
    pub enrollment_groups: Vec<String>,
    /// Most bytes per second the streamer sends to one device (0: no limit).
    #[arg(long, env = "CP_DOWNLOAD_BYTES_PER_SEC", default_value_t = 0)]
    pub download_bytes_per_sec: u64,
    #[command(flatten)]
    pub mongo: MongoArgs,
}

/// Runs everything until Ctrl-C or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    cloudpillar_backend::install_tls_provider();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (set KUBECONFIG, or run k3s-dev/up)")?;

    // 1. The edge hub, and the Secret that lets `Hub` objects reach it.
    let hub = start_hub(&args).await?;
    publish_hub_secret(&client, &args, &hub).await?;
    for group in &args.enrollment_groups {
        ensure_enrollment_group(&args, &hub, group).await?;
    }

    // 2. Signing key: the controllers and the key holder read the same Secret.
    let holder = ensure_signing_key(&client, &args).await?;
    tracing::info!(key_id = holder.active_key_id(), "recipe signing key ready");

    write_connection_file(&args, &hub)?;

    // 3. Backend roles on the embedded hub.
    let link: Arc<dyn HubLink> = Arc::new(EmbeddedHub::new(hub.core().clone()));
    let blob = BlobArgs {
        blob_dir: args.data_dir.join("blobs"),
        azure_account: None,
        azure_key: None,
        azure_endpoint: None,
        blob_container_prefix: String::new(),
    };
    let partition = PartitionArgs {
        partition_index: 0,
        partition_count: 1,
    };
    let consumer = ConsumerArgs {
        retry_ceiling_secs: 30,
        download_bytes_per_sec: args.download_bytes_per_sec,
    };
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (link, blob, mongo) = (link.clone(), blob.clone(), args.mongo.clone());
        let (partition, consumer) = (partition.clone(), consumer.clone());
        // The streamer signs devices' own uploads (RunDiagnostics) with the same key holder.
        let signing = UploadSigning::InProcess(holder.clone());
        tasks.spawn(async move {
            cloudpillar_backend::roles::run_streamer(
                link, &blob, &mongo, &partition, &consumer, signing,
            )
            .await
            .context("streamer")
        });
    }
    if args.mongo.mongodb_url.is_some() {
        let (link, blob, mongo) = (link.clone(), blob.clone(), args.mongo.clone());
        tasks.spawn(async move {
            cloudpillar_backend::roles::run_writer(link, &blob, &mongo, &partition, &consumer)
                .await
                .context("writer")
        });
    } else {
        tracing::info!("history writer skipped: no --mongodb-url (CP_MONGODB_URL) configured");
    }

    // 4. The controllers.
    let config = cloudpillar_controllers::Config {
        namespace: Some(args.namespace.clone()),
        metrics_addr: args.metrics,
        signing_key: Some(cloudpillar_controllers::SecretLocation {
            namespace: args.namespace.clone(),
            name: args.signing_secret.clone(),
            key: SIGNING_FIELD.into(),
        }),
        // Recipe files are looked up where this process's streamer serves them from.
        artifacts: Some(crate::artifact_cmd::lookup_store(&blob).await?),
        instance: Some("all-in-one".into()),
        ..Default::default()
    };
    {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tasks.spawn(async move {
            cloudpillar_controllers::run_until(client, config, shutdown)
                .await
                .context("controllers")
        });
    }
    tracing::info!(
        mqtt = %hub.mqtt_addr(),
        http = %hub.http_addr(),
        namespace = %args.namespace,
        "cloudpillar running: edge hub, controllers, key holder, streamer"
    );

    // 5. Run until a signal or until a part fails.
    let outcome = tokio::select! {
        signal = cloudpillar_hub::standalone::wait_for_shutdown() => {
            signal.context("waiting for a signal")?;
            tracing::info!("shutting down");
            Ok(())
        }
        Some(ended) = tasks.join_next() => match ended {
            Ok(Ok(())) => Err(anyhow::anyhow!("a component stopped unexpectedly")),
            Ok(Err(error)) => Err(error),
            Err(join) => Err(anyhow::Error::new(join).context("a component panicked")),
        },
    };
    shutdown.cancel();
    tasks.abort_all();
    // Let every part drop its handle on the hub, so that the hub can close its store at once.
    while tasks.join_next().await.is_some() {}
    drop(link);
    hub.shutdown().await;
    outcome
}

async fn start_hub(args: &RunArgs) -> anyhow::Result<HubHandle> {
    let mut config = HubConfig::new(args.data_dir.join("hub"));
    config.mqtt_addr = args.mqtt;
    config.http_addr = args.http;
    config.hostname = args.hostname.clone();
    Hub::start(config).await.context("starting the edge hub")
}

/// Writes the hub's service policy key and development CA into a Secret.
async fn publish_hub_secret(
    client: &kube::Client,
    args: &RunArgs,
    hub: &HubHandle,
) -> anyhow::Result<()> {
    let mut data = BTreeMap::from([(
        "primaryKey".to_owned(),
        ByteString(hub.policy_key().as_bytes().to_vec()),
    )]);
    if let Some(ca) = hub.ca_cert_path() {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        data.insert("ca.crt".to_owned(), ByteString(pem));
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(args.hub_secret.clone()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    secrets
        .patch(
            &args.hub_secret,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .with_context(|| format!("writing Secret {}/{}", args.namespace, args.hub_secret))?;
    tracing::info!(secret = %args.hub_secret, namespace = %args.namespace, "hub credentials published");
    Ok(())
}

/// Loads the signing key from its Secret, creating the Secret with a new key when missing,
/// and publishes the public key next to the data for agents to trust.
async fn ensure_signing_key(client: &kube::Client, args: &RunArgs) -> anyhow::Result<KeyHolder> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let name = &args.signing_secret;
    if secrets.get_opt(name).await?.is_none() {
        let key = SigningKey::generate().context("generating a P-521 signing key")?;
        let pem = key.to_pkcs8_pem().context("encoding the signing key")?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                SIGNING_FIELD.to_owned(),
                ByteString(pem.into_bytes()),
            )])),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => tracing::info!(secret = %name, "generated a new P-521 recipe signing key"),
            // Another process created it first: use theirs.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(error).context("creating the signing key Secret"),
        }
    }
    let holder = KeyHolder::from_secret(client.clone(), &args.namespace, name)
        .await
        .context("loading the signing key")?;
    let public = holder
        .trust_store()
        .get(holder.active_key_id())
        .context("active key missing from the trust store")?
        .to_pem()
        .context("encoding the public key")?;
    let path = args.data_dir.join("keys").join("recipe-signer.pub.pem");
    write_file(&path, public.as_bytes())?;
    tracing::info!(path = %path.display(), "published the recipe signing public key");
    Ok(holder)
}

/// Makes sure a symmetric-key DPS enrollment group exists and writes its primary key.
async fn ensure_enrollment_group(
    args: &RunArgs,
    hub: &HubHandle,
    group: &str,
) -> anyhow::Result<()> {
    let ca = hub
        .ca_cert_path()
        .context("the hub has no development CA")?;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca)?)?;
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()?;
    let url = format!(
        "https://{}:{}/enrollmentGroups/{group}?api-version=2021-10-01",
        args.hostname,
        hub.http_addr().port()
    );
    let token = hub.service_token(Duration::from_secs(300));
    let existing = http
        .get(&url)
        .header("Authorization", &token)
        .send()
        .await?;
    let body: serde_json::Value = if existing.status().is_success() {
        existing.json().await?
    } else {
        let wanted = serde_json::json!({
            "enrollmentGroupId": group,
            "attestation": { "type": "symmetricKey" },
        });
        let created = http
            .put(&url)
            .header("Authorization", &token)
            .json(&wanted)
            .send()
            .await?;
        let status = created.status();
        if !status.is_success() {
            anyhow::bail!(
                "creating enrollment group {group}: {status} {}",
                created.text().await?
            );
        }
        created.json().await?
    };
    let key = body
        .pointer("/attestation/symmetricKey/primaryKey")
        .and_then(|k| k.as_str())
        .context("enrollment group without a primary key")?;
    let path = args
        .data_dir
        .join("enrollments")
        .join(format!("{group}.key"));
    write_file(&path, key.as_bytes())?;
    tracing::info!(group, path = %path.display(), id_scope = hub.id_scope(), "DPS enrollment group ready");
    Ok(())
}

/// Writes `<data-dir>/connection.json`: what an agent or a script needs to reach this hub.
fn write_connection_file(args: &RunArgs, hub: &HubHandle) -> anyhow::Result<()> {
    let path = args.data_dir.join("connection.json");
    let info = serde_json::json!({
        "hostname": hub.hostname(),
        "mqtt": hub.mqtt_addr().to_string(),
        "http": hub.http_addr().to_string(),
        "idScope": hub.id_scope(),
        "caFile": hub.ca_cert_path().map(|p| p.display().to_string()),
        "signingPublicKey": args.data_dir.join("keys").join("recipe-signer.pub.pem"),
        "enrollmentGroupKeys": args.enrollment_groups.iter()
            .map(|g| (g.clone(), args.data_dir.join("enrollments").join(format!("{g}.key"))))
            .collect::<BTreeMap<_, _>>(),
    });
    write_file(&path, serde_json::to_string_pretty(&info)?.as_bytes())?;
    tracing::info!(path = %path.display(), "wrote hub connection settings");
    Ok(())
}

/// Writes a file readable by its owner only.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}
