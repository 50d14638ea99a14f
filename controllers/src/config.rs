//! Settings of [`crate::run`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::Reporter;

use crate::hubs::{AzureConnector, HubConnector};
use crate::recipe::{ArtifactStore, Signer};
use crate::runtime::LeaderElection;

/// Field manager of every write the operator makes, and its Event reporter name.
pub const MANAGER: &str = "cloudpillar-operator";

/// How the controllers run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace to watch; every namespace when `None`.
    pub namespace: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz` (port 0 picks one).
    pub metrics_addr: SocketAddr,
    /// Leader election; `None` runs without (a single replica only).
    pub leader_election: Option<LeaderElection>,
    /// Every object is reconciled at least this often, healing missed events.
    pub resync_period: Duration,
    /// Per-object retry delays after failed reconciles.
    pub error_backoff: Backoff,
    /// Reconciles running at once, per controller.
    pub concurrency: u16,
    /// A device the hub calls connected but that was silent this long is `Stale`.
    pub stale_after: Duration,
    /// How often each hub is probed (and its Secrets read again) for the Hub's `Ready`.
    pub hub_probe_period: Duration,
    /// The Secret key holding the PEM P-521 recipe signing key (unless `signer` is set).
    pub signing_key: Option<SecretLocation>,
    /// Signs recipes instead of the key in `signing_key` (for example the backend key holder).
    pub signer: Option<Arc<dyn Signer>>,
    /// Builds hub clients.
    pub connector: Arc<dyn HubConnector>,
    /// The blob container devices download recipe files from (for example
    /// `recipe::BlobArtifacts` over the backend's patches container); when set, Recipe status
    /// lists each file's size and hashes and a missing file holds the recipe back.
    pub artifacts: Option<Arc<dyn ArtifactStore>>,
    /// This replica's name in Events (pod name, for example).
    pub instance: Option<String>,
}

/// Exponential backoff with a ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

/// A key inside a Secret in a given namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretLocation {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// Key inside the Secret's data.
    pub key: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: None,
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            leader_election: None,
            resync_period: Duration::from_secs(600),
            error_backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
            concurrency: 32,
            stale_after: Duration::from_secs(600),
            hub_probe_period: Duration::from_secs(30),
            signing_key: None,
            signer: None,
            connector: Arc::new(AzureConnector),
            artifacts: None,
            instance: None,
        }
    }
}

impl Config {
    /// The Event reporter of this replica.
    pub fn reporter(&self) -> Reporter {
        Reporter {
            controller: MANAGER.into(),
            instance: self.instance.clone(),
        }
    }
}
