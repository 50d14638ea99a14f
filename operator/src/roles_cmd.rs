//! One role per process, as the Helm chart runs them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use cloudpillar_backend::roles::{
    BlobArgs, ConsumerArgs, HubArgs, KeyholderArgs as KeyArgs, MongoArgs, PartitionArgs,
};

/// Options of `cloudpillar operator`.
#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// Namespace to watch; every namespace when unset.
    #[arg(long, env = "CP_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "CP_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics: SocketAddr,
    /// Secret `namespace/name` with the recipe signing key in `signing.pem`.
    #[arg(long, env = "CP_SIGNING_SECRET")]
    pub signing_secret: Option<String>,
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
}

/// Runs the controllers until a signal or lost leadership.
pub async fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    cloudpillar_backend::install_tls_provider();
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("cloudpillar-{}", std::process::id()));
    let signing_key = match &args.signing_secret {
        Some(text) => {
            let (namespace, name) = text
                .split_once('/')
                .context("--signing-secret must be namespace/name")?;
            Some(cloudpillar_controllers::SecretLocation {
                namespace: namespace.into(),
                name: name.into(),
                key: cloudpillar_backend::keys::SECRET_ACTIVE_KEY.into(),
            })
        }
        None => None,
    };
    let leader_election = args.leader_election_namespace.clone().map(|namespace| {
        cloudpillar_controllers::LeaderElection {
            namespace,
            lease_name: args.leader_election_lease.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    });
    let config = cloudpillar_controllers::Config {
        namespace: args.namespace,
        metrics_addr: args.metrics,
        leader_election,
        signing_key,
        instance: Some(identity),
        ..Default::default()
    };
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
}

/// Runs the streamer role against the hub's REST API.
pub async fn streamer(args: StreamerArgs) -> anyhow::Result<()> {
    let link = args.hub.connect().context("connecting to the hub")?;
    cloudpillar_backend::roles::run_streamer(
        link,
        &args.blob,
        &args.mongo,
        &args.partition,
        &args.consumer,
    )
    .await
    .context("streamer")
}

/// Runs the writer role against the hub's REST API.
pub async fn writer(args: StreamerArgs) -> anyhow::Result<()> {
    let link = args.hub.connect().context("connecting to the hub")?;
    cloudpillar_backend::roles::run_writer(
        link,
        &args.blob,
        &args.mongo,
        &args.partition,
        &args.consumer,
    )
    .await
    .context("writer")
}

/// Options of `cloudpillar keyholder`.
#[derive(Debug, clap::Args)]
pub struct KeyholderRoleArgs {
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub blob: BlobArgs,
}

/// Runs the key holder's HTTP API.
pub async fn keyholder(args: KeyholderRoleArgs) -> anyhow::Result<()> {
    cloudpillar_backend::roles::run_keyholder(&args.keys, &args.blob)
        .await
        .context("key holder")
}
