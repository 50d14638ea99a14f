//! How the operator and the streamer reach the key holder role's HTTP API.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::keyholder_signer::KeyholderSigner;

/// `--keyholder-url` and its token, as the operator and the streamer take them.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyholderClientArgs {
    /// Base URL of the key holder's API (`http://keyholder:8090`): signatures are made there
    /// and the key never enters this process.
    #[arg(long, env = "CP_KEYHOLDER_URL")]
    pub keyholder_url: Option<String>,
    /// File holding the bearer token the key holder's signing routes require; re-read for
    /// every request.
    #[arg(long, env = "CP_KEYHOLDER_TOKEN_FILE", requires = "keyholder_url")]
    pub keyholder_token_file: Option<PathBuf>,
}

impl KeyholderClientArgs {
    /// The key holder client, when `--keyholder-url` is given.
    pub fn signer(&self) -> anyhow::Result<Option<Arc<KeyholderSigner>>> {
        let Some(url) = &self.keyholder_url else {
            return Ok(None);
        };
        let parsed = reqwest::Url::parse(url)
            .with_context(|| format!("--keyholder-url {url:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "--keyholder-url {url:?} must be an http or https URL"
        );
        if self.keyholder_token_file.is_none() && !names_loopback(&parsed) {
            tracing::warn!(url = %url,
                "no --keyholder-token-file: the key holder serves unauthenticated signing on \
                 loopback only, so it will refuse these requests");
        }
        let signer = KeyholderSigner::new(url, self.keyholder_token_file.clone())
            .context("building the key holder client")?;
        tracing::info!(url = %url, "signing through the key holder");
        Ok(Some(Arc::new(signer)))
    }
}

/// Whether `url` names this machine (`localhost` or a loopback address).
fn names_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        let loopback = |url: &str| names_loopback(&reqwest::Url::parse(url).expect("url"));
        assert!(loopback("http://127.0.0.1:8090"));
        assert!(loopback("http://[::1]:8090"));
        assert!(loopback("http://LOCALHOST:8090"));
        assert!(!loopback("http://keyholder:8090"));
        assert!(!loopback("https://10.0.0.5"));
    }
}
