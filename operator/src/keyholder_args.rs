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
        let signer = KeyholderSigner::new(url, self.keyholder_token_file.clone())
            .context("building the key holder client")?;
        tracing::info!(url = %url, "signing through the key holder");
        Ok(Some(Arc::new(signer)))
    }
}
