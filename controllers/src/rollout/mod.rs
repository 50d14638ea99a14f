//! Rollout controller: brings a signed Recipe to the Devices a selector picks, wave by wave.
//!
//! Per-device progress is kept on each Device (`status.assignment`, and finished records
//! another Rollout took over in `status.previousAssignments`, both written under this
//! controller's field manager) and in the twins; the Rollout's own status holds counts.
//! Each reconcile rebuilds its view from those durable records (see [`plan`]).

mod abort;
mod cancel;
mod execute;
mod expect;
mod handover;
pub mod plan;
#[cfg(test)]
mod plan_tests;
mod readiness;
mod reasons;
mod settle;
mod summary;
mod validate;
pub mod waves;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use cloudpillar_crds::conditions::DEVICE_REGISTERED;
use cloudpillar_crds::{Device, DeviceAssignment, Recipe, Rollout};
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

pub use expect::Expectations;
pub use plan::{Candidate, Facts, Plan};

use crate::error::{Error, Result};
use crate::recipe::{SignedForm, is_ready, signed_form};
use crate::runtime::{Context, finalizer, key_of};
use waves::Observed;

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "rollout";

/// Finalizer that cancels running devices before a Rollout goes away.
pub const FINALIZER: &str = "cloudpillar.io/rollout";

/// Desired-property key of a cancel request: `{"id": "<changeSpec.id>"}`. The device stops
/// the recipe with that id and reports `Status: Cancelled`; progress stays in reported.
pub use cloudpillar_protocol::twin::CANCEL_KEY;

/// Devices started per reconcile at most; the rest follow in the next one.
const MAX_STARTS: usize = 500;

/// A ready Recipe: its `changeSpec` as signed, and the signature text.
#[derive(Debug, Clone)]
pub struct ReadyRecipe {
    /// `changeSpec.id`.
    pub id: String,
    /// What devices receive.
    pub form: SignedForm,
    /// `desired.changeSign`.
    pub signature: String,
}

/// Reconciles one Rollout.
pub async fn reconcile(rollout: Arc<Rollout>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = rollout
        .namespace()
        .ok_or(Error::Incomplete { what: "namespace" })?;
    let api: Api<Rollout> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = rollout.uid().ok_or(Error::Incomplete { what: "uid" })?;

    // Plan only from a cache that shows this controller's own writes.
    if ctx.expectations.unseen(&uid, &ctx.devices) {
        return Ok(Action::requeue(Duration::from_millis(300)));
    }
    let recipe = ready_recipe(&ctx, &namespace, &rollout);
    let recipe_problem = recipe.as_ref().err().cloned();
    let recipe = recipe.ok();

    if rollout.meta().deletion_timestamp.is_some() {
        if rollout.finalizers().iter().any(|f| f == FINALIZER) {
            let devices = members(&ctx, &namespace, &uid);
            if !cancel::cancel(&rollout, &uid, &devices, &ctx).await? {
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
            finalizer::remove(&api, rollout.as_ref(), FINALIZER).await?;
            ctx.expectations.forget(&uid);
        }
        return Ok(Action::await_change());
    }
    let rollout = finalizer::add(&api, rollout.as_ref(), FINALIZER).await?;
    if let Some(problem) = validate::problem(&rollout.spec, chrono::Utc::now()) {
        return validate::refuse(&api, &rollout, &ctx, problem).await;
    }

    // Window and candidates, then the pure plan.
    let now = crate::status::now();
    let window = match &rollout.spec.strategy.maintenance_window {
        Some(w) => {
            Some(
                window::evaluate(w, chrono::Utc::now()).map_err(|e| Error::InvalidSpec {
                    object: key_of(&rollout),
                    reason: e.to_string(),
                })?,
            )
        }
        None => None,
    };
    let devices = selection(&ctx, &namespace, &rollout, &uid)?;
    let candidates: Vec<Candidate<'_>> = devices
        .iter()
        .map(|d| candidate(d, &rollout, &uid, &ctx))
        .collect();
    let previous = rollout.status.clone().unwrap_or_default();
    let facts = Facts {
        rollout: &rollout.name_any(),
        uid: &uid,
        spec: &rollout.spec,
        generation: rollout.meta().generation,
        previous: &previous,
        recipe_id: recipe.as_ref().map(|r| r.id.as_str()),
        recipe_problem: recipe_problem.as_deref(),
        window_open: window.is_none_or(|w| w.open),
        window_opens: window
            .filter(|w| !w.open)
            .and_then(|w| w.changes_at)
            .and_then(|t| k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).ok()),
        now,
        max_starts: MAX_STARTS,
    };
    let plan = plan::plan(&facts, &candidates);
    let capped = plan.starts.len() >= MAX_STARTS;

    // Act: assignment records first, then twins, then the Rollout's status.
    let outcome = execute::run(&ctx, &rollout, &uid, recipe.as_ref(), &devices, &plan).await;
    if let Some(status) = settle::settle(&facts, &candidates, &plan, &outcome.unwritten) {
        execute::write_status(&api, &rollout, &previous, &status).await?;
        for event in &plan.events {
            ctx.publish(&rollout, event.warning, event.reason, event.note.clone())
                .await;
        }
    }
    if let Some(error) = outcome.error {
        return Err(error);
    }

    let mut next = ctx.config.resync_period;
    let wake = plan
        .wake_at
        .map(|t| Duration::from_secs(t.duration_since(now).as_secs().max(1) as u64));
    let window_change = window
        .and_then(|w| w.changes_at)
        .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1));
    for candidate in [wake, window_change].into_iter().flatten() {
        next = next.min(candidate);
    }
    if capped {
        next = Duration::from_millis(200);
    }
    if !outcome.unwritten.is_empty() {
        // Records another writer changed meanwhile: plan again from the fresh Devices.
        next = next.min(Duration::from_secs(1));
    }
    Ok(Action::requeue(next))
}

/// The Recipe the Rollout names, when Valid and Signed for its current spec and the signed
/// digest matches what would be written; otherwise why not, naming the Recipe.
fn ready_recipe(
    ctx: &Context,
    namespace: &str,
    rollout: &Rollout,
) -> std::result::Result<ReadyRecipe, String> {
    let name = &rollout.spec.recipe_ref.name;
    let reference = ObjectRef::<Recipe>::new(name).within(namespace);
    let recipe = ctx
        .recipes
        .get(&reference)
        .ok_or_else(|| format!("Recipe {name} does not exist"))?;
    if !is_ready(&recipe) {
        return Err(readiness::why_not_ready(&recipe));
    }
    let status = recipe.status.as_ref();
    let signature = status.and_then(|s| s.signature.clone()).unwrap_or_default();
    let form = signed_form(&recipe.spec);
    if status.and_then(|s| s.digest.as_deref()) != Some(form.digest.as_str()) {
        return Err(format!("Recipe {name} changed since it was signed"));
    }
    Ok(ReadyRecipe {
        id: recipe.spec.change_spec.id.clone(),
        signature,
        form,
    })
}

/// Devices in the namespace that the selector matches or that this Rollout claimed.
fn selection(
    ctx: &Context,
    namespace: &str,
    rollout: &Rollout,
    uid: &str,
) -> Result<Vec<Arc<Device>>> {
    let selector =
        Selector::try_from(rollout.spec.selector.clone()).map_err(|e| Error::InvalidSpec {
            object: key_of(rollout),
            reason: format!("selector: {e}"),
        })?;
    let mut devices: Vec<Arc<Device>> = ctx
        .devices
        .state()
        .into_iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace))
        .filter(|d| d.meta().deletion_timestamp.is_none() || is_mine(d, uid))
        .filter(|d| selector.matches(d.labels()) || is_mine(d, uid))
        .collect();
    devices.sort_by_key(|d| d.name_any());
    Ok(devices)
}

/// Devices whose current assignment is this Rollout's.
fn members(ctx: &Context, namespace: &str, uid: &str) -> Vec<Arc<Device>> {
    ctx.devices
        .state()
        .into_iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace))
        .filter(|d| assignment(d).is_some_and(|a| a.rollout_uid == uid))
        .collect()
}

fn assignment(device: &Device) -> Option<&DeviceAssignment> {
    device.status.as_ref().and_then(|s| s.assignment.as_ref())
}

/// This Rollout's record on the device, and whether it is still the current assignment
/// (`false`: handed over to a later Rollout, kept in `status.previousAssignments`).
fn record_of<'a>(device: &'a Device, uid: &str) -> Option<(&'a DeviceAssignment, bool)> {
    let status = device.status.as_ref()?;
    if let Some(current) = status.assignment.as_ref().filter(|a| a.rollout_uid == uid) {
        return Some((current, true));
    }
    status
        .previous_assignments
        .iter()
        .find(|a| a.rollout_uid == uid)
        .map(|a| (a, false))
}

fn is_mine(device: &Device, uid: &str) -> bool {
    record_of(device, uid).is_some()
}

/// Whether `device` is refused because another Device holds its device id.
fn is_duplicate(device: &Device) -> bool {
    let conditions = device.status.as_ref().map(|s| s.conditions.as_slice());
    conditions
        .and_then(|c| cloudpillar_crds::conditions::find(c, DEVICE_REGISTERED))
        .is_some_and(|c| c.status == "False" && c.reason == crate::device::DUPLICATE_DEVICE_ID)
}

fn candidate<'a>(device: &'a Device, rollout: &Rollout, uid: &str, ctx: &Context) -> Candidate<'a> {
    let status = device.status.as_ref();
    let mine = record_of(device, uid);
    let report = status.and_then(|s| s.recipe.as_ref());
    let namespace = device.namespace().unwrap_or_default();
    let held_by = assignment(device)
        .filter(|a| a.rollout_uid != uid)
        .filter(|a| handover::holds(a, running(ctx, &namespace, a), report))
        .map(|a| a.rollout.as_str());
    let reachable = status
        .and_then(|s| s.connection.as_ref())
        .is_some_and(|c| c.state == cloudpillar_crds::ConnectionState::Connected);
    let busy = status.and_then(|s| s.device_state.as_deref()) == Some("BUSY");
    Candidate {
        name: device.meta().name.as_deref().unwrap_or_default(),
        // A Device refused for naming another's device id owns no twin to write into.
        selected: device.meta().deletion_timestamp.is_none()
            && !is_duplicate(device)
            && Selector::try_from(rollout.spec.selector.clone())
                .is_ok_and(|s| s.matches(device.labels())),
        mine: mine.map(|(record, _)| record),
        handed_over: mine.is_some_and(|(_, current)| !current),
        held_by,
        busy,
        labels: device.labels(),
        observed: Observed {
            report,
            reachable,
            busy,
        },
    }
}

/// Whether the Rollout that made `assignment` exists (same UID), is not being deleted and
/// has not ended.
fn running(ctx: &Context, namespace: &str, assignment: &DeviceAssignment) -> bool {
    let owner = ctx
        .rollouts
        .get(&ObjectRef::new(&assignment.rollout).within(namespace));
    owner.is_some_and(|o| {
        o.uid().as_deref() == Some(assignment.rollout_uid.as_str())
            && o.meta().deletion_timestamp.is_none()
            && !o.status.as_ref().is_some_and(|s| s.phase.is_final())
    })
}
