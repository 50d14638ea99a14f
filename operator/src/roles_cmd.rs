//! One role per process, as the Helm chart runs them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cloudpillar_backend::blob::BlobStores;
use cloudpillar_backend::hub_link::HubLink;
use cloudpillar_backend::roles::{
    BlobArgs, ConsumerArgs, HubArgs, KeyholderArgs as KeyArgs, MongoArgs, PartitionArgs,
    UploadSigning,
};
use cloudpillar_backend::writer::history::History;
use tokio_util::sync::CancellationToken;

use crate::health::keyholder::KeyholderMetrics;
use crate::health::link::{CountedLink, LinkMetrics};
use crate::health::{RoleHealth, serve_if_configured};
use crate::keyholder_args::KeyholderClientArgs;

/// Blob the readiness checks look for: its absence is the normal answer, an error is not.
const PROBE_BLOB: &str = ".cloudpillar-readiness-probe";

/// Options of `cloudpillar operator`.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("signer")
        .required(true)
        .args(["signing_secret", "keyholder_url"])
))]
pub struct OperatorArgs {
    /// Namespace to watch; every namespace when unset.
    #[arg(long, env = "CP_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "CP_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics: SocketAddr,
    /// Secret `namespace/name` with the recipe signing key in `signing.pem`, read by the
    /// operator itself. Give exactly one of this and `--keyholder-url`.
    #[arg(
        long,
        env = "CP_SIGNING_SECRET",
        conflicts_with = "keyholder_token_file"
    )]
    pub signing_secret: Option<String>,
    /// The key holder that signs recipes instead (`--keyholder-url`). Give exactly one of
    /// this and `--signing-secret`.
    #[command(flatten)]
    pub keyholder: KeyholderClientArgs,
    /// Namespace of the leader-election Lease; leader election is off when unset
    /// (run a single replica then).
    #[arg(long, env = "CP_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "CP_LEADER_ELECTION_LEASE",
        default_value = "cloudpillar-operator"
    )]
    pub leader_election_lease: String,
    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The blob store the streamer serves downloads from: Recipe status lists the size and
    /// hashes of each file a recipe downloads, and a missing file holds that recipe back.
    #[command(flatten)]
    pub blob: BlobArgs,
}

/// Runs the controllers until a signal or lost leadership.
pub async fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    cloudpillar_backend::install_tls_provider();
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("cloudpillar-{}", std::process::id()));
    let mut config = cloudpillar_controllers::Config {
        namespace: args.namespace.clone(),
        metrics_addr: args.metrics,
        instance: Some(identity.clone()),
        artifacts: Some(crate::artifact_cmd::lookup_store(&args.blob).await?),
        ..Default::default()
    };
    match (&args.signing_secret, args.keyholder.signer()?) {
        (Some(text), None) => {
            let (namespace, name) = text
                .split_once('/')
                .context("--signing-secret must be namespace/name")?;
            config.signing_key = Some(cloudpillar_controllers::SecretLocation {
                namespace: namespace.into(),
                name: name.into(),
                key: cloudpillar_backend::keys::SECRET_ACTIVE_KEY.into(),
            });
        }
        (None, Some(signer)) => config.signer = Some(signer),
        _ => anyhow::bail!("give exactly one of --signing-secret and --keyholder-url"),
    }
    config.leader_election = args.leader_election_namespace.clone().map(|namespace| {
        cloudpillar_controllers::LeaderElection {
            namespace,
            lease_name: args.leader_election_lease.clone(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    });
    cloudpillar_controllers::run(config)
        .await
        .context("controllers")
}

/// Options of `cloudpillar streamer` and `cloudpillar writer`.
#[derive(Debug, clap::Args)]
pub struct StreamerArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    #[command(flatten)]
    pub blob: BlobArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub partition: PartitionArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    /// Address of `/metrics`, `/healthz` and `/readyz`; nothing is served when unset.
    #[arg(long, env = "CP_METRICS_ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// Options of `cloudpillar streamer`.
#[derive(Debug, clap::Args)]
pub struct StreamerRoleArgs {
    #[command(flatten)]
    pub common: StreamerArgs,
    /// The key holder that signs the uploads devices ask to have signed (RunDiagnostics);
    /// without it such requests are refused.
    #[command(flatten)]
    pub keyholder: KeyholderClientArgs,
}

/// Runs the streamer role against the hub's REST API.
pub async fn streamer(role: StreamerRoleArgs) -> anyhow::Result<()> {
    let signing = match role.keyholder.signer()? {
        Some(signer) => UploadSigning::Remote(signer),
        None => UploadSigning::Refused,
    };
    let args = role.common;
    let shutdown = CancellationToken::new();
    let link = observed_consumer(&args, shutdown.clone()).await?;
    let ran = cloudpillar_backend::roles::run_streamer(
        link,
        &args.blob,
        &args.mongo,
        &args.partition,
        &args.consumer,
        signing,
    )
    .await
    .context("streamer");
    shutdown.cancel();
    ran
}

/// Runs the writer role against the hub's REST API.
pub async fn writer(args: StreamerArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let link = observed_consumer(&args, shutdown.clone()).await?;
    let ran = cloudpillar_backend::roles::run_writer(
        link,
        &args.blob,
        &args.mongo,
        &args.partition,
        &args.consumer,
    )
    .await
    .context("writer");
    shutdown.cancel();
    ran
}

/// The hub link of a streamer or writer with its calls counted, and the health endpoints
/// (when `--metrics` is set): ready while the hub, the blob store and, when configured,
/// MongoDB answer.
async fn observed_consumer(
    args: &StreamerArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Arc<dyn HubLink>> {
    let inner = args.hub.connect().context("connecting to the hub")?;
    let mut health = RoleHealth::new();
    let link = CountedLink::new(inner, LinkMetrics::register(health.registry()));
    {
        let link = link.clone();
        health.check("hub", move || {
            let link = link.clone();
            async move { link.probe().await.context("reading the event stream") }
        });
    }
    check_blob_store(&mut health, &args.blob).await?;
    if let Some(url) = &args.mongo.mongodb_url {
        let history = History::connect(url, &args.mongo.mongodb_database)
            .await
            .context("connecting to the history database")?;
        health.check("mongodb", move || {
            let database = history.database().clone();
            async move {
                let ping = mongodb::bson::doc! { "ping": 1 };
                database.run_command(ping).await.context("ping")?;
                Ok(())
            }
        });
    }
    serve_if_configured(health, args.metrics, shutdown).await?;
    Ok(Arc::new(link))
}

/// Ready while the blob store answers a metadata read.
async fn check_blob_store(health: &mut RoleHealth, blob: &BlobArgs) -> anyhow::Result<()> {
    let stores = BlobStores::open_prefixed(&blob.config(), &blob.blob_container_prefix)
        .await
        .context("opening the blob store")?;
    health.check("blob_store", move || {
        let state = stores.state.clone();
        async move {
            state
                .exists(PROBE_BLOB)
                .await
                .with_context(|| format!("reading container {}", state.name()))?;
            Ok(())
        }
    });
    Ok(())
}

/// Options of `cloudpillar keyholder`.
#[derive(Debug, clap::Args)]
pub struct KeyholderRoleArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub blob: BlobArgs,
    /// Address of `/metrics`, `/healthz` and `/readyz`; nothing is served when unset.
    #[arg(long, env = "CP_METRICS_ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// Runs the key holder's HTTP API with its requests counted; ready once the keys are loaded
/// and while the blob store answers (blob signatures read from it).
pub async fn keyholder(args: KeyholderRoleArgs) -> anyhow::Result<()> {
    let access = args.keys.sign_access().context("checking who may sign")?;
    let holder = cloudpillar_backend::roles::key_holder(&args.keys)
        .await
        .context("loading the signing keys")?;
    let stores = BlobStores::open_prefixed(&args.blob.config(), &args.blob.blob_container_prefix)
        .await
        .context("opening the blob store")?;

    let mut health = RoleHealth::new();
    let metrics = KeyholderMetrics::register(health.registry());
    // Known gap: Key Vault is reached when the keys load, not on every probe, so a vault that
    // becomes unreachable later shows up as failed signatures, not as "not ready".
    check_blob_store(&mut health, &args.blob).await?;
    let shutdown = CancellationToken::new();
    serve_if_configured(health, args.metrics, shutdown.clone()).await?;

    let app = metrics.layer(cloudpillar_backend::keys::router(
        holder.clone(),
        stores,
        access,
    ));
    let listen = args.keys.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(addr = %listen, key_id = holder.active_key_id(), "key holder listening");
    let served = axum::serve(listener, app)
        .await
        .with_context(|| format!("serving the key API on {listen}"));
    shutdown.cancel();
    served
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use clap::error::ErrorKind;

    use crate::Cli;

    fn operator(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["cloudpillar", "operator"].iter().chain(args))
    }

    #[test]
    fn operator_needs_a_signing_secret_or_a_key_holder() {
        let error = operator(&[]).expect_err("refused");
        assert_eq!(error.kind(), ErrorKind::MissingRequiredArgument);
        let text = error.to_string();
        assert!(text.contains("--signing-secret"), "{text}");
        assert!(text.contains("--keyholder-url"), "{text}");
    }

    #[test]
    fn operator_refuses_both_signers_at_once() {
        let both = ["--signing-secret=ns/key", "--keyholder-url=http://kh:8090"];
        let error = operator(&both).expect_err("refused");
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn a_key_holder_token_needs_the_key_holder() {
        let args = ["--signing-secret=ns/key", "--keyholder-token-file=/t"];
        assert!(operator(&args).is_err());
        let args = [
            "--keyholder-url=http://kh:8090",
            "--keyholder-token-file=/t",
        ];
        assert!(operator(&args).is_ok());
        assert!(operator(&["--signing-secret=ns/key"]).is_ok());
    }

    #[test]
    fn the_streamer_takes_a_key_holder_and_the_writer_does_not() {
        let streamer = ["cloudpillar", "streamer", "--keyholder-url=http://kh:8090"];
        assert!(Cli::try_parse_from(streamer).is_ok());
        let token_alone = ["cloudpillar", "streamer", "--keyholder-token-file=/t"];
        assert!(Cli::try_parse_from(token_alone).is_err());
        let writer = ["cloudpillar", "writer", "--keyholder-url=http://kh:8090"];
        assert!(Cli::try_parse_from(writer).is_err());
    }

    #[test]
    fn every_role_takes_a_metrics_address() {
        for role in ["streamer", "writer", "keyholder"] {
            let parsed = Cli::try_parse_from(["cloudpillar", role, "--metrics=127.0.0.1:9"]);
            assert!(parsed.is_ok(), "{role}: {parsed:?}");
        }
        let hub = [
            "cloudpillar",
            "hub",
            "--data-dir=/d",
            "--metrics=127.0.0.1:9",
        ];
        assert!(Cli::try_parse_from(hub).is_ok());
    }
}
