//! One `cloudpillar-agent` process with its own state directory and local API port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// A running (or killed) agent.
#[derive(Debug)]
pub struct AgentProcess {
    /// Its device id.
    pub device: String,
    /// Port of its local API on 127.0.0.1.
    pub api_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl AgentProcess {
    /// Writes the agent's configuration (DPS group enrollment `fleet` of the hub whose data
    /// directory is `server_dir`), starts it and asks it to provision.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        device: &str,
        api_port: u16,
        server_dir: &Path,
        mqtt_port: u16,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let connection: Value = serde_json::from_str(
            &std::fs::read_to_string(server_dir.join("connection.json"))
                .context("reading connection.json")?,
        )?;
        let ca_file = connection["caFile"].as_str().context("caFile")?;
        let id_scope = connection["idScope"].as_str().context("idScope")?;
        let config = format!(
            r#"state_dir = "{state}"
require_signatures = true
trusted_keys = ["{key}"]

[hub]
host = "localhost"
port = {mqtt_port}
address = "127.0.0.1"
ca_file = "{ca_file}"

[dps]
host = "localhost"
port = {mqtt_port}
address = "127.0.0.1"
ca_file = "{ca_file}"
id_scope = "{id_scope}"
registration_id = "{device}"
key_file = "{group_key}"
group = true

[api]
bind = "127.0.0.1:{api_port}"
"#,
            state = dir.join("state").display(),
            key = server_dir.join("keys/recipe-signer.pub.pem").display(),
            group_key = server_dir.join("enrollments/fleet.key").display(),
        );
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config).context("writing agent.toml")?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .context("opening agent.log")?;
        let child = Command::new(bin.join("cloudpillar-agent"))
            .arg("--config")
            .arg(&config_path)
            .env("CP_AGENT_LOG", super::log_filter())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting cloudpillar-agent")?;
        let agent = Self {
            device: device.to_owned(),
            api_port,
            dir: dir.to_owned(),
            child: Some(child),
            http: reqwest::Client::new(),
        };
        agent.wait_for_api().await?;
        agent.call("POST", "InitiateProvisioning", None).await?;
        Ok(agent)
    }

    async fn wait_for_api(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.secret().is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", self.api_port))
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "agent {} API did not come up:\n{}",
                    self.device,
                    super::tail(&self.log(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn secret(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.dir.join("state/api-secret"))?
            .trim()
            .to_owned())
    }

    /// The agent's working directory, where recipes download and run.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join("state/work")
    }

    /// Its log so far (all of its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Calls `/api/v1/ROUTE` of the local API; the HTTP status and the JSON answer.
    pub async fn call(
        &self,
        method: &str,
        route: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("http://127.0.0.1:{}/api/v1/{route}", self.api_port);
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut request = self
            .http
            .request(method, url)
            .header("CP-DEVICE-ID", &self.device)
            .header("CP-SECRET-KEY", self.secret()?);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("calling {route} on {}", self.device))?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// Kills the process with SIGKILL (nothing is flushed or said goodbye).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing the agent")?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
