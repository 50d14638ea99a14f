//! Shared helpers for tests that run against a real Kubernetes API server.
//!
//! The server comes from `k3s-dev/up` (or any cluster): `KUBECONFIG` must point
//! at it. `k3s-dev/test` sets that up before running `cargo test`.

use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};

/// A free loopback TCP port for a process a test starts.
///
/// Picked below the kernel's ephemeral range (32768 and up on Linux): a port probed there
/// and released can be taken by any outgoing connection on the machine before the process
/// binds it. Ports handed out once by this process are not handed out again.
pub fn free_port() -> anyhow::Result<u16> {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;

    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

    let start = u16::try_from(RandomState::new().hash_one(std::process::id()) % u64::from(COUNT))
        .unwrap_or(0);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for step in 0..COUNT {
        let port = FIRST + (start + step) % COUNT;
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!(
        "no free loopback port between {FIRST} and {}",
        FIRST + COUNT
    )
}

/// Field manager used by tests when they apply objects.
pub const FIELD_MANAGER: &str = "cloudpillar-tests";

/// A client for the cluster named by `KUBECONFIG`.
pub async fn kube_client() -> anyhow::Result<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        bail!(
            "KUBECONFIG is not set: start a cluster with `k3s-dev/up` or run tests via `k3s-dev/test`"
        );
    }
    let config = Config::infer().await.context("reading KUBECONFIG")?;
    Client::try_from(config).context("building the Kubernetes client")
}

/// Applies every CloudPillar CRD and waits until the server reports it Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in cloudpillar_crds::all() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        wait_established(&api, &name).await?;
    }
    Ok(())
}

async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        let crd = api.get(name).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("CRD {name} was not Established within 10 s")
}

/// Creates a fresh namespace named `prefix-<random>` for one test and returns its name.
pub async fn test_namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let suffix: u32 = rand_suffix();
    let name = format!("{prefix}-{suffix:08x}");
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "cloudpillar.io/test": "true" } }
    }))?;
    api.create(&PostParams::default(), &ns)
        .await
        .context("creating test namespace")?;
    Ok(name)
}

/// Deletes a namespace created by [`test_namespace`]; the server removes its objects.
pub async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.delete(name, &DeleteParams::background()).await?;
    Ok(())
}

/// Reads a fixture file as JSON and returns the member at `pointer` (e.g. `/changeSpec`).
pub fn fixture_json(file: &str, pointer: &str) -> anyhow::Result<serde_json::Value> {
    let path = cloudpillar_protocol::fixtures::path(file);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading fixture {} (set CLOUDPILLAR_FIXTURES)",
            path.display()
        )
    })?;
    let document: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    document
        .pointer(pointer)
        .cloned()
        .with_context(|| format!("{} has no {pointer}", path.display()))
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish() as u32
}

pub mod system;

/// Helpers for controller tests: an embedded edge hub registered as a `Hub` object, devices
/// that speak MQTT to it as the agent would, and the operator running in the test process.
pub mod controllers {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use anyhow::{Context, bail};
    use cloudpillar_controllers::runtime::RunError;
    use cloudpillar_controllers::twin::{EventHubConnection, HubConnection, RetryPolicy};
    use cloudpillar_controllers::{Config, run_until};
    use cloudpillar_hub::{Hub, HubConfig, HubHandle};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::Client;
    use kube::api::{Api, Patch, PatchParams};
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::FIELD_MANAGER;

    /// A TLS client configuration that trusts the certificate authorities in `ca_pem` only.
    pub fn tls_trusting(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(tls))
    }

    /// An edge hub on loopback, known to the cluster as a `Hub` with its policy Secret.
    pub struct EdgeHub {
        /// The running hub.
        pub handle: HubHandle,
        /// Name of the `Hub` object.
        pub name: String,
        ca_pem: String,
        tls: Arc<rustls::ClientConfig>,
        _dir: tempfile::TempDir,
    }

    impl std::fmt::Debug for EdgeHub {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("EdgeHub").finish_non_exhaustive()
        }
    }

    impl EdgeHub {
        /// Starts a hub (TLS with its development CA, host name `localhost`) and applies a
        /// `Hub` object `name` in `namespace` with the given twin write rate limit.
        pub async fn start(
            client: &Client,
            namespace: &str,
            name: &str,
            rate: u32,
        ) -> anyhow::Result<Self> {
            let hub = Self::launch(name).await?;
            hub.register(client, namespace, rate).await?;
            Ok(hub)
        }

        /// Starts a hub without telling any cluster about it.
        pub async fn launch(name: &str) -> anyhow::Result<Self> {
            let dir = tempfile::tempdir()?;
            let mut config = HubConfig::new(dir.path());
            config.hostname = "localhost".into();
            let handle = Hub::start(config).await.context("starting the edge hub")?;
            let ca_path = handle
                .ca_cert_path()
                .context("hub without a development CA")?;
            let ca_pem = std::fs::read_to_string(ca_path)?;
            Ok(Self {
                handle,
                name: name.to_owned(),
                tls: tls_trusting(&ca_pem)?,
                ca_pem,
                _dir: dir,
            })
        }

        /// Applies the policy Secret and the `Hub` object in `namespace`.
        pub async fn register(
            &self,
            client: &Client,
            namespace: &str,
            rate: u32,
        ) -> anyhow::Result<()> {
            let (name, handle) = (&self.name, &self.handle);
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("{name}-policy")),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([
                    (
                        "primaryKey".to_owned(),
                        ByteString(handle.policy_key().as_bytes().to_vec()),
                    ),
                    (
                        "ca.crt".to_owned(),
                        ByteString(self.ca_pem.as_bytes().to_vec()),
                    ),
                ])),
                ..Secret::default()
            };
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
            secrets
                .patch(&format!("{name}-policy"), &params, &Patch::Apply(&secret))
                .await?;
            let hub = json!({
                "apiVersion": "cloudpillar.io/v1alpha1",
                "kind": "Hub",
                "metadata": { "name": name },
                "spec": {
                    "kind": "edge",
                    "endpoint": { "serviceHost": format!("localhost:{}", handle.http_addr().port()) },
                    "accessPolicy": {
                        "policyName": handle.policy_name(),
                        "secretRef": { "name": format!("{name}-policy"), "key": "primaryKey" },
                    },
                    "caBundle": { "name": format!("{name}-policy"), "key": "ca.crt" },
                    "twinWriteRateLimit": rate,
                },
            });
            let hubs: Api<cloudpillar_crds::Hub> = Api::namespaced(client.clone(), namespace);
            hubs.patch(name, &params, &Patch::Apply(&hub))
                .await
                .context("applying the Hub")?;
            Ok(())
        }

        /// Connection settings for a `TwinService` client of this hub.
        pub fn connection(&self, rate: u32) -> HubConnection {
            HubConnection {
                service_host: format!("localhost:{}", self.handle.http_addr().port()),
                policy_name: self.handle.policy_name().to_owned(),
                policy_key: self.handle.policy_key().to_owned(),
                ca_bundle: Some(self.ca_pem.as_bytes().to_vec()),
                write_rate_limit: rate,
                retry: RetryPolicy::default(),
                event_stream: true,
                event_hub: None,
            }
        }

        /// Settings for reading the hub's Event Hubs-compatible endpoint (TLS, its CA) with
        /// the policy key `key`.
        pub fn event_hub(&self, key: &str) -> EventHubConnection {
            EventHubConnection {
                host: format!(
                    "localhost:{}",
                    self.handle.amqp_addr().map_or(0, |a| a.port())
                ),
                name: self.handle.event_hub_name().to_owned(),
                consumer_group: "$Default".into(),
                policy_name: self.handle.policy_name().to_owned(),
                policy_key: key.to_owned(),
                tls: Some(self.tls.clone()),
            }
        }

        /// The twin of `device_id` as the service API shows it; `None` when unknown.
        pub fn twin(&self, device_id: &str) -> Option<Value> {
            self.handle.core().get_twin(device_id).ok()
        }

        /// Connects `device_id` over MQTT with its base64 symmetric key, as the agent does.
        pub async fn connect(&self, device_id: &str, key: &str) -> anyhow::Result<SimDevice> {
            let expiry = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                + 3600;
            let resource = format!("{}/devices/{device_id}", self.handle.hostname());
            let token = cloudpillar_hub::sas::generate(key, &resource, expiry, None)?;
            let mut options =
                MqttOptions::new(device_id, "localhost", self.handle.mqtt_addr().port());
            options.set_credentials(
                format!(
                    "{}/{device_id}/?api-version=2021-04-12",
                    self.handle.hostname()
                ),
                token,
            );
            options.set_keep_alive(Duration::from_secs(30));
            options.set_max_packet_size(256 * 1024, 256 * 1024);
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                self.tls.clone(),
            )));
            SimDevice::connect(options).await
        }
    }

    /// A device on MQTT that reports like the agent: reported patches with request ids.
    pub struct SimDevice {
        client: AsyncClient,
        responses: mpsc::UnboundedReceiver<String>,
        rid: AtomicU64,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for SimDevice {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl std::fmt::Debug for SimDevice {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SimDevice").finish_non_exhaustive()
        }
    }

    impl SimDevice {
        async fn connect(options: MqttOptions) -> anyhow::Result<Self> {
            let (client, mut events) = AsyncClient::new(options, 64);
            let (connected_tx, mut connected) = mpsc::unbounded_channel();
            let (responses_tx, responses) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = connected_tx.send(Ok(()));
                        }
                        Ok(Event::Incoming(Packet::Publish(p)))
                            if p.topic.starts_with("$iothub/twin/res/") =>
                        {
                            let _ = responses_tx.send(p.topic.clone());
                        }
                        Ok(_) => {}
                        Err(error) => {
                            let _ = connected_tx.send(Err(error.to_string()));
                            return;
                        }
                    }
                }
            });
            match tokio::time::timeout(Duration::from_secs(10), connected.recv()).await {
                Ok(Some(Ok(()))) => {}
                other => bail!("device did not connect: {other:?}"),
            }
            client
                .subscribe("$iothub/twin/res/#", QoS::AtLeastOnce)
                .await?;
            Ok(Self {
                client,
                responses,
                rid: AtomicU64::new(1),
                task,
            })
        }

        /// Patches reported properties and waits for the hub's 204.
        pub async fn report(&mut self, patch: Value) -> anyhow::Result<()> {
            let rid = self.rid.fetch_add(1, Ordering::Relaxed);
            let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}");
            self.client
                .publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(&patch)?)
                .await?;
            let wanted = format!("$rid={rid}");
            let answer = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(topic) = self.responses.recv().await {
                    if topic.contains(&wanted)
                        && (topic.ends_with(&wanted) || topic.contains(&format!("{wanted}&")))
                    {
                        return Some(topic);
                    }
                }
                None
            })
            .await?;
            match answer {
                Some(topic) if topic.starts_with("$iothub/twin/res/204/") => Ok(()),
                other => bail!("reported patch answered with {other:?}"),
            }
        }

        /// Disconnects cleanly.
        pub async fn disconnect(self) {
            let _ = self.client.disconnect().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The operator running inside the test process.
    pub struct Operator {
        stop: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), RunError>>,
    }

    impl std::fmt::Debug for Operator {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Operator").finish_non_exhaustive()
        }
    }

    impl Operator {
        /// Starts every controller with `config`, watching `config.namespace`.
        pub fn start(client: &Client, config: Config) -> Self {
            let stop = CancellationToken::new();
            let task = tokio::spawn(run_until(client.clone(), config, stop.clone()));
            Self { stop, task }
        }

        /// Stops the operator and waits until it has.
        pub async fn stop(self) -> anyhow::Result<()> {
            self.stop.cancel();
            match tokio::time::timeout(Duration::from_secs(30), self.task).await {
                Ok(Ok(result)) => result.context("operator stopped with an error"),
                Ok(Err(error)) => Err(error.into()),
                Err(_) => bail!("operator did not stop within 30 s"),
            }
        }
    }

    /// Operator settings for a test in `namespace`: metrics on a free port, a short resync.
    pub fn test_config(namespace: &str) -> Config {
        Config {
            namespace: Some(namespace.to_owned()),
            metrics_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            resync_period: Duration::from_secs(30),
            ..Config::default()
        }
    }

    /// Polls `check` every 200 ms until it gives `Some`, failing after `timeout`.
    pub async fn eventually<T, F, Fut>(
        what: &str,
        timeout: Duration,
        mut check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(value) = check().await? {
                return Ok(value);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The primary key of a Device's operator-made key Secret.
    pub async fn device_key(
        client: &Client,
        namespace: &str,
        device: &str,
    ) -> anyhow::Result<String> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let name = cloudpillar_controllers::device::key_secret_name(device);
        let secret = secrets
            .get(&name)
            .await
            .with_context(|| format!("reading Secret {name}"))?;
        let bytes = secret
            .data
            .and_then(|d| d.get("primaryKey").cloned())
            .context("no primaryKey")?;
        Ok(String::from_utf8(bytes.0)?)
    }

    /// The Events about the object called `name` in `namespace`.
    pub async fn events_for(
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Vec<k8s_openapi::api::events::v1::Event>> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), namespace);
        let events = api.list(&kube::api::ListParams::default()).await?;
        Ok(events
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect())
    }

    /// Applies an object given as JSON with the test field manager.
    pub async fn apply<K>(client: &Client, namespace: &str, object: Value) -> anyhow::Result<K>
    where
        K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = object["metadata"]["name"]
            .as_str()
            .context("object without a name")?
            .to_owned();
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        Ok(api.patch(&name, &params, &Patch::Apply(&object)).await?)
    }
}

/// A hub connector that records every twin patch the operator sends, then sends it on to
/// the real hub through the normal client.
pub mod recording {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use cloudpillar_controllers::hubs::{AzureConnector, HubConnector};
    use cloudpillar_controllers::twin::{
        Checkpoint, DeviceIdentity, DeviceRecord, HubConnection, QueryPage, Twin, TwinError,
        TwinEvent, TwinPatch, TwinService,
    };
    use futures::stream::BoxStream;

    /// Twin patches sent, in order: device id and patch.
    pub type PatchLog = Arc<Mutex<Vec<(String, TwinPatch)>>>;

    /// Wraps [`AzureConnector`] and logs patches into `log`.
    #[derive(Debug, Default, Clone)]
    pub struct RecordingConnector {
        /// The log.
        pub log: PatchLog,
    }

    impl RecordingConnector {
        /// Patches sent to `device_id` so far.
        pub fn patches_for(&self, device_id: &str) -> Vec<TwinPatch> {
            let log = self
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            log.iter()
                .filter(|(d, _)| d == device_id)
                .map(|(_, p)| p.clone())
                .collect()
        }

        /// Forgets what was recorded.
        pub fn clear(&self) {
            self.log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
    }

    impl HubConnector for RecordingConnector {
        fn connect(
            &self,
            connection: HubConnection,
        ) -> Result<Arc<dyn TwinService>, Box<dyn std::error::Error + Send + Sync>> {
            let inner = AzureConnector.connect(connection)?;
            Ok(Arc::new(Recording {
                inner,
                log: self.log.clone(),
            }))
        }
    }

    #[derive(Debug)]
    struct Recording {
        inner: Arc<dyn TwinService>,
        log: PatchLog,
    }

    #[async_trait]
    impl TwinService for Recording {
        async fn ensure_device(
            &self,
            identity: &DeviceIdentity,
        ) -> Result<DeviceRecord, TwinError> {
            self.inner.ensure_device(identity).await
        }
        async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, TwinError> {
            self.inner.get_device(device_id).await
        }
        async fn delete_device(&self, device_id: &str) -> Result<bool, TwinError> {
            self.inner.delete_device(device_id).await
        }
        async fn get_twin(&self, device_id: &str) -> Result<Twin, TwinError> {
            self.inner.get_twin(device_id).await
        }
        async fn patch_twin(
            &self,
            device_id: &str,
            patch: &TwinPatch,
            etag: Option<&str>,
        ) -> Result<Twin, TwinError> {
            let written = self.inner.patch_twin(device_id, patch, etag).await?;
            let mut log = self
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            log.push((device_id.to_owned(), patch.clone()));
            Ok(written)
        }
        async fn query(
            &self,
            query: &str,
            continuation: Option<&str>,
        ) -> Result<QueryPage, TwinError> {
            self.inner.query(query, continuation).await
        }
        fn subscribe(&self, from: Checkpoint) -> BoxStream<'static, Result<TwinEvent, TwinError>> {
            self.inner.subscribe(from)
        }
        async fn device_key(&self, device_id: &str) -> Result<Option<String>, TwinError> {
            self.inner.device_key(device_id).await
        }
        async fn send_c2d(
            &self,
            device_id: &str,
            message: &cloudpillar_protocol::messages::C2dMessage,
            message_id: &str,
        ) -> Result<(), TwinError> {
            self.inner.send_c2d(device_id, message, message_id).await
        }
    }
}

/// Deletes a test namespace while the operator still runs, so that it can remove its
/// finalizers, and waits (at most `timeout`) until the namespace is gone.
pub async fn delete_namespace_and_wait(
    client: &kube::Client,
    name: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    delete_namespace(client, name).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    while api.get_opt(name).await?.is_some() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_are_handed_out_once() {
        let ports: Vec<u16> = (0..50).map(|_| super::free_port().expect("port")).collect();
        let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        assert!(
            ports.iter().all(|p| (20_000..32_000).contains(p)),
            "{ports:?}"
        );
    }
}
