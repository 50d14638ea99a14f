//! Stopping an aborted Rollout's devices (pure; no I/O).

use std::collections::BTreeMap;

use cloudpillar_crds::{DeviceAssignment, DeviceRolloutPhase as Phase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::plan::{AssignmentWrite, Candidate, Plan};
use super::reasons::{self, Stop};

/// The writes that stop an aborted Rollout's unfinished devices (field case F22: the cancel
/// lives in desired, progress in reported). A device that runs the recipe keeps its phase
/// with reason CancelRequested until it reports; one that never received the recipe, or
/// never reported starting it (an agent never starts a recipe its twin cancels), is
/// Cancelled at once as Withdrawn. Every twin that may hold the recipe gets the cancel.
///
/// The writes go into `plan` (replacing one planned for the same device), the records into
/// `members`; nothing starts any more.
pub fn stop_devices(
    plan: &mut Plan,
    members: &mut BTreeMap<&str, DeviceAssignment>,
    candidates: &BTreeMap<&str, &Candidate<'_>>,
    now: &Time,
) {
    plan.starts.clear();
    for (name, record) in members.iter_mut() {
        if record.phase.is_finished() || reasons::cancel_pending(record) {
            continue;
        }
        let received = record.assigned_time.is_some();
        let running = candidates
            .get(name)
            .and_then(|c| c.observed.report)
            .is_some_and(|r| r.id.as_deref() == Some(record.recipe_id.as_str()));
        let before = record.clone();
        if received && running {
            record.reason = Some(reasons::cancel_requested(Stop::Aborted));
        } else {
            record.phase = Phase::Cancelled;
            record.reason = Some(reasons::withdrawn(Stop::Aborted, received));
        }
        record.phase_time = Some(now.clone());
        let mut write = AssignmentWrite::update(name, &before, record.clone());
        write.cancel = received || before.phase == Phase::Assigned;
        match plan.writes.iter_mut().find(|w| w.device == write.device) {
            Some(planned) => {
                planned.assignment = write.assignment;
                planned.cancel |= write.cancel;
            }
            None => plan.writes.push(write),
        }
    }
}
