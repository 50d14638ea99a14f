//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas never both write.
//!
//! A replica becomes leader by writing its identity into the Lease (guarded by the Lease's
//! resourceVersion) when the Lease is free or its holder stopped renewing. Expiry is judged
//! by this replica's own clock from when it last saw the Lease change, never by comparing
//! clocks across machines. The leader renews every `retry_period`; if it cannot renew for
//! `renew_deadline` it gives up leadership, and the process stops writing.

use cloudpillar_protocol::causes::ErrorChain;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, KubeContext, Result, is_status};

/// Settings of leader election.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (pod name, for example).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before giving up leadership.
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaderElection {
    /// Defaults of client-go: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: &str, lease_name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Leadership held by this replica; `lost` is cancelled when it ends.
#[derive(Debug)]
pub struct Leadership {
    /// Cancelled when leadership is lost or released.
    pub lost: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Stops renewing and frees the Lease so another replica takes over at once.
    pub async fn release(self, client: Client, election: &LeaderElection) {
        self.task.abort();
        self.lost.cancel();
        let api: Api<Lease> = Api::namespaced(client, &election.namespace);
        if let Ok(mut lease) = api.get(&election.lease_name).await {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(election.identity.as_str()) {
                spec.holder_identity = None;
                let _ = api
                    .replace(&election.lease_name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

/// What this replica last saw of the Lease, to judge expiry by its own clock.
struct Observed {
    resource_version: Option<String>,
    since: Instant,
}

/// Waits until this replica holds the Lease, then keeps renewing it in the background.
pub async fn acquire(client: Client, election: LeaderElection) -> Result<Leadership> {
    let api: Api<Lease> = Api::namespaced(client, &election.namespace);
    let mut observed = Observed {
        resource_version: None,
        since: Instant::now(),
    };
    loop {
        match try_acquire_or_renew(&api, &election, &mut observed).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "could not read or write the leader Lease")
            }
        }
        tokio::time::sleep(election.retry_period).await;
    }
    tracing::info!(identity = %election.identity, lease = %election.lease_name, "became leader");

    let lost = CancellationToken::new();
    let task = tokio::spawn(renew_loop(api, election, observed, lost.clone()));
    Ok(Leadership { lost, task })
}

async fn renew_loop(
    api: Api<Lease>,
    election: LeaderElection,
    mut observed: Observed,
    lost: CancellationToken,
) {
    let mut last_renewed = Instant::now();
    loop {
        tokio::time::sleep(election.retry_period).await;
        match try_acquire_or_renew(&api, &election, &mut observed).await {
            Ok(true) => last_renewed = Instant::now(),
            Ok(false) => {
                tracing::warn!("another replica holds the leader Lease; stopping");
                break;
            }
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "could not renew the leader Lease")
            }
        }
        if last_renewed.elapsed() > election.renew_deadline {
            tracing::warn!("leader Lease not renewed within the deadline; stopping");
            break;
        }
    }
    lost.cancel();
}

/// One attempt: `Ok(true)` when this replica holds the Lease afterwards.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    election: &LeaderElection,
    observed: &mut Observed,
) -> Result<bool> {
    let object = format!("{}/{}", election.namespace, election.lease_name);
    let now = MicroTime(Timestamp::now());
    let seconds = i32::try_from(election.lease_duration.as_secs()).unwrap_or(i32::MAX);

    let Some(mut lease) = api
        .get_opt(&election.lease_name)
        .await
        .kube("read lease", &object)?
    else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(election.lease_name.clone()),
                namespace: Some(election.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(election.identity.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(error) if is_status(&error, 409) => Ok(false),
            Err(source) => Err(Error::Kube {
                action: "create lease",
                object,
                source,
            }),
        };
    };

    if lease.metadata.resource_version != observed.resource_version {
        observed.resource_version = lease.metadata.resource_version.clone();
        observed.since = Instant::now();
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let held_by_me = holder == election.identity;
    let their_duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(election.lease_duration, Duration::from_secs);
    let expired = holder.is_empty() || observed.since.elapsed() > their_duration;
    if !held_by_me && !expired {
        return Ok(false);
    }

    if !held_by_me {
        spec.holder_identity = Some(election.identity.clone());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(now);
    match api
        .replace(&election.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(written) => {
            observed.resource_version = written.metadata.resource_version;
            observed.since = Instant::now();
            Ok(true)
        }
        Err(error) if is_status(&error, 409) => Ok(false),
        Err(source) => Err(Error::Kube {
            action: "renew lease",
            object,
            source,
        }),
    }
}
