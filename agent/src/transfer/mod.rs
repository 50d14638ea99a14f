//! File transfers: chunked downloads as C2D messages and uploads as D2C over the hub,
//! downloads over HTTPS where the recipe allows them.

pub mod download;
mod finish;
pub mod https;
pub mod hub;
pub mod periodic;
pub mod progress;
mod router;
pub mod upload;
mod upload_record;

pub use router::Router;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use tokio_util::sync::CancellationToken;

use crate::engine::outcome::StepOutcome;
use crate::engine::report::LiveStep;

/// A download the engine asks for, with its destination already resolved and allowed.
#[derive(Debug, Clone)]
pub struct DownloadJob {
    /// Action path of the step, also the key of its persisted progress.
    pub step: String,
    /// `changeSpec.id`.
    pub recipe_id: String,
    /// Blob name the backend streams.
    pub source: String,
    /// Absolute destination.
    pub destination: PathBuf,
    /// Base64 file signature to verify before use.
    pub sign: Option<String>,
    /// Bytes re-requested at most when resuming.
    pub rewind: Option<u64>,
    /// Transports allowed (`https|iotmqtt|...`).
    pub protocol: String,
}

/// Where the progress record of transfer `key` lives below the state directory.
pub fn record_path(state_dir: &Path, key: &str) -> PathBuf {
    let digest = Sha256::digest(key.as_bytes());
    let name: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
    state_dir.join("transfers").join(format!("{name}.json"))
}

/// Receives progress of a running transfer.
pub type ProgressSink = std::sync::Arc<dyn Fn(LiveStep) + Send + Sync>;

/// Something that moves files between the device and the cloud.
#[async_trait::async_trait]
pub trait Transfers: Send + Sync + std::fmt::Debug {
    /// Runs a download to completion, failure or cancel.
    async fn download(
        &self,
        job: DownloadJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> StepOutcome;

    /// Starts (or replaces) a periodic upload of the files matching `pattern` (absolute,
    /// wildcards in the last component), every `interval_secs`.
    async fn start_periodic_upload(
        &self,
        key: String,
        pattern: PathBuf,
        interval_secs: u64,
    ) -> StepOutcome;

    /// Stops every periodic upload started for a recipe other than `keep_recipe`.
    async fn stop_uploads_except(&self, keep_recipe: &str);
}
