//! Cancel requests in twins, and cancelling a Rollout when it is deleted (field case F22).
//!
//! The cancel request lives only in the twin's desired section (`changeCancel`), progress only
//! in reported, so neither overwrites the other. A device is marked Cancelled only once it
//! reports the recipe cancelled; one that finished first keeps its outcome. Devices that never
//! received the recipe are released at once. Deletion waits for running devices to answer,
//! at most the cancel grace period, after which their records stay as they are and keep
//! holding the device until it reports the recipe finished. A device the Rollout had already
//! given up on (timed out, withdrawn) whose twin still holds the recipe unfinished gets the
//! cancel too, so that no twin keeps a recipe nobody waits for.

use std::sync::Arc;
use std::time::Duration;

use cloudpillar_crds::{Device, DeviceRolloutPhase as Phase, Rollout};
use cloudpillar_protocol::twin::cancel_request;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::CANCEL_KEY;
use super::execute::{apply_assignment, write_desired};
use super::handover::reports_finished;
use super::reasons::{self, Stop};
use super::waves::{self, Observed};
use crate::error::{Error, HubContext, Result};
use crate::runtime::{Context, key_of};

/// Longest a deleted Rollout waits for its running devices to confirm the cancel.
const CANCEL_GRACE: Duration = Duration::from_secs(600);

/// Cancels the Rollout's running devices. `Ok(true)` once none is left running (or the grace
/// period is over) and the finalizer may go.
pub async fn cancel(
    rollout: &Rollout,
    uid: &str,
    devices: &[Arc<Device>],
    ctx: &Context,
) -> Result<bool> {
    let now = crate::status::now();
    let mut running = 0_usize;
    for device in devices {
        let Some(mut record) = device.status.as_ref().and_then(|s| s.assignment.clone()) else {
            continue;
        };
        let status = device.status.as_ref();
        if record.phase.is_finished() {
            let report = status.and_then(|s| s.recipe.as_ref());
            if !reports_finished(report, &record.recipe_id) {
                request_cancel(device, &record.recipe_id, DELETED, ctx).await?;
            }
            continue;
        }
        let namespace = device.namespace().unwrap_or_default();
        let api: Api<Device> = Api::namespaced(ctx.client.clone(), &namespace);
        let observed = Observed {
            report: status.and_then(|s| s.recipe.as_ref()),
            reachable: status
                .and_then(|s| s.connection.as_ref())
                .is_some_and(|c| c.state == cloudpillar_crds::ConnectionState::Connected),
            busy: status.and_then(|s| s.device_state.as_deref()) == Some("BUSY"),
        };
        let (phase, reason) = waves::observe(&record, &observed, None, now);
        let received = record.assigned_time.is_some();
        let (phase, reason) = match (phase, received) {
            // Never received the recipe (a claim whose twin write may have been cut short is
            // cancelled in the twin too, in case it landed).
            (Phase::Deferred | Phase::Pending | Phase::Assigned, false) => {
                if phase == Phase::Assigned {
                    request_cancel(device, &record.recipe_id, DELETED, ctx).await?;
                }
                (Phase::Cancelled, Some("RolloutDeleted".to_owned()))
            }
            (phase, _) if phase.is_finished() => (phase, reason),
            (phase, _) => {
                // Sent again under the deletion's name even if an abort asked before; the
                // twin write is skipped when the request is there already.
                let deleted = reasons::cancel_requested(Stop::Deleted);
                if record.reason.as_deref() != Some(deleted.as_str()) {
                    request_cancel(device, &record.recipe_id, DELETED, ctx).await?;
                }
                running += 1;
                (phase, Some(deleted))
            }
        };
        if phase != record.phase || reason != record.reason {
            record.phase = phase;
            record.reason = reason;
            record.phase_time = Some(Time(now));
            apply_assignment(&api, device, &record, None, ctx).await?;
            ctx.expectations
                .expect(uid, ObjectRef::from_obj(device.as_ref()), Some(record));
        }
    }

    let deleted_at = rollout.meta().deletion_timestamp.as_ref().map(|t| t.0);
    let waited = deleted_at.map_or(Duration::ZERO, |t| now.duration_since(t).unsigned_abs());
    if running > 0 && waited < CANCEL_GRACE {
        tracing::info!(rollout = %key_of(rollout), running, "waiting for devices to confirm the cancel");
        return Ok(false);
    }
    if running > 0 {
        tracing::warn!(rollout = %key_of(rollout), running, "cancel not confirmed in time; releasing the Rollout");
        ctx.publish(
            rollout,
            true,
            "CancelUnconfirmed",
            format!("{running} devices did not confirm the cancel"),
        )
        .await;
    }
    Ok(true)
}

/// Why a deleted Rollout's devices are asked to cancel, in their Events.
const DELETED: &str = "its Rollout was deleted";

/// Writes `changeCancel: {"id": recipe_id}` into the twin if the twin holds that recipe and
/// does not cancel it yet, with a Normal Event on the Device saying `why`.
pub(super) async fn request_cancel(
    device: &Device,
    recipe_id: &str,
    why: &str,
    ctx: &Context,
) -> Result<()> {
    let object = key_of(device);
    let namespace = device.namespace().unwrap_or_default();
    let hub = match ctx
        .hubs
        .service(&namespace, &device.spec.hub_ref.name, &object)
        .await
    {
        Ok(hub) => hub,
        // No usable hub: no twin can hold the recipe through it, so there is nothing to cancel.
        Err(error @ Error::HubUnusable { .. }) => {
            tracing::warn!(device = %object, %error, "no cancel sent");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    let device_id = device.device_id();
    let twin = hub.get_twin(&device_id).await.hub(&object)?;
    let holds = twin
        .properties
        .desired
        .pointer("/changeSpec/id")
        .and_then(|v| v.as_str())
        == Some(recipe_id);
    if !holds {
        return Ok(());
    }
    let wanted = json!({ CANCEL_KEY: cancel_request(recipe_id) });
    let written = write_desired(hub.as_ref(), &device_id, &wanted, ctx)
        .await
        .hub(&object)?;
    if written {
        tracing::info!(device = %device_id, recipe = recipe_id, why, "cancel requested");
        ctx.publish(
            device,
            false,
            "CancelRequested",
            format!("recipe {recipe_id} cancelled: {why}"),
        )
        .await;
    }
    Ok(())
}
