//! Carrying out a plan: assignment records on Devices, recipes into twins, Rollout status.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cloudpillar_crds::{Device, DeviceAssignment, DeviceRolloutPhase, Rollout, RolloutStatus};
use cloudpillar_protocol::twin::diff;
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::plan::{AssignmentWrite, Plan};
use super::{CANCEL_KEY, CONTROLLER, ReadyRecipe};
use super::{cancel, handover};
use crate::error::{Error, HubContext, KubeContext, Result, is_status};
use crate::runtime::{Context, key_of};
use crate::status::manager;
use crate::twin::{TwinError, TwinPatch, TwinService};

/// Device writes in flight at once within one reconcile.
const PARALLEL: usize = 32;

/// What carrying out a plan did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Devices whose assignment record could not be written (refused or failed).
    pub unwritten: HashSet<String>,
    /// The first error, after every device was attempted.
    pub error: Option<Error>,
}

/// Writes the plan's assignment records, then starts its devices. Every device is attempted.
pub async fn run(
    ctx: &Context,
    rollout: &Rollout,
    uid: &str,
    recipe: Option<&ReadyRecipe>,
    devices: &[Arc<Device>],
    plan: &Plan,
) -> Outcome {
    let by_name: HashMap<String, &Arc<Device>> =
        devices.iter().map(|d| (d.name_any(), d)).collect();
    let namespace = rollout.namespace().unwrap_or_default();
    let api: Api<Device> = Api::namespaced(ctx.client.clone(), &namespace);

    let mut writes = Vec::new();
    let api = &api;
    for write in &plan.writes {
        if let Some(device) = by_name.get(&write.device) {
            let device: &Device = device;
            writes.push(Box::pin(async move {
                (
                    write.device.clone(),
                    write_assignment(api, device, write, ctx, uid).await,
                )
            }) as BoxFuture<'_, (String, Result<bool>)>);
        }
    }
    let written: Vec<(String, Result<bool>)> = stream::iter(writes)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut first_error = None;
    let mut refused = HashSet::new();
    for (device, result) in written {
        match result {
            Ok(true) => {}
            Ok(false) => {
                refused.insert(device);
            }
            Err(error) => {
                refused.insert(device);
                first_error.get_or_insert(error);
            }
        }
    }

    if let Some(recipe) = recipe {
        let mut starts = Vec::new();
        for name in plan.starts.iter().filter(|n| !refused.contains(n.as_str())) {
            let Some(device) = by_name.get(name) else {
                continue;
            };
            let device: &Device = device;
            let planned = plan
                .writes
                .iter()
                .find(|w| &w.device == name)
                .map(|w| w.assignment.clone());
            let cached = device.status.as_ref().and_then(|s| s.assignment.clone());
            let Some(assignment) = planned.or(cached) else {
                continue;
            };
            starts.push(
                Box::pin(start(api, device, assignment, recipe, rollout, uid, ctx))
                    as BoxFuture<'_, Result<()>>,
            );
        }
        let results: Vec<Result<()>> = stream::iter(starts)
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for result in results {
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
    }
    Outcome {
        unwritten: refused,
        error: first_error,
    }
}

/// Writes one assignment record, after the cancel request in the twin when the write asks
/// for one (if that fails, the record stays as it was and the next reconcile tries again).
/// A guarded write carries the cached resourceVersion, so it fails (`Ok(false)`) when the
/// Device changed meanwhile, for example because another Rollout claimed it; the next
/// reconcile sees the change.
async fn write_assignment(
    api: &Api<Device>,
    device: &Device,
    write: &AssignmentWrite,
    ctx: &Context,
    uid: &str,
) -> Result<bool> {
    if write.cancel {
        // `Timeout: no result within 6h ...`, `CancelRequested: the Rollout was aborted`.
        let reason = write.assignment.reason.as_deref().unwrap_or_default();
        let why = reason.split_once(": ").map_or(reason, |(_, why)| why);
        cancel::request_cancel(device, &write.assignment.recipe_id, why, ctx).await?;
    }
    let version = write.guarded.then(|| device.resource_version()).flatten();
    match apply_assignment(api, device, &write.assignment, version, ctx).await {
        Ok(()) => {
            ctx.expectations.expect(
                uid,
                ObjectRef::from_obj(device),
                Some(write.assignment.clone()),
            );
            Ok(true)
        }
        Err(Error::Kube { source, .. }) if is_status(&source, 409) => {
            tracing::debug!(device = %device.name_any(), "device changed before the claim; skipping");
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// Server-side applies `status.assignment` under this controller's field manager, with
/// `status.previousAssignments` (the record it replaces moves there, see [`handover`]),
/// optionally guarded by `resource_version`. Every write carries both fields: the field
/// manager owns them together, and a field left out of an apply would be removed.
pub async fn apply_assignment(
    api: &Api<Device>,
    device: &Device,
    assignment: &DeviceAssignment,
    resource_version: Option<String>,
    ctx: &Context,
) -> Result<()> {
    let mut metadata = json!({ "name": device.name_any() });
    if let Some(version) = resource_version {
        metadata["resourceVersion"] = version.into();
    }
    let namespace = device.namespace().unwrap_or_default();
    let current = device.status.as_ref();
    let previous = handover::previous_assignments(
        current.and_then(|s| s.assignment.as_ref()),
        current
            .map(|s| s.previous_assignments.as_slice())
            .unwrap_or_default(),
        assignment,
        |a| super::running(ctx, &namespace, a),
    );
    let mut status = json!({ "assignment": assignment });
    if !previous.is_empty() {
        status["previousAssignments"] = json!(previous);
    }
    let body = json!({
        "apiVersion": Device::api_version(&()),
        "kind": Device::kind(&()),
        "metadata": metadata,
        "status": status,
    });
    let params = PatchParams::apply(&manager(CONTROLLER)).force();
    api.patch_status(&device.name_any(), &params, &Patch::Apply(&body))
        .await
        .kube("apply assignment of", &key_of(device))
        .map(|_| ())
}

/// Puts the recipe into the device's twin (unless it is there), then records `assignedTime`.
async fn start(
    api: &Api<Device>,
    device: &Device,
    mut assignment: DeviceAssignment,
    recipe: &ReadyRecipe,
    rollout: &Rollout,
    uid: &str,
    ctx: &Context,
) -> Result<()> {
    let object = key_of(device);
    let namespace = device.namespace().unwrap_or_default();
    let refused = |cause, why| Refused {
        cause,
        why,
        rollout,
        uid,
    };
    let hub = match ctx
        .hubs
        .service(&namespace, &device.spec.hub_ref.name, &object)
        .await
    {
        Ok(hub) => hub,
        Err(error @ Error::HubUnusable { .. }) => {
            let refusal = refused("HubUnusable", error.to_string());
            return refusal.record(api, device, assignment, ctx).await;
        }
        Err(error) => return Err(error),
    };
    let device_id = device.device_id();
    let desired = json!({ "changeSpec": recipe.form.value, "changeSign": recipe.signature });
    if let Err(error) = write_desired(hub.as_ref(), &device_id, &desired, ctx).await {
        // A refusal the hub will never take back fails the device; anything else is retried.
        let Some(words) = error.lasting_refusal() else {
            return Err(error).hub(&object);
        };
        let why = format!("the twin refused the recipe: {words}");
        return refused("TwinRefused", why)
            .record(api, device, assignment, ctx)
            .await;
    }

    assignment.phase = DeviceRolloutPhase::Assigned;
    assignment.assigned_time = Some(Time(crate::status::now()));
    apply_assignment(api, device, &assignment, None, ctx).await?;
    ctx.expectations
        .expect(uid, ObjectRef::from_obj(device), Some(assignment));
    tracing::info!(device = %device_id, recipe = %recipe.id, "recipe written to twin");
    Ok(())
}

/// Why a device cannot receive the recipe, for good.
struct Refused<'a> {
    /// Static category: the reason's first word and the Event reason.
    cause: &'static str,
    /// The words that explain it.
    why: String,
    rollout: &'a Rollout,
    uid: &'a str,
}

impl Refused<'_> {
    /// Records the device as Failed with the reason (it counts against the failure
    /// threshold) and publishes a Warning Event on the Rollout naming the device; the other
    /// devices go on.
    async fn record(
        self,
        api: &Api<Device>,
        device: &Device,
        mut assignment: DeviceAssignment,
        ctx: &Context,
    ) -> Result<()> {
        let Self {
            cause,
            why,
            rollout,
            uid,
        } = self;
        tracing::warn!(device = %key_of(device), cause, %why, "device cannot receive the recipe");
        assignment.phase = DeviceRolloutPhase::Failed;
        assignment.reason = Some(format!("{cause}: {why}"));
        assignment.phase_time = Some(Time(crate::status::now()));
        apply_assignment(api, device, &assignment, None, ctx).await?;
        ctx.expectations
            .expect(uid, ObjectRef::from_obj(device), Some(assignment));
        let note = format!("{}: {why}", device.name_any());
        ctx.publish_to(
            &rollout.object_ref(&()),
            Some(device.object_ref(&())),
            true,
            cause,
            note,
        )
        .await;
        Ok(())
    }
}

/// Makes the twin's desired section hold `wanted` (top-level members), ETag-guarded: the
/// members are turned into the merge patch that changes the twin's current values into the
/// wanted ones, so that no member of an older recipe lingers. Any pending cancel request is
/// removed with it, unless `wanted` is one. Nothing is written when the twin already holds
/// `wanted`; `Ok(true)` when something was.
pub async fn write_desired(
    hub: &dyn TwinService,
    device_id: &str,
    wanted: &Value,
    ctx: &Context,
) -> std::result::Result<bool, TwinError> {
    for _ in 0..3 {
        let twin = hub.get_twin(device_id).await?;
        let current = &twin.properties.desired;
        let mut patch = serde_json::Map::new();
        if let Value::Object(members) = wanted {
            for (key, value) in members {
                let old = current.get(key).cloned().unwrap_or(Value::Null);
                if let Some(change) = diff(&old, value) {
                    patch.insert(key.clone(), change);
                }
            }
        }
        if current.get(CANCEL_KEY).is_some() && wanted.get(CANCEL_KEY).is_none() {
            patch.insert(CANCEL_KEY.into(), Value::Null);
        }
        if patch.is_empty() {
            return Ok(false);
        }
        let patch = TwinPatch {
            tags: None,
            desired: Some(Value::Object(patch)),
        };
        match hub.patch_twin(device_id, &patch, Some(&twin.etag)).await {
            Ok(_) => {
                ctx.metrics.twin_write("written");
                return Ok(true);
            }
            Err(TwinError::EtagMismatch { .. }) => ctx.metrics.twin_write("etag_mismatch"),
            Err(error) => {
                ctx.metrics.twin_write("failed");
                return Err(error);
            }
        }
    }
    Err(TwinError::EtagMismatch {
        device_id: device_id.to_owned(),
    })
}

/// Applies the Rollout status unless it equals the current one. The write carries the
/// resourceVersion the plan was made from, so a plan from a stale cache never overwrites a
/// newer status: the server refuses it and the next reconcile plans again.
pub async fn write_status(
    api: &Api<Rollout>,
    rollout: &Rollout,
    previous: &RolloutStatus,
    status: &RolloutStatus,
) -> Result<()> {
    if status == previous {
        return Ok(());
    }
    let body = json!({
        "apiVersion": Rollout::api_version(&()),
        "kind": Rollout::kind(&()),
        "metadata": { "name": rollout.name_any(), "resourceVersion": rollout.resource_version() },
        "status": status,
    });
    let params = PatchParams::apply(&manager(CONTROLLER)).force();
    match api
        .patch_status(&rollout.name_any(), &params, &Patch::Apply(&body))
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if is_status(&error, 409) => Err(Error::Conflict {
            object: key_of(rollout),
        }),
        Err(source) => Err(Error::Kube {
            action: "apply status of",
            object: key_of(rollout),
            source,
        }),
    }
}
