//! `cloudpillar hub`: runs the edge hub standalone.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cloudpillar_hub::standalone::{self, HubArgs};
use cloudpillar_hub::{Hub, HubHandle};
use tokio_util::sync::CancellationToken;

use crate::health::{self, RoleHealth};

/// Options of `cloudpillar hub`.
#[derive(Debug, clap::Args)]
pub struct HubCmdArgs {
    #[command(flatten)]
    pub hub: HubArgs,
    /// File holding the service policy key (base64), for example a mounted Secret. Unset, the
    /// hub generates a key once and keeps it in `<data-dir>/policy.key`.
    #[arg(long, env = "CP_HUB_POLICY_KEY_FILE")]
    pub policy_key_file: Option<PathBuf>,
    /// Address of `/metrics`, `/healthz` and `/readyz`; nothing is served when unset.
    #[arg(long, env = "CP_METRICS_ADDR")]
    pub metrics: Option<SocketAddr>,
}

/// Starts the hub, prints where it listens and where its CA and policy key are, and runs
/// until Ctrl-C or SIGTERM.
pub fn run(args: &HubCmdArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut config = args.hub.config();
        if let Some(path) = &args.policy_key_file {
            config.policy_key = Some(read_policy_key(path)?);
        }
        let hub = Hub::start(config).await.context("starting the edge hub")?;
        let shutdown = CancellationToken::new();
        let mut role = RoleHealth::new();
        health::hub::watch(&hub, &mut role, shutdown.clone());
        health::serve_if_configured(role, args.metrics, shutdown.clone()).await?;
        {
            let mut stdout = std::io::stdout().lock();
            write!(stdout, "{}", summary(&hub, args.policy_key_file.as_deref()))?;
            stdout.flush()?;
        }
        standalone::wait_for_shutdown().await?;
        shutdown.cancel();
        hub.shutdown().await;
        Ok(())
    })
}

/// The policy key in `path`: base64 text, surrounding whitespace ignored.
fn read_policy_key(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the policy key file {}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        bail!("the policy key file {} is empty", path.display());
    }
    // Any signature computation decodes the key: refuse a key no SAS token could be made with.
    cloudpillar_hub::sas::signature(key, "check", 0).map_err(|error| {
        anyhow::anyhow!(error).context(format!(
            "the policy key in {} is not usable as a shared access key",
            path.display()
        ))
    })?;
    Ok(key.to_owned())
}

/// Where the hub listens and where its secrets are. The policy key line names the file the
/// key came from.
fn summary(hub: &HubHandle, key_file: Option<&Path>) -> String {
    let text = standalone::summary(hub);
    let Some(path) = key_file else {
        return text;
    };
    let generated = hub.policy_key_file().display().to_string();
    let line = format!(
        "  service policy {:?} key file: {generated}\n",
        hub.policy_name()
    );
    let given = format!(
        "  service policy {:?} key file: {} (given)\n",
        hub.policy_name(),
        path.display()
    );
    text.replacen(&line, &given, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_policy_key_file_is_refused_with_its_path() {
        let error = read_policy_key(Path::new("/nonexistent/policy.key")).expect_err("refused");
        assert!(
            format!("{error:#}").contains("reading the policy key file /nonexistent/policy.key"),
            "{error:#}"
        );
    }

    #[test]
    fn an_empty_or_non_base64_policy_key_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "  \n").expect("write");
        let error = read_policy_key(&empty).expect_err("refused");
        assert!(format!("{error:#}").contains("is empty"), "{error:#}");

        let garbage = dir.path().join("garbage.key");
        std::fs::write(&garbage, "not base64 !!!\n").expect("write");
        let error = read_policy_key(&garbage).expect_err("refused");
        assert!(format!("{error:#}").contains("not usable"), "{error:#}");
    }

    #[tokio::test]
    async fn the_hub_accepts_tokens_signed_with_the_key_from_the_file_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("primaryKey");
        let key = cloudpillar_hub::sas::random_key();
        std::fs::write(&key_file, format!("{key}\n")).expect("write");

        let mut config = cloudpillar_hub::HubConfig::new(dir.path().join("data"));
        config.insecure_loopback = true;
        config.policy_key = Some(read_policy_key(&key_file).expect("key"));
        let hub = Hub::start(config).await.expect("hub starts");
        let text = summary(&hub, Some(&key_file));
        assert!(
            text.contains(&format!("key file: {} (given)", key_file.display())),
            "{text}"
        );

        let url = format!("http://{}/events?from=1&limit=1", hub.http_addr());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let expiry = now.expect("clock after 1970").as_secs() + 600;
        let status = |signing_key: String| {
            let url = url.clone();
            let token = cloudpillar_hub::sas::generate(
                &signing_key,
                hub.hostname(),
                expiry,
                Some(hub.policy_name()),
            )
            .expect("token");
            async move {
                cloudpillar_backend::install_tls_provider();
                let response = reqwest::Client::new()
                    .get(url)
                    .header("authorization", token)
                    .send()
                    .await
                    .expect("request");
                response.status().as_u16()
            }
        };
        assert_eq!(
            status(key.clone()).await,
            200,
            "the file's key is the policy key"
        );
        let other = cloudpillar_hub::sas::random_key();
        assert_eq!(status(other).await, 401, "another key is refused");
        hub.shutdown().await;
    }
}
