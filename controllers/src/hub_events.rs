//! The event pump of one hub: twin change and connection events become Device reconciles,
//! and the position reached is kept in the Hub's `status.eventCheckpoint`, so that a
//! restarted operator resumes where it stopped instead of missing what happened meanwhile.

use cloudpillar_protocol::causes::ErrorChain;
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_crds::{EventCheckpoint, Hub};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio::time::Instant;

use cloudpillar_crds::Device;

use crate::device::{DeviceIndex, drifted};
use crate::status::manager;
use crate::twin::{Checkpoint, EventPositions, TwinError, TwinEvent, TwinEventKind, TwinService};

/// Field manager of `status.eventCheckpoint`.
const CONTROLLER: &str = "hub-events";
/// How often a moved checkpoint is written to the Hub's status.
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// Longest wait between attempts to read a failing event stream.
const MAX_BACKOFF: Duration = Duration::from_secs(32);

/// The Devices twin events are about, and where their reconciles are asked for.
pub(crate) struct Devices {
    /// Which Device holds each device id.
    pub index: Arc<DeviceIndex>,
    /// Cached Devices.
    pub store: Store<Device>,
    /// Reconcile requests.
    pub triggers: UnboundedSender<ObjectRef<Device>>,
}

impl Devices {
    /// The Device to reconcile for `event` in hub `namespace/hub`, if the event calls for one:
    /// its reported properties or connection changed, or a tag or desired property it owns
    /// was changed by someone else (its own writes show the values its spec holds).
    fn to_reconcile(
        &self,
        namespace: &str,
        hub: &str,
        event: &TwinEvent,
    ) -> Option<ObjectRef<Device>> {
        let holder = self.index.holder(namespace, hub, &event.device_id)?;
        if relevant(event.kind.clone(), event.body.as_ref()) {
            return Some(holder);
        }
        let body = event
            .body
            .as_ref()
            .filter(|_| event.kind == TwinEventKind::TwinChanged)?;
        let device = self.store.get(&holder)?;
        drifted(&device, body).then_some(holder)
    }
}

/// Follows a hub's event stream and asks for a reconcile of each Device whose reported
/// properties or connection changed, or whose owned tags or desired properties someone else
/// changed. The operator's own writes of tags and desired properties need no reconcile.
pub(crate) async fn pump_events(
    service: Arc<dyn TwinService>,
    api: Api<Hub>,
    (namespace, hub): (String, String),
    devices: Devices,
) {
    let mut positions = load(&api, &hub).await;
    let mut saved = positions.clone();
    let mut failures: u32 = 0;
    loop {
        let mut events = service.subscribe(Checkpoint::Positions(positions.clone()));
        let mut last_save = Instant::now();
        loop {
            let next = tokio::time::timeout(SAVE_EVERY, events.next()).await;
            let event = match next {
                Err(_) => None,
                Ok(None) => break,
                Ok(Some(Ok(event))) => Some(event),
                Ok(Some(Err(TwinError::EventsUnsupported { .. }))) => {
                    tracing::info!(%hub, "hub has no readable event stream; relying on resync");
                    return;
                }
                Ok(Some(Err(error))) => {
                    tracing::warn!(%hub, error = %ErrorChain(&error), "hub event stream failed; resuming");
                    break;
                }
            };
            if let Some(event) = event {
                failures = 0;
                if let Some(object) = devices.to_reconcile(&namespace, &hub, &event) {
                    let _ = devices.triggers.unbounded_send(object);
                }
                positions.record(&event);
            }
            if last_save.elapsed() >= SAVE_EVERY {
                save(&api, &hub, &positions, &mut saved).await;
                last_save = Instant::now();
            }
        }
        save(&api, &hub, &positions, &mut saved).await;
        failures = failures.saturating_add(1);
        let delay = Duration::from_millis(500 * 2_u64.pow(failures.min(6))).min(MAX_BACKOFF);
        tokio::time::sleep(delay).await;
    }
}

/// Whether an event can change what a Device's status shows.
fn relevant(kind: TwinEventKind, body: Option<&serde_json::Value>) -> bool {
    match kind {
        TwinEventKind::Connected | TwinEventKind::Disconnected => true,
        TwinEventKind::TwinChanged => body.is_none_or(|body| {
            body.pointer("/properties/reported").is_some()
                || body.get("tags").is_none() && body.pointer("/properties/desired").is_none()
        }),
        TwinEventKind::Other => false,
    }
}

/// The checkpoint kept in the Hub's status, or one starting now.
async fn load(api: &Api<Hub>, hub: &str) -> EventPositions {
    let kept = match api.get_status(hub).await {
        Ok(object) => object.status.and_then(|s| s.event_checkpoint),
        Err(error) => {
            tracing::warn!(%hub, error = %ErrorChain(&error), "event checkpoint not readable; starting from now");
            None
        }
    };
    match kept {
        Some(kept) => {
            tracing::info!(%hub, partitions = kept.partitions.len(), "resuming hub events");
            EventPositions {
                since_ms: u64::try_from(kept.since_ms).unwrap_or(0),
                next: kept
                    .partitions
                    .into_iter()
                    .map(|(p, n)| (p, u64::try_from(n).unwrap_or(0)))
                    .collect(),
            }
        }
        None => EventPositions::starting_at(now_ms()),
    }
}

/// Writes `positions` to the Hub's status when they moved since the last write.
async fn save(api: &Api<Hub>, hub: &str, positions: &EventPositions, saved: &mut EventPositions) {
    if positions == saved {
        return;
    }
    let checkpoint = EventCheckpoint {
        since_ms: i64::try_from(positions.since_ms).unwrap_or(i64::MAX),
        partitions: positions
            .next
            .iter()
            .map(|(p, n)| (p.clone(), i64::try_from(*n).unwrap_or(i64::MAX)))
            .collect(),
    };
    let body = json!({
        "apiVersion": "cloudpillar.io/v1alpha1",
        "kind": "Hub",
        "metadata": { "name": hub },
        "status": { "eventCheckpoint": checkpoint },
    });
    let params = PatchParams::apply(&manager(CONTROLLER)).force();
    match api.patch_status(hub, &params, &Patch::Apply(&body)).await {
        Ok(_) => *saved = positions.clone(),
        Err(error) => {
            tracing::warn!(%hub, error = %ErrorChain(&error), "event checkpoint not saved; retrying later")
        }
    }
}

fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}
