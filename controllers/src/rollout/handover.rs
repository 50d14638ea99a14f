//! One recipe at a time: when a device is held, and what happens to a finished assignment
//! when another Rollout takes the device (pure; no I/O).
//!
//! A device's assignment keeps other Rollouts off it only while it is unfinished. Once it is
//! Succeeded, Failed or Cancelled, another Rollout may claim the device, even while the
//! Rollout that ran it is still going (a canary wave done, later waves to come). The
//! replaced record then moves to `status.previousAssignments`, where its Rollout still finds
//! it: it keeps counting the device's outcome and never claims the device a second time.

use cloudpillar_crds::device::MAX_PREVIOUS_ASSIGNMENTS;
use cloudpillar_crds::{DeviceAssignment, DeviceRecipeStatus};

/// Reported recipe statuses after which the device no longer works on the recipe.
const FINISHED_REPORTS: [&str; 4] = ["Success", "Failure", "Cancelled", "Refused"];

/// Whether the device reports `recipe_id` finished, one way or another.
pub fn reports_finished(report: Option<&DeviceRecipeStatus>, recipe_id: &str) -> bool {
    report.is_some_and(|r| {
        r.id.as_deref() == Some(recipe_id)
            && r.status
                .as_deref()
                .is_some_and(|s| FINISHED_REPORTS.contains(&s))
    })
}

/// Whether `assignment` keeps other Rollouts off the device.
///
/// A finished assignment never does. An unfinished one does while its Rollout is running
/// (`owner_running`); once that Rollout has ended or is gone, only while the device holds
/// the recipe (received it, not deferred) and has not reported it finished.
pub fn holds(
    assignment: &DeviceAssignment,
    owner_running: bool,
    report: Option<&DeviceRecipeStatus>,
) -> bool {
    if assignment.phase.is_finished() {
        return false;
    }
    if owner_running {
        return true;
    }
    assignment.phase.is_in_flight() && !reports_finished(report, &assignment.recipe_id)
}

/// The `previousAssignments` to write together with `next`.
///
/// `current` and `previous` are what the Device holds now. A finished `current` of another
/// Rollout that is still running moves to the end of the list; records of Rollouts no longer
/// running (`running` false) are dropped, and so is anything of `next`'s own Rollout. The
/// result depends only on these inputs, so a write planned from a cache that does not yet
/// show the claim writes the same list as one planned after it.
pub fn previous_assignments(
    current: Option<&DeviceAssignment>,
    previous: &[DeviceAssignment],
    next: &DeviceAssignment,
    running: impl Fn(&DeviceAssignment) -> bool,
) -> Vec<DeviceAssignment> {
    let mut kept = previous.to_vec();
    if let Some(replaced) = current
        && replaced.rollout_uid != next.rollout_uid
        && !kept.iter().any(|k| k.rollout_uid == replaced.rollout_uid)
    {
        kept.push(replaced.clone());
    }
    kept.retain(|k| k.rollout_uid != next.rollout_uid && k.phase.is_finished() && running(k));
    let excess = kept.len().saturating_sub(MAX_PREVIOUS_ASSIGNMENTS);
    kept.drain(..excess);
    kept
}

#[cfg(test)]
mod tests {
    use cloudpillar_crds::DeviceRolloutPhase as Phase;

    use super::*;

    fn record(uid: &str, phase: Phase) -> DeviceAssignment {
        DeviceAssignment {
            rollout: format!("ro-{uid}"),
            rollout_uid: uid.into(),
            recipe: "fw".into(),
            recipe_id: format!("r-{uid}"),
            wave: 1,
            phase,
            reason: None,
            assigned_time: None,
            phase_time: None,
        }
    }

    fn report(id: &str, status: &str) -> DeviceRecipeStatus {
        DeviceRecipeStatus {
            id: Some(id.into()),
            status: Some(status.into()),
            ..DeviceRecipeStatus::default()
        }
    }

    #[test]
    fn a_finished_device_is_free_even_while_its_rollout_runs() {
        for phase in [Phase::Succeeded, Phase::Failed, Phase::Cancelled] {
            assert!(!holds(&record("a", phase), true, None), "{phase:?}");
        }
        for phase in [Phase::Deferred, Phase::Assigned, Phase::InProgress] {
            assert!(holds(&record("a", phase), true, None), "{phase:?}");
        }
    }

    #[test]
    fn an_ended_rollout_holds_only_a_device_still_running_its_recipe() {
        let running = record("a", Phase::InProgress);
        assert!(holds(&running, false, Some(&report("r-a", "InProgress"))));
        assert!(!holds(&running, false, Some(&report("r-a", "Success"))));
        assert!(holds(&running, false, Some(&report("other", "Success"))));
        assert!(!holds(&record("a", Phase::Deferred), false, None));
    }

    #[test]
    fn the_replaced_record_moves_to_the_previous_ones_once_whatever_the_cache_showed() {
        let first = record("a", Phase::Succeeded);
        let claim = record("b", Phase::Assigned);
        let all_running = |_: &DeviceAssignment| true;
        let before_claim = previous_assignments(Some(&first), &[], &claim, all_running);
        assert_eq!(before_claim, vec![first.clone()]);
        let mut started = claim.clone();
        started.phase = Phase::InProgress;
        let after_claim = previous_assignments(Some(&claim), &before_claim, &started, all_running);
        assert_eq!(
            after_claim, before_claim,
            "a stale cache writes the same list"
        );
    }

    #[test]
    fn records_of_rollouts_no_longer_running_are_dropped() {
        let ended = record("a", Phase::Succeeded);
        let going = record("b", Phase::Failed);
        let next = record("c", Phase::Assigned);
        let kept = previous_assignments(Some(&going), &[ended], &next, |r| r.rollout_uid != "a");
        assert_eq!(kept, vec![going]);
        let many: Vec<DeviceAssignment> = (0..MAX_PREVIOUS_ASSIGNMENTS + 3)
            .map(|i| record(&format!("x{i}"), Phase::Succeeded))
            .collect();
        let kept = previous_assignments(None, &many, &next, |_| true);
        assert_eq!(kept.len(), MAX_PREVIOUS_ASSIGNMENTS);
        assert_eq!(kept[0].rollout_uid, "x3", "the oldest go first");
    }
}
