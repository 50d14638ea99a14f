//! The transfer service the engine uses: HTTPS downloads on its own, everything else over
//! the hub link when there is one.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::https::{HttpsDownloads, Route, route};
use super::{DownloadJob, ProgressSink, Transfers};
use crate::engine::outcome::{StepOutcome, codes};

/// Sends each download the way its step allows.
#[derive(Debug)]
pub struct Router {
    hub: Option<Arc<dyn Transfers>>,
    https: HttpsDownloads,
}

impl Router {
    /// A router over the hub transfers (when a hub is configured) and HTTPS.
    pub fn new(hub: Option<Arc<dyn Transfers>>, https: HttpsDownloads) -> Self {
        Self { hub, https }
    }
}

#[async_trait::async_trait]
impl Transfers for Router {
    async fn download(
        &self,
        job: DownloadJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> StepOutcome {
        match route(&job.source, &job.protocol) {
            Route::Https(url) => self.https.download(url, job, progress, cancel).await,
            Route::Refused(text) => StepOutcome::failed(codes::BAD_SOURCE, text),
            Route::Hub => match &self.hub {
                Some(hub) => hub.download(job, progress, cancel).await,
                None => StepOutcome::failed(codes::IO_ERROR, "no hub link to download over"),
            },
        }
    }

    async fn start_periodic_upload(
        &self,
        key: String,
        pattern: PathBuf,
        interval_secs: u64,
    ) -> StepOutcome {
        match &self.hub {
            Some(hub) => hub.start_periodic_upload(key, pattern, interval_secs).await,
            None => StepOutcome::failed(codes::IO_ERROR, "no hub link to upload over"),
        }
    }

    async fn stop_uploads_except(&self, keep_recipe: &str) {
        if let Some(hub) = &self.hub {
            hub.stop_uploads_except(keep_recipe).await;
        }
    }
}
