//! Signing a device's own upload on its request (D2C `SignFile`), as RunDiagnostics asks.
//!
//! 1. `d` → D2C `SignFile {fileId: "uploads/d/{path}"}`: only a name inside the requesting
//!    device's own upload area is accepted; anything else (another device's uploads, patch files)
//!    is refused.
//! 2. When the upload `d/{path}` is not committed yet, the request waits for its commit, up to
//!    [`super::StreamerOptions::sign_upload_wait`]: a hub may store a device's messages out of publish order (the edge hub
//!    handles QoS 1 publishes concurrently), so the request can overtake the upload's last chunk.
//! 3. The key holder streams the stored blob through SHA-512 and signs it (`SignBlob`), within
//!    [`SIGN_TIMEOUT`].
//! 4. Exactly one C2D answer with the same `fileId`: `FileSigned {sign, size}` or
//!    `SignFileFailed {reason}`.
//!
//! The answer is sent at least once: a replica restarted before its checkpoint passed the request
//! signs again, and the device, waiting for one answer per file id, ignores the second. A request
//! still waiting for its upload is not in the checkpoint: a restart in that window loses it and
//! the device reports that no answer came (it asks again with its next run).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cloudpillar_protocol::causes::{ErrorChain, with_causes};
use cloudpillar_protocol::messages::{
    C2dMessage, FileSigned, MESSAGE_TYPE_PROPERTY, SignFileFailed, SignFileRequest,
};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Streamer, UPLOADS_PREFIX};
use crate::blob::{BlobError, Container};
use crate::hub_link::{C2dSend, Event, HubLinkError};
use crate::keys::{KeyError, KeyHolder, Signed};

/// Longest wait for the key holder to sign one upload.
pub const SIGN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time spent queueing one answer (a full device queue is waited out until then).
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// Signs blobs of the uploads container for the streamer.
#[async_trait]
pub trait UploadSigner: Send + Sync + std::fmt::Debug {
    /// Signs the blob at `path` (`{device}/...`) in the uploads container.
    async fn sign_upload(&self, path: &str) -> Result<Signed, KeyError>;
}

/// A key holder in this process signing the streamer's uploads container.
#[derive(Debug, Clone)]
pub struct InProcessSigner {
    holder: KeyHolder,
    uploads: Container,
}

impl InProcessSigner {
    /// Signs blobs of `uploads` with `holder`.
    pub fn new(holder: KeyHolder, uploads: Container) -> Self {
        Self { holder, uploads }
    }
}

#[async_trait]
impl UploadSigner for InProcessSigner {
    async fn sign_upload(&self, path: &str) -> Result<Signed, KeyError> {
        self.holder.sign_blob(&self.uploads, path).await
    }
}

/// Why an upload was not signed; the text (with its causes) becomes the answer's `reason`.
#[derive(Debug, thiserror::Error)]
pub(super) enum SignRefusal {
    /// The file id is not inside the requesting device's upload area.
    #[error("{file_id} is not one of device {device}'s uploads")]
    NotOwnUpload {
        /// Requesting device.
        device: String,
        /// File id asked for.
        file_id: String,
    },
    /// The file id names no blob (empty, `.` or `..` segments, control characters).
    #[error(
        "{file_id:?} is not a blob name: a segment is empty, \".\" or \"..\", or holds a \
         control character"
    )]
    InvalidName {
        /// File id asked for.
        file_id: String,
    },
    /// This replica was started without a key holder.
    #[error("this streamer has no key holder configured")]
    NoSigner,
    /// The upload was not committed in time.
    #[error("upload {path} was not complete within {after:?}")]
    NotUploaded {
        /// Path in the uploads container.
        path: String,
        /// The limit.
        after: Duration,
    },
    /// The key holder did not finish in time.
    #[error("signing {path} took longer than {after:?}")]
    TimedOut {
        /// Path in the uploads container.
        path: String,
        /// The limit.
        after: Duration,
    },
    /// The key holder refused or failed (e.g. the upload is not committed).
    #[error("signing {path} failed")]
    Sign {
        /// Path in the uploads container.
        path: String,
        /// Key holder error.
        #[source]
        source: KeyError,
    },
}

impl SignRefusal {
    /// The reason told to the device: what it asked for and why it failed, never the key
    /// holder's or the blob store's internals (their addresses, their errors), which only the
    /// streamer's log shows.
    fn device_reason(&self) -> String {
        match self {
            Self::Sign {
                source: KeyError::ReadBlob { source },
                ..
            } if matches!(
                **source,
                BlobError::NotFound { .. } | BlobError::InvalidPath { .. }
            ) =>
            {
                format!("{self}: {source}")
            }
            Self::Sign { .. } => format!("{self}: the key holder could not sign it"),
            _ => self.to_string(),
        }
    }
}

/// A request waiting for its upload's commit.
#[derive(Debug)]
struct Waiting {
    file_id: String,
    seq: u64,
}

/// Waiting requests by device and uploads-container path.
type ByUpload = HashMap<(String, String), Vec<Waiting>>;

/// Requests waiting for their upload's commit.
#[derive(Debug, Clone, Default)]
pub(super) struct AwaitingUpload(Arc<Mutex<ByUpload>>);

impl AwaitingUpload {
    fn add(&self, device: &str, path: &str, waiting: Waiting) {
        let key = (device.to_owned(), path.to_owned());
        self.lock().entry(key).or_default().push(waiting);
    }

    /// Takes every request waiting for `path` of `device`.
    fn take(&self, device: &str, path: &str) -> Vec<Waiting> {
        let key = (device.to_owned(), path.to_owned());
        self.lock().remove(&key).unwrap_or_default()
    }

    /// Takes the request of event `seq`, if it still waits.
    fn take_one(&self, device: &str, path: &str, seq: u64) -> Option<Waiting> {
        let key = (device.to_owned(), path.to_owned());
        let mut all = self.lock();
        let list = all.get_mut(&key)?;
        let index = list.iter().position(|w| w.seq == seq)?;
        let waiting = list.remove(index);
        if list.is_empty() {
            all.remove(&key);
        }
        Some(waiting)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByUpload> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The uploads-container path `file_id` names when it is inside `device`'s own upload area
/// (`uploads/{device}/{something}`).
pub(super) fn own_upload<'a>(device: &str, file_id: &'a str) -> Option<&'a str> {
    let path = file_id.strip_prefix(UPLOADS_PREFIX)?;
    let rest = path.strip_prefix(device)?.strip_prefix('/')?;
    (!device.is_empty() && !rest.is_empty()).then_some(path)
}

impl Streamer {
    /// Handles a `SignFile` request: refuses it, signs the committed upload, or waits for the
    /// upload's commit (a task in `tasks` gives up after `sign_upload_wait`).
    pub(super) async fn sign_upload(
        &self,
        event: &Event,
        request: SignFileRequest,
        tasks: &mut JoinSet<()>,
    ) {
        let device = event.device_id.as_str();
        let seq = event.sequence_number;
        let path = match own_upload(device, &request.file_id) {
            Some(path) if crate::blob::check_path(path).is_ok() => path.to_owned(),
            own => {
                let file_id = request.file_id.clone();
                let refusal = match own {
                    Some(_) => SignRefusal::InvalidName { file_id },
                    None => SignRefusal::NotOwnUpload {
                        device: device.to_owned(),
                        file_id,
                    },
                };
                return self
                    .answer(device, seq, request.file_id, Err(refusal))
                    .await;
            }
        };
        if self.signer.is_some() && self.blobs.uploads.exists(&path).await.ok() == Some(false) {
            tracing::debug!(device, path, seq, "sign request waits for its upload");
            let waiting = Waiting {
                file_id: request.file_id,
                seq,
            };
            self.awaiting.add(device, &path, waiting);
            let (streamer, device) = (self.clone(), device.to_owned());
            tasks.spawn(async move { streamer.give_up_waiting(&device, &path, seq).await });
            return;
        }
        let signed = self.sign(&path).await;
        self.answer(device, seq, request.file_id, signed).await;
    }

    /// Signs and answers the requests that waited for the upload committed at `path`.
    pub(super) async fn upload_committed(&self, device: &str, path: &str) {
        for waiting in self.awaiting.take(device, path) {
            let signed = self.sign(path).await;
            self.answer(device, waiting.seq, waiting.file_id, signed)
                .await;
        }
    }

    async fn give_up_waiting(&self, device: &str, path: &str, seq: u64) {
        let wait = self.options.sign_upload_wait;
        tokio::time::sleep(wait).await;
        if let Some(waiting) = self.awaiting.take_one(device, path, seq) {
            let refusal = SignRefusal::NotUploaded {
                path: path.to_owned(),
                after: wait,
            };
            self.answer(device, seq, waiting.file_id, Err(refusal))
                .await;
        }
    }

    async fn sign(&self, path: &str) -> Result<Signed, SignRefusal> {
        let signer: &Arc<dyn UploadSigner> = self.signer.as_ref().ok_or(SignRefusal::NoSigner)?;
        match tokio::time::timeout(SIGN_TIMEOUT, signer.sign_upload(path)).await {
            Ok(Ok(signed)) => Ok(signed),
            Ok(Err(source)) => Err(SignRefusal::Sign {
                path: path.to_owned(),
                source,
            }),
            Err(_) => Err(SignRefusal::TimedOut {
                path: path.to_owned(),
                after: SIGN_TIMEOUT,
            }),
        }
    }

    /// Answers `FileSigned` or `SignFileFailed`.
    async fn answer(
        &self,
        device: &str,
        seq: u64,
        file_id: String,
        signed: Result<Signed, SignRefusal>,
    ) {
        let message = match signed {
            Ok(signed) => {
                tracing::info!(
                    device, file = %file_id, key = %signed.key_id, size = signed.size,
                    "upload signed for its device"
                );
                C2dMessage::FileSigned(FileSigned {
                    file_id,
                    sign: signed.text,
                    size: signed.size,
                })
            }
            Err(refusal) => {
                let error = with_causes(&refusal);
                tracing::warn!(device, file = %file_id, %error, "upload not signed");
                C2dMessage::SignFileFailed(SignFileFailed::new(file_id, &refusal.device_reason()))
            }
        };
        self.send_answer(device, seq, &message).await;
    }

    /// Queues the answer, waiting out a full device queue and transient failures until
    /// [`ANSWER_DEADLINE`]; the device times out on its own when the answer never comes.
    async fn send_answer(&self, device: &str, seq: u64, message: &C2dMessage) {
        let body = match message.encode() {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(error = %ErrorChain(&error), device, seq, "sign answer refused by the protocol");
                return;
            }
        };
        let send = C2dSend {
            body,
            properties: [(
                MESSAGE_TYPE_PROPERTY.to_owned(),
                message.message_type().to_owned(),
            )]
            .into(),
            message_id: format!("cp-{seq}-sign"),
        };
        let deadline = Instant::now() + ANSWER_DEADLINE;
        let mut delay = self.options.retry_first;
        loop {
            match self.hub.send_c2d(device, send.clone()).await {
                Ok(()) => return,
                Err(HubLinkError::DeviceNotFound { .. }) => {
                    tracing::warn!(device, seq, "sign answer dropped: device no longer exists");
                    return;
                }
                Err(error) if Instant::now() >= deadline => {
                    tracing::warn!(error = %ErrorChain(&error), device, seq, "sign answer dropped after retries");
                    return;
                }
                Err(error) => {
                    tracing::debug!(error = %ErrorChain(&error), ?delay, device, seq, "sign answer not queued yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.options.retry_ceiling);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_hears_why_signing_failed_but_not_where_the_key_holder_lives() {
        let remote = KeyError::Sign {
            key: "the key holder".into(),
            reason: "upload dev-1/d/a.bin".into(),
            source: Some(Box::new(std::io::Error::other(
                "error sending request for url (http://keyholder.cp.svc:8090/v1/sign/blob)",
            ))),
        };
        let refusal = SignRefusal::Sign {
            path: "dev-1/d/a.bin".into(),
            source: remote,
        };
        assert!(
            with_causes(&refusal).contains("keyholder.cp.svc"),
            "the log keeps it"
        );
        assert_eq!(
            refusal.device_reason(),
            "signing dev-1/d/a.bin failed: the key holder could not sign it"
        );

        let missing = SignRefusal::Sign {
            path: "dev-1/d/b.bin".into(),
            source: KeyError::ReadBlob {
                source: Box::new(BlobError::NotFound {
                    container: "uploads".into(),
                    path: "dev-1/d/b.bin".into(),
                }),
            },
        };
        assert_eq!(
            missing.device_reason(),
            "signing dev-1/d/b.bin failed: blob uploads/dev-1/d/b.bin not found"
        );
    }

    #[test]
    fn only_names_inside_the_devices_own_upload_area_are_signed() {
        assert_eq!(
            own_upload("dev-1", "uploads/dev-1/diagnostics/a.bin"),
            Some("dev-1/diagnostics/a.bin")
        );
        assert_eq!(own_upload("dev-1", "uploads/dev-2/diagnostics/a.bin"), None);
        assert_eq!(own_upload("dev-1", "uploads/dev-10/a.bin"), None);
        assert_eq!(own_upload("dev-1", "uploads/dev-1/"), None);
        assert_eq!(own_upload("dev-1", "uploads/dev-1"), None);
        assert_eq!(own_upload("dev-1", "fw/app.bin"), None);
        assert_eq!(own_upload("", "uploads//x"), None);
    }
}
