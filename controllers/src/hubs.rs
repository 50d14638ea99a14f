//! Hub clients built from `Hub` objects and their Secrets, and the event pumps that turn twin
//! change events into Device reconciles.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cloudpillar_crds::{Device, Hub, HubKind};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::{Error, KubeContext, Result};
use crate::twin::{
    AzureTwinService, Checkpoint, HubConnection, RetryPolicy, TwinError, TwinEventKind, TwinService,
};

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

/// Device id (per hub) to Device object, filled by the Device reconciler.
#[derive(Debug, Default)]
pub struct DeviceIndex {
    map: RwLock<HashMap<(String, String, String), ObjectRef<Device>>>,
}

impl DeviceIndex {
    /// Records that `device_id` in hub `namespace/hub` is the Device `object`.
    pub fn insert(&self, namespace: &str, hub: &str, device_id: &str, object: ObjectRef<Device>) {
        let key = (namespace.to_owned(), hub.to_owned(), device_id.to_owned());
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(&key) != Some(&object) {
            map.insert(key, object);
        }
    }

    /// Forgets `device_id` in hub `namespace/hub`.
    pub fn remove(&self, namespace: &str, hub: &str, device_id: &str) {
        let key = (namespace.to_owned(), hub.to_owned(), device_id.to_owned());
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
    }

    fn get(&self, namespace: &str, hub: &str, device_id: &str) -> Option<ObjectRef<Device>> {
        let key = (namespace.to_owned(), hub.to_owned(), device_id.to_owned());
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned()
    }
}

/// A live client for one Hub and what it was built from.
struct Entry {
    hub_version: Option<String>,
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
    /// Clients resolved from `hubs`; twin events of known devices go to `triggers`.
    pub fn new(
        client: Client,
        connector: Arc<dyn HubConnector>,
        hubs: Store<Hub>,
        index: Arc<DeviceIndex>,
        triggers: UnboundedSender<ObjectRef<Device>>,
    ) -> Self {
        Self {
            client,
            connector,
            hubs,
            index,
            triggers,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The Hub object `namespace/name` from the cache.
    pub fn hub(&self, namespace: &str, name: &str) -> Option<Arc<Hub>> {
        self.hubs.get(&ObjectRef::new(name).within(namespace))
    }

    /// The client for Hub `namespace/name`, for the reconcile of `object`.
    pub async fn service(
        &self,
        namespace: &str,
        name: &str,
        object: &str,
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
            && entry.hub_version == hub.resource_version()
            && entry.checked.elapsed() < SECRET_RECHECK
        {
            return Ok(entry.service.clone());
        }

        // Read the Secrets; keep the client when nothing it was built from changed.
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let policy = &hub.spec.access_policy.secret_ref;
        let (policy_key, policy_version) =
            read_key(&secrets, &policy.name, &policy.key, object).await?;
        let mut versions = vec![policy_version];
        let mut ca_bundle = None;
        if let Some(ca) = &hub.spec.ca_bundle {
            let (pem, version) = read_key(&secrets, &ca.name, &ca.key, object).await?;
            ca_bundle = Some(pem.into_bytes());
            versions.push(version);
        }
        if let Some(entry) = entries.get_mut(&key)
            && entry.hub_version == hub.resource_version()
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
        };
        let service = self
            .connector
            .connect(connection)
            .map_err(|e| unusable(e.to_string()))?;
        let pump = tokio::spawn(pump_events(
            service.clone(),
            key.clone(),
            self.index.clone(),
            self.triggers.clone(),
        ));
        tracing::info!(hub = %name, namespace, "hub client ready");
        let entry = Entry {
            hub_version: hub.resource_version(),
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
    object: &str,
) -> Result<(String, Option<String>)> {
    let missing = || Error::SecretMissing {
        object: object.to_owned(),
        secret: name.into(),
        key: key.into(),
    };
    let secret = secrets
        .get_opt(name)
        .await
        .kube("read secret for", object)?
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

/// Follows a hub's event stream and asks for a reconcile of each Device whose reported
/// properties or connection changed. Changes of tags and desired properties are the
/// operator's own writes and need no reconcile.
async fn pump_events(
    service: Arc<dyn TwinService>,
    (namespace, hub): (String, String),
    index: Arc<DeviceIndex>,
    triggers: UnboundedSender<ObjectRef<Device>>,
) {
    let mut checkpoint = Checkpoint::Latest;
    let mut failures: u32 = 0;
    loop {
        let mut events = service.subscribe(checkpoint);
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(TwinError::EventsUnsupported { .. }) => {
                    tracing::info!(%hub, "hub has no readable event stream; relying on resync");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%hub, %error, "hub event stream failed; resuming");
                    break;
                }
            };
            failures = 0;
            checkpoint = Checkpoint::Sequence(event.sequence + 1);
            let relevant = match event.kind {
                TwinEventKind::Connected | TwinEventKind::Disconnected => true,
                TwinEventKind::TwinChanged => event.body.as_ref().is_none_or(|body| {
                    body.pointer("/properties/reported").is_some()
                        || body.get("tags").is_none()
                            && body.pointer("/properties/desired").is_none()
                }),
                TwinEventKind::Other => false,
            };
            if relevant && let Some(object) = index.get(&namespace, &hub, &event.device_id) {
                let _ = triggers.unbounded_send(object);
            }
        }
        failures = failures.saturating_add(1);
        let delay = Duration::from_millis(500 * 2_u64.pow(failures.min(6)));
        tokio::time::sleep(delay).await;
    }
}
