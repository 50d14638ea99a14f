//! Transfers over the hub link: routes C2D chunks to running downloads, sends range
//! requests and upload chunks as D2C messages.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudpillar_protocol::messages::{
    C2dMessage, D2cMessage, MESSAGE_TYPE_PROPERTY, StreamRangeRequest,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::download::{self, ChunkEvent, DownloadContext, RangeRequester};
use super::periodic::{self, UploadContext};
use super::{DownloadJob, ProgressSink, Transfers};
use crate::config::Config;
use crate::engine::outcome::StepOutcome;
use crate::link::{C2dHandler, Link, Outgoing};
use crate::zones::Zones;

/// The transfer service of an agent with a hub link.
#[derive(Debug)]
pub struct HubTransfers {
    config: Arc<Config>,
    zones: Arc<Zones>,
    link: Arc<Link>,
    trust: cloudpillar_protocol::signing::TrustStore,
    downloads: Mutex<HashMap<String, mpsc::Sender<ChunkEvent>>>,
    uploads: Mutex<HashMap<String, CancellationToken>>,
}

#[derive(Debug)]
struct LinkRequester(Arc<Link>);

#[async_trait::async_trait]
impl RangeRequester for LinkRequester {
    async fn request(&self, file_id: &str, from: u64) {
        let message = D2cMessage::StreamRangeRequest(StreamRangeRequest {
            file_id: file_id.to_owned(),
            from,
            to: None,
        });
        send(&self.0, &message, false).await;
    }
}

/// Queues a D2C message on the link.
pub(super) async fn send(link: &Link, message: &D2cMessage, droppable: bool) {
    if let Err(error) = try_send(link, message, droppable).await {
        tracing::warn!(%error, "device-to-cloud message dropped");
    }
}

/// Queues a D2C message on the link; says why when it could not be queued.
pub async fn try_send(link: &Link, message: &D2cMessage, droppable: bool) -> Result<(), String> {
    let payload = message.encode().map_err(|error| error.to_string())?;
    let properties = vec![(
        MESSAGE_TYPE_PROPERTY.to_owned(),
        message.message_type().to_owned(),
    )];
    link.send(Outgoing {
        properties,
        payload,
        droppable,
    })
    .await
}

impl HubTransfers {
    /// Starts the service and registers it as the link's C2D handler.
    pub fn start(
        config: Arc<Config>,
        zones: Arc<Zones>,
        link: Arc<Link>,
    ) -> anyhow::Result<Arc<Self>> {
        let trust = crate::engine::verify::load_trust(&config.trusted_keys)?;
        let service = Arc::new(Self {
            config,
            zones,
            link: Arc::clone(&link),
            trust,
            downloads: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
        });
        link.set_c2d_handler(Arc::clone(&service) as Arc<dyn C2dHandler>);
        link.diagnostics
            .set_transfers(Arc::clone(&service) as Arc<dyn Transfers>);
        Ok(service)
    }

    fn record_path(&self, key: &str) -> PathBuf {
        super::record_path(&self.config.state_dir, key)
    }

    async fn route(&self, file_id: &str, event: impl FnOnce(oneshot::Sender<()>) -> ChunkEvent) {
        let sender = self
            .downloads
            .lock()
            .ok()
            .and_then(|d| d.get(file_id).cloned());
        let Some(sender) = sender else {
            tracing::debug!(file_id, "chunk for no running download dropped");
            return;
        };
        let (done_tx, done_rx) = oneshot::channel();
        if sender.send(event(done_tx)).await.is_ok() {
            // The publish is acknowledged only once the chunk is on disk.
            let _ = done_rx.await;
        }
    }
}

#[async_trait::async_trait]
impl C2dHandler for HubTransfers {
    async fn handle(&self, _properties: &BTreeMap<String, String>, payload: &[u8]) {
        match C2dMessage::decode(payload) {
            Ok(C2dMessage::DownloadFileChunk(chunk)) => {
                let id = chunk.file_id.clone();
                self.route(&id, |done| ChunkEvent::Chunk(chunk, done)).await;
            }
            Ok(C2dMessage::VerifyRangeCrc(range)) => {
                let id = range.file_id.clone();
                self.route(&id, |done| ChunkEvent::Verify(range, done))
                    .await;
            }
            Ok(C2dMessage::UpgradeProvisioning(upgrade)) => {
                crate::link::upgrade::handle(&self.link, upgrade).await;
            }
            Ok(C2dMessage::FileSigned(signed)) => {
                let id = signed.file_id.clone();
                self.link.diagnostics.deliver(&id, Ok(signed));
            }
            Ok(C2dMessage::SignFileFailed(failed)) => {
                self.link
                    .diagnostics
                    .deliver(&failed.file_id, Err(failed.reason.clone()));
            }
            Err(error) => tracing::warn!(%error, "C2D message refused"),
        }
    }
}

#[async_trait::async_trait]
impl Transfers for HubTransfers {
    async fn download(
        &self,
        job: DownloadJob,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> StepOutcome {
        let (tx, rx) = mpsc::channel(64);
        if let Ok(mut downloads) = self.downloads.lock() {
            downloads.insert(job.source.clone(), tx);
        }
        let ctx = DownloadContext {
            record: self.record_path(&format!("{}|{}", job.recipe_id, job.step)),
            trust: self.trust.clone(),
            max_attempts: self.config.transfer.max_attempts.max(1),
            stall: Duration::from_secs(self.config.transfer.stall_secs.max(1)),
            device: Arc::clone(&self.link.device),
            requester: Arc::new(LinkRequester(Arc::clone(&self.link))),
        };
        let source = job.source.clone();
        let outcome = download::run(ctx, job, rx, progress, cancel).await;
        if let Ok(mut downloads) = self.downloads.lock() {
            downloads.remove(&source);
        }
        outcome
    }

    async fn start_periodic_upload(
        &self,
        key: String,
        pattern: PathBuf,
        interval_secs: u64,
    ) -> StepOutcome {
        let token = CancellationToken::new();
        if let Ok(mut uploads) = self.uploads.lock()
            && let Some(old) = uploads.insert(key.clone(), token.clone())
        {
            old.cancel();
        }
        let ctx = UploadContext {
            config: Arc::clone(&self.config),
            zones: Arc::clone(&self.zones),
            link: Arc::clone(&self.link),
            record: self.record_path(&format!("upload|{key}")),
            scope: key.clone(),
        };
        tokio::spawn(periodic::run_periodic(ctx, pattern, interval_secs, token));
        let (h, m, s) = (
            interval_secs / 3600,
            interval_secs / 60 % 60,
            interval_secs % 60,
        );
        StepOutcome::succeeded("Done", format!("Will keep uploading {h:02}:{m:02}:{s:02}"))
    }

    async fn stop_uploads_except(&self, keep_recipe: &str) {
        if let Ok(mut uploads) = self.uploads.lock() {
            uploads.retain(|key, token| {
                let keep = key.starts_with(&format!("{keep_recipe}|"));
                if !keep {
                    token.cancel();
                }
                keep
            });
        }
    }
}
