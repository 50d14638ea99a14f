//! The whole system as its users run it: `cloudpillar run` and real agents as separate
//! processes on loopback ports, against the real API server named by `KUBECONFIG`.
//!
//! Every test gets its own namespace, ports and work directory. Processes are killed when the
//! [`System`] is dropped; [`System::shutdown`] also deletes the namespace while the operator
//! still runs, so that its finalizers are released.

mod agent;
pub mod objects;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use cloudpillar_crds::{Device, Rollout};

use crate::free_port;
use kube::Client;
use kube::api::Api;

pub use agent::AgentProcess;
pub use objects::{Artifact, PatchArchive};

/// Settings of one system under test.
#[derive(Debug, Clone, Default)]
pub struct SystemOptions {
    /// Most bytes per second the streamer sends one device (0: unlimited). Tests that act
    /// while a download runs slow it down with this.
    pub download_bytes_per_sec: u64,
}

/// Loopback ports of one `cloudpillar run`.
#[derive(Debug, Clone, Copy)]
struct Ports {
    mqtt: u16,
    http: u16,
    metrics: u16,
}

/// `cloudpillar run` with its agents, in one namespace.
pub struct System {
    /// Client of the test cluster.
    pub client: Client,
    /// The namespace of this system's objects.
    pub namespace: String,
    work: tempfile::TempDir,
    bin: PathBuf,
    ports: Ports,
    options: SystemOptions,
    server: Option<Child>,
    agents: BTreeMap<String, AgentProcess>,
}

/// `target/debug`, where `k3s-dev/test` builds both binaries before the tests run.
pub fn binaries() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("test executable path")?;
    let dir = exe
        .ancestors()
        .nth(2)
        .context("target profile directory")?
        .to_path_buf();
    for name in ["cloudpillar", "cloudpillar-agent"] {
        if !dir.join(name).exists() {
            bail!(
                "{name} is not built in {}: run the tests with `k3s-dev/test` (or `cargo build --workspace --bins` first)",
                dir.display()
            );
        }
    }
    Ok(dir)
}

impl System {
    /// Installs the CRDs, creates a namespace `prefix-…`, starts `cloudpillar run` and applies
    /// a `Hub` named `default` for its edge hub.
    pub async fn start(prefix: &str, options: SystemOptions) -> anyhow::Result<Self> {
        let client = crate::kube_client().await?;
        crate::install_crds(&client).await?;
        let namespace = crate::test_namespace(&client, prefix).await?;
        let ports = Ports {
            mqtt: free_port()?,
            http: free_port()?,
            metrics: free_port()?,
        };
        let mut system = Self {
            client,
            namespace,
            work: work_dir()?,
            bin: binaries()?,
            ports,
            options,
            server: None,
            agents: BTreeMap::new(),
        };
        system.start_server().await?;
        system.apply(objects::hub(ports.http)).await?;
        Ok(system)
    }

    /// The work directory: `server/` (hub data, blobs, keys) and `agents/<device>/`.
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    fn server_dir(&self) -> PathBuf {
        self.work().join("server")
    }

    /// The log of `cloudpillar run` so far (all of its runs).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.work().join("cloudpillar.log")).unwrap_or_default()
    }

    /// Starts `cloudpillar run` on this system's data directory and waits until it wrote its
    /// connection file.
    pub async fn start_server(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work().join("cloudpillar.log"))
            .context("opening cloudpillar.log")?;
        let connection = self.server_dir().join("connection.json");
        let _ = std::fs::remove_file(&connection);
        let mut command = Command::new(self.bin.join("cloudpillar"));
        command
            .arg("run")
            .arg("--data-dir")
            .arg(self.server_dir())
            .args(["--namespace", &self.namespace])
            .args(["--mqtt", &format!("127.0.0.1:{}", self.ports.mqtt)])
            .args(["--http", &format!("127.0.0.1:{}", self.ports.http)])
            .args(["--metrics", &format!("127.0.0.1:{}", self.ports.metrics)])
            .args(["--enrollment-group", "fleet"])
            .arg("--download-bytes-per-sec")
            .arg(self.options.download_bytes_per_sec.to_string())
            .env("RUST_LOG", log_filter())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = command.spawn().context("starting cloudpillar run")?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !connection.exists() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "cloudpillar run exited with {status}:\n{}",
                    self.server_log()
                );
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "cloudpillar run did not come up in 60 s:\n{}",
                    self.server_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.server = Some(child);
        Ok(())
    }

    /// Kills `cloudpillar run` with SIGKILL, as a crash or a node failure would.
    pub fn kill_server(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.server.take() {
            child.kill().context("killing cloudpillar run")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Applies an object (JSON) in this namespace with the tests' field manager.
    pub async fn apply(&self, object: serde_json::Value) -> anyhow::Result<()> {
        let (api_version, kind) = (
            object["apiVersion"].as_str().unwrap_or_default(),
            object["kind"].as_str().unwrap_or_default(),
        );
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let what = format!("{kind} {name} ({api_version})");
        match kind {
            "Hub" => crate::controllers::apply::<cloudpillar_crds::Hub>(
                &self.client,
                &self.namespace,
                object,
            )
            .await
            .map(drop),
            "Device" => crate::controllers::apply::<Device>(&self.client, &self.namespace, object)
                .await
                .map(drop),
            "Recipe" => crate::controllers::apply::<cloudpillar_crds::Recipe>(
                &self.client,
                &self.namespace,
                object,
            )
            .await
            .map(drop),
            "Rollout" => {
                crate::controllers::apply::<Rollout>(&self.client, &self.namespace, object)
                    .await
                    .map(drop)
            }
            _ => bail!("cannot apply {what}"),
        }
        .with_context(|| format!("applying {what}"))
    }

    /// Applies a `Device` for each name (DPS group provisioning, SAS), labelled
    /// `cloudpillar.io/fleet: test` plus `labels`, and starts its agent.
    pub async fn add_devices(
        &mut self,
        names: &[&str],
        labels: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        for name in names {
            self.apply(objects::device(name, labels)).await?;
        }
        for name in names {
            self.start_agent(name).await?;
        }
        Ok(())
    }

    /// Starts (or restarts) the agent of `device` on its own state directory and asks it to
    /// provision.
    pub async fn start_agent(&mut self, device: &str) -> anyhow::Result<()> {
        let port = match self.agents.get(device) {
            Some(agent) => agent.api_port,
            None => free_port()?,
        };
        let dir = self.work().join("agents").join(device);
        let agent = AgentProcess::start(
            &self.bin,
            &dir,
            device,
            port,
            &self.server_dir(),
            self.ports.mqtt,
        )
        .await?;
        self.agents.insert(device.to_owned(), agent);
        Ok(())
    }

    /// The agent of `device`.
    pub fn agent(&self, device: &str) -> anyhow::Result<&AgentProcess> {
        self.agents
            .get(device)
            .with_context(|| format!("no agent {device}"))
    }

    /// Kills the agent of `device` with SIGKILL.
    pub fn kill_agent(&mut self, device: &str) -> anyhow::Result<()> {
        self.agents
            .get_mut(device)
            .with_context(|| format!("no agent {device}"))?
            .kill()
    }

    /// Packs `archive`, publishes it into the blob store and signs it with the system's key
    /// (`cloudpillar artifact put`).
    pub fn publish(&self, archive: &PatchArchive) -> anyhow::Result<Artifact> {
        archive.publish(
            &self.bin,
            &self.work().join("build"),
            &self.server_dir().join("blobs"),
            &format!("{}/cloudpillar-signing", self.namespace),
        )
    }

    /// A service client of the edge hub, with the policy key `cloudpillar run` published.
    pub async fn twin_service(
        &self,
    ) -> anyhow::Result<std::sync::Arc<dyn cloudpillar_controllers::twin::TwinService>> {
        use cloudpillar_controllers::HubConnector;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let secret = secrets.get("cloudpillar-edge-hub").await?;
        let data = secret.data.unwrap_or_default();
        let field = |key: &str| -> anyhow::Result<Vec<u8>> {
            Ok(data
                .get(key)
                .with_context(|| format!("cloudpillar-edge-hub has no {key}"))?
                .0
                .clone())
        };
        let connection = cloudpillar_controllers::twin::HubConnection {
            service_host: format!("localhost:{}", self.ports.http),
            policy_name: "iothubowner".into(),
            policy_key: String::from_utf8(field("primaryKey")?)?,
            ca_bundle: Some(field("ca.crt")?),
            write_rate_limit: 50,
            retry: cloudpillar_controllers::twin::RetryPolicy::default(),
            event_stream: true,
            event_hub: None,
        };
        cloudpillar_controllers::AzureConnector
            .connect(connection)
            .map_err(|e| anyhow::anyhow!("hub client: {e}"))
    }

    /// A Device as the API server has it.
    pub async fn device(&self, name: &str) -> anyhow::Result<Device> {
        let api: Api<Device> = Api::namespaced(self.client.clone(), &self.namespace);
        Ok(api.get(name).await?)
    }

    /// A Rollout as the API server has it.
    pub async fn rollout(&self, name: &str) -> anyhow::Result<Rollout> {
        let api: Api<Rollout> = Api::namespaced(self.client.clone(), &self.namespace);
        Ok(api.get(name).await?)
    }

    /// Polls `check` until it gives `Some`, failing after `timeout` with the processes' logs.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        crate::controllers::eventually(what, timeout, check)
            .await
            .map_err(|error| {
                error.context(format!(
                    "--- cloudpillar run ---\n{}\n{}",
                    tail(&self.server_log(), 60),
                    self.agent_logs()
                ))
            })
    }

    /// The last lines of every agent's log.
    pub fn agent_logs(&self) -> String {
        self.agents
            .iter()
            .map(|(name, agent)| format!("--- agent {name} ---\n{}", tail(&agent.log(), 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `kubectl ARGS` in this namespace; its standard output.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("kubectl")
            .args(["-n", &self.namespace])
            .args(args)
            .output()
            .context("running kubectl")?;
        if !output.status.success() {
            bail!(
                "kubectl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Deletes the namespace while the operator runs (so it releases its finalizers), then
    /// stops every process.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let result = crate::delete_namespace_and_wait(
            &self.client,
            &self.namespace,
            Duration::from_secs(60),
        )
        .await;
        self.stop_all();
        result
    }

    fn stop_all(&mut self) {
        for agent in self.agents.values_mut() {
            let _ = agent.kill();
        }
        let _ = self.kill_server();
    }
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("namespace", &self.namespace)
            .field("work", &self.work.path())
            .field("agents", &self.agents.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A temporary directory for a test's files and logs; kept after the test when
/// `CP_TEST_KEEP` is set, so the logs of a failure can be read.
pub fn work_dir() -> anyhow::Result<tempfile::TempDir> {
    let mut dir = tempfile::tempdir().context("work directory")?;
    if std::env::var_os("CP_TEST_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("test files kept in {}", dir.path().display());
    }
    Ok(dir)
}

/// The log filter for the processes tests start: `CP_TEST_LOG` when set (for example
/// `info,cloudpillar_hub::mqtt=debug` while chasing a failure), else `info`.
pub fn log_filter() -> String {
    std::env::var("CP_TEST_LOG").unwrap_or_else(|_| "info".to_owned())
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
