//! The chart's roles as local processes, started with exactly the arguments the chart renders.
//!
//! A pod gets ports, mounted Secrets, volumes and Service names from the cluster; [`Site`]
//! stands in for each of them with a local equivalent (loopback ports, files in a temporary
//! directory, `localhost`). Every other argument is passed as rendered, and an argument that
//! still names an in-cluster path or host fails the test, so a flag the binary does not know,
//! or a new mount the test does not stand in for, cannot slip through.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use super::tools::{kubectl, render};

/// One rendered container: its arguments, named ports and HTTP probes.
#[derive(Debug)]
pub struct Container {
    pub name: String,
    pub args: Vec<String>,
    pub ports: BTreeMap<String, u16>,
    /// `(probe kind, path, port name)` of every HTTP probe.
    pub probes: Vec<(String, String, String)>,
}

impl Container {
    /// The port the rendered `--metrics=ADDR` argument listens on.
    fn metrics_port(&self) -> anyhow::Result<u16> {
        let addr = self
            .args
            .iter()
            .find_map(|a| a.strip_prefix("--metrics="))
            .with_context(|| format!("{}: no --metrics argument", self.name))?;
        let port = addr.rsplit(':').next().unwrap_or_default();
        Ok(port.parse()?)
    }

    /// Every probe is an HTTP GET on the named port the `--metrics` address listens on.
    pub fn check_probes_hit_the_metrics_port(&self) -> anyhow::Result<()> {
        let metrics = self.metrics_port()?;
        ensure!(!self.probes.is_empty(), "{}: no probes", self.name);
        for (kind, path, port) in &self.probes {
            let number = self.ports.get(port).copied();
            ensure!(
                number == Some(metrics),
                "{}: {kind} probe {path} on port {port:?} ({number:?}), metrics on {metrics}",
                self.name
            );
        }
        Ok(())
    }
}

/// The objects `template` renders into `namespace`, as JSON.
pub async fn rendered_objects(
    namespace: &str,
    values: &[&str],
    template: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["--show-only", template];
    args.extend_from_slice(values);
    let rendered = render(namespace, &args).await?;
    let ran = kubectl(
        &["create", "--dry-run=client", "-o", "json", "-f", "-"],
        &rendered,
    )
    .await?;
    ensure!(ran.success, "converting {template}:\n{}", ran.stderr);
    // One JSON document per object, one after the other.
    Ok(serde_json::Deserializer::from_str(&ran.stdout)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()?)
}

/// The container named `name` in the workloads `template` renders into `namespace`.
pub async fn container(
    namespace: &str,
    values: &[&str],
    template: &str,
    name: &str,
) -> anyhow::Result<Container> {
    let objects = rendered_objects(namespace, values, template).await?;
    let found = objects
        .iter()
        .filter_map(|o| o.pointer("/spec/template/spec/containers")?.as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .with_context(|| format!("{template} renders no container {name}"))?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut ports = BTreeMap::new();
    for port in found["ports"].as_array().into_iter().flatten() {
        let number = port["containerPort"].as_u64().context("containerPort")?;
        ports.insert(text(&port["name"]), u16::try_from(number)?);
    }
    let mut probes = Vec::new();
    for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
        if let Some(get) = found.pointer(&format!("/{kind}/httpGet")) {
            probes.push((kind.to_owned(), text(&get["path"]), text(&get["port"])));
        }
    }
    let args = found["args"].as_array().context("args")?;
    Ok(Container {
        name: name.to_owned(),
        args: args.iter().map(text).collect(),
        ports,
        probes,
    })
}

pub use cloudpillar_tests::free_port;

/// Local stand-ins for the cluster: ports, the mounted Secrets' files, the volumes.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub hub_https: u16,
    pub hub_mqtt: u16,
    pub hub_amqp: u16,
    pub keyholder_http: u16,
    /// The hub's policy key (the `cloudpillar-hub-policy` Secret).
    pub policy_key: String,
    /// The key holder's API token (the `cloudpillar-keyholder-token` Secret).
    pub api_token: String,
}

impl Site {
    pub fn new() -> anyhow::Result<Self> {
        let dir = cloudpillar_tests::system::work_dir()?;
        let policy_key = cloudpillar_hub::sas::random_key();
        let api_token = format!("token-{}", free_port()?);
        std::fs::create_dir_all(dir.path().join("secrets"))?;
        std::fs::create_dir_all(dir.path().join("tls"))?;
        std::fs::write(dir.path().join("secrets/primaryKey"), &policy_key)?;
        std::fs::write(dir.path().join("secrets/token"), &api_token)?;
        // What cert-manager would put into the TLS Secret: a CA and a serving certificate.
        cloudpillar_hub::tls::server_material(&dir.path().join("tls"), None, "localhost")
            .context("generating TLS material")?;
        Ok(Self {
            dir,
            hub_https: free_port()?,
            hub_mqtt: free_port()?,
            hub_amqp: free_port()?,
            keyholder_http: free_port()?,
            policy_key,
            api_token,
        })
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The PEM of the CA that signed the hub's certificate (`ca.crt` of the TLS Secret).
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        let path = self.path("tls").join(cloudpillar_hub::tls::DEV_CA_FILE);
        Ok(std::fs::read_to_string(path)?)
    }

    /// The local value of one rendered `--flag=value` argument.
    fn localize(&self, arg: &str, metrics: u16) -> anyhow::Result<String> {
        let (flag, value) = arg.split_once('=').unwrap_or((arg, ""));
        let local = |relative: &str| self.path(relative).display().to_string();
        let ca = local(&format!("tls/{}", cloudpillar_hub::tls::DEV_CA_FILE));
        let replaced = match flag {
            "--metrics" => format!("127.0.0.1:{metrics}"),
            "--data-dir" => local("hub"),
            "--mqtt" => format!("127.0.0.1:{}", self.hub_mqtt),
            "--http" => format!("127.0.0.1:{}", self.hub_https),
            "--amqp" => format!("127.0.0.1:{}", self.hub_amqp),
            "--tls-cert" => local("tls/dev-server.pem"),
            "--tls-key" => local("tls/dev-server.key"),
            "--policy-key-file" | "--hub-policy-key-file" => local("secrets/primaryKey"),
            "--hub-ca-file" => ca,
            "--hub-url" => format!("https://localhost:{}", self.hub_https),
            "--blob-dir" => local("blobs"),
            "--listen" => format!("127.0.0.1:{}", self.keyholder_http),
            "--sign-token-file" | "--keyholder-token-file" => local("secrets/token"),
            "--keyholder-url" => format!("http://127.0.0.1:{}", self.keyholder_http),
            // Kubernetes expands $(POD_NAME) from the container's environment.
            "--identity" if value == "$(POD_NAME)" => "operator-0".to_owned(),
            _ => {
                let in_cluster = ["/etc/", "/var/", ".svc", "0.0.0.0", "$("];
                if in_cluster.iter().any(|marker| value.contains(marker)) {
                    bail!("no local stand-in for the rendered argument {arg}");
                }
                return Ok(arg.to_owned());
            }
        };
        Ok(format!("{flag}={replaced}"))
    }
}

/// A role running as a child process, its log in the site directory.
pub struct Role {
    pub name: String,
    pub metrics: u16,
    child: tokio::process::Child,
    log: PathBuf,
    probes: Vec<(String, String, String)>,
}

impl Role {
    /// Starts `binary` with the container's arguments made local. The environment holds only
    /// what the pod's would: `env`, `RUST_LOG`, and `KUBECONFIG` when the role has API access.
    pub async fn start(
        site: &Site,
        binary: &Path,
        container: &Container,
        env: &[(&str, String)],
        kubeconfig: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let metrics = free_port()?;
        let args = container
            .args
            .iter()
            .map(|arg| site.localize(arg, metrics))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let log = site.path(&format!("{}.log", container.name));
        let file = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(binary);
        command
            .args(&args)
            .env_clear()
            .env("RUST_LOG", cloudpillar_tests::system::log_filter())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        if let Some(path) = kubeconfig {
            command.env("KUBECONFIG", path);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            name: container.name.clone(),
            metrics,
            child,
            log,
            probes: container.probes.clone(),
        })
    }

    /// `GET path` on the role's metrics port: status and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics);
        let response = reqwest::get(&url).await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// The last lines of the role's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits until every probe the chart gives the role answers 200; fails at once when the
    /// process exits.
    pub async fn wait_until_probes_pass(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
            let mut failing = None;
            for (kind, path, _) in &self.probes {
                match self.get(path).await {
                    Ok((200, _)) => {}
                    other => failing = Some(format!("{kind} {path}: {other:?}")),
                }
            }
            let Some(failing) = failing else {
                return Ok(());
            };
            if tokio::time::Instant::now() > deadline {
                bail!("{}: {failing}\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the process.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A kubeconfig like `KUBECONFIG`'s whose every user impersonates ServiceAccount `account`
/// of `namespace` (with the groups a ServiceAccount token carries).
pub fn impersonating_kubeconfig(
    dir: &Path,
    namespace: &str,
    account: &str,
) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("KUBECONFIG").context("KUBECONFIG is not set")?;
    let mut config = kube::config::Kubeconfig::read_from(PathBuf::from(path))?;
    for user in &mut config.auth_infos {
        let info = user.auth_info.get_or_insert_with(Default::default);
        info.impersonate = Some(format!("system:serviceaccount:{namespace}:{account}"));
        info.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
            "system:authenticated".into(),
        ]);
    }
    let file = dir.join(format!("{account}.kubeconfig"));
    // JSON is YAML: every kubeconfig reader takes it.
    std::fs::write(&file, serde_json::to_vec_pretty(&config)?)?;
    Ok(file)
}

/// `target/debug` (or the profile directory the test runs from), where the `cloudpillar`
/// binary must have been built (`k3s-dev/test` builds it before the tests).
pub fn cloudpillar_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.ancestors().nth(2).context("target profile directory")?;
    let binary = dir.join("cloudpillar");
    ensure!(
        binary.exists(),
        "{} is not built: run the tests with `k3s-dev/test` (or `cargo build -p cloudpillar`)",
        binary.display()
    );
    Ok(binary)
}
