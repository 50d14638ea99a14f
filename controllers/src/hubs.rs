//! Hub clients built from `Hub` objects and their Secrets, and the event pumps that turn twin
//! change events into Device reconciles.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_crds::{Device, Hub, HubKind};
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::device::DeviceIndex;
use crate::error::{Error, KubeContext, Result};
use crate::hub_events::{Devices, pump_events};
use crate::twin::{AzureTwinService, EventHubConnection, HubConnection, RetryPolicy, TwinService};

/// How often a cached hub client checks that its Secrets did not change.
const SECRET_RECHECK: Duration = Duration::from_secs(60);

/// Turns a hub's connection settings into a [`TwinService`]. The default builds an
/// [`AzureTwinService`]; embedders and tests may wrap or replace it.
pub trait HubConnector: Send + Sync + Debug {
    /// A client for one hub.
    fn connect(
        &self,
        connection: HubConnection,
    ) -> std::result::Result<Arc<dyn TwinService>, Box<dyn std::error::Error + Send + Sync>>;
}

/// Connects with [`AzureTwinService`], the IoT Hub service REST client.
#[derive(Debug, Default, Clone, Copy)]
pub struct AzureConnector;

impl HubConnector for AzureConnector {
    fn connect(
        &self,
        connection: HubConnection,
    ) -> std::result::Result<Arc<dyn TwinService>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AzureTwinService::new(connection)?)
    }
}

/// A live client for one Hub and what it was built from.
struct Entry {
    /// The Hub's generation: its spec, not its status (the event pump writes the status).
    hub_version: Option<i64>,
    secret_versions: Vec<Option<String>>,
    checked: Instant,
    service: Arc<dyn TwinService>,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Clients for every Hub in use, rebuilt when the Hub or its Secrets change.
pub struct HubClients {
    client: Client,
    connector: Arc<dyn HubConnector>,
    hubs: Store<Hub>,
    devices: Store<Device>,
    index: Arc<DeviceIndex>,
    triggers: UnboundedSender<ObjectRef<Device>>,
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl Debug for HubClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClients")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl HubClients {
    /// Clients resolved from `hubs`; twin events of the Devices in `devices` that hold their
    /// identity (see `index`) go to `triggers`.
    pub fn new(
        client: Client,
        connector: Arc<dyn HubConnector>,
        hubs: Store<Hub>,
        devices: Store<Device>,
        index: Arc<DeviceIndex>,
        triggers: UnboundedSender<ObjectRef<Device>>,
    ) -> Self {
        Self {
            client,
            connector,
            hubs,
            devices,
            index,
            triggers,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The Hub object `namespace/name` from the cache.
    pub fn hub(&self, namespace: &str, name: &str) -> Option<Arc<Hub>> {
        self.hubs.get(&ObjectRef::new(name).within(namespace))
    }

    /// The client for Hub `namespace/name`, for the reconcile of `object`; its Secrets are
    /// read again when they were last read more than a minute ago.
    pub async fn service(
        &self,
        namespace: &str,
        name: &str,
        object: &str,
    ) -> Result<Arc<dyn TwinService>> {
        self.service_checked_within(namespace, name, object, SECRET_RECHECK)
            .await
    }

    /// Like [`Self::service`], reading the Hub's Secrets again when they were last read more
    /// than `recheck` ago, so that a deleted or emptied one shows within that time.
    pub async fn service_checked_within(
        &self,
        namespace: &str,
        name: &str,
        object: &str,
        recheck: Duration,
    ) -> Result<Arc<dyn TwinService>> {
        let unusable = |reason: String| Error::HubUnusable {
            object: object.to_owned(),
            hub: name.to_owned(),
            reason,
        };
        let hub = self
            .hub(namespace, name)
            .ok_or_else(|| unusable("no such Hub".into()))?;
        let key = (namespace.to_owned(), name.to_owned());
        let mut entries = self.entries.lock().await;
        if let Some(entry) = entries.get(&key)
            && entry.hub_version == hub.metadata.generation
            && entry.checked.elapsed() < recheck
        {
            return Ok(entry.service.clone());
        }

        // Read the Secrets; keep the client when nothing it was built from changed. A missing
        // one is named as the Hub's, whichever object's reconcile asked.
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let owner = format!("hub {name}");
        let policy = &hub.spec.access_policy.secret_ref;
        let (policy_key, policy_version) =
            read_key(&secrets, &policy.name, &policy.key, &owner).await?;
        let mut versions = vec![policy_version];
        let mut ca_bundle = None;
        if let Some(ca) = &hub.spec.ca_bundle {
            let (pem, version) = read_key(&secrets, &ca.name, &ca.key, &owner).await?;
            ca_bundle = Some(pem.into_bytes());
            versions.push(version);
        }
        let mut event_hub = None;
        if let Some(endpoint) = &hub.spec.event_hub {
            let policy = endpoint
                .access_policy
                .as_ref()
                .unwrap_or(&hub.spec.access_policy);
            let secret = &policy.secret_ref;
            let (key, version) = read_key(&secrets, &secret.name, &secret.key, &owner).await?;
            versions.push(version);
            let tls = EventHubConnection::tls_config(ca_bundle.as_deref()).map_err(|reason| {
                unusable(format!(
                    "no TLS settings for the event hub endpoint: {reason}"
                ))
            })?;
            event_hub = Some(EventHubConnection {
                host: endpoint.host.clone(),
                name: endpoint.name.clone(),
                consumer_group: endpoint.consumer_group.clone(),
                policy_name: policy.policy_name.clone(),
                policy_key: key,
                tls: Some(tls),
            });
        }
        if let Some(entry) = entries.get_mut(&key)
            && entry.hub_version == hub.metadata.generation
            && entry.secret_versions == versions
        {
            entry.checked = Instant::now();
            return Ok(entry.service.clone());
        }

        let connection = HubConnection {
            service_host: hub.spec.endpoint.service_host.clone(),
            policy_name: hub.spec.access_policy.policy_name.clone(),
            policy_key,
            ca_bundle,
            write_rate_limit: hub.spec.twin_write_rate_limit,
            retry: RetryPolicy::default(),
            event_stream: hub.spec.kind == HubKind::Edge,
            event_hub,
        };
        let service = self
            .connector
            .connect(connection)
            .map_err(|e| unusable(e.to_string()))?;
        let pump = tokio::spawn(pump_events(
            service.clone(),
            Api::namespaced(self.client.clone(), namespace),
            key.clone(),
            Devices {
                index: self.index.clone(),
                store: self.devices.clone(),
                triggers: self.triggers.clone(),
            },
        ));
        tracing::info!(hub = %name, namespace, "hub client ready");
        let entry = Entry {
            hub_version: hub.metadata.generation,
            secret_versions: versions,
            checked: Instant::now(),
            service: service.clone(),
            pump,
        };
        entries.insert(key, entry);
        Ok(service)
    }
}

/// Reads one key of a Secret as UTF-8 text, with the Secret's resourceVersion.
async fn read_key(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
    owner: &str,
) -> Result<(String, Option<String>)> {
    let missing = || Error::SecretMissing {
        object: owner.to_owned(),
        secret: name.into(),
        key: key.into(),
    };
    let secret = secrets
        .get_opt(name)
        .await
        .kube("read secret for", owner)?
        .ok_or_else(missing)?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(missing)?;
    Ok((value, secret.resource_version()))
}
