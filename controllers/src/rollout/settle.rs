//! The status written after a plan's writes, and that of an ended Rollout (pure; no I/O).

use std::collections::{BTreeMap, HashSet};

use cloudpillar_crds::{DeviceAssignment, DeviceRolloutPhase as Phase, RolloutStatus};

use super::plan::{AssignmentWrite, Candidate, Facts, Plan};
use super::summary;

/// The status of an ended Rollout after `writes`: the record it ended with, changed only by
/// later results of the devices it still holds (its other devices may have moved on to
/// later Rollouts, which replaced their records).
pub fn carried<'a>(
    facts: &Facts<'_>,
    candidates: &[Candidate<'_>],
    writes: impl IntoIterator<Item = &'a AssignmentWrite>,
) -> RolloutStatus {
    let before: BTreeMap<&str, Phase> = candidates
        .iter()
        .filter_map(|c| Some((c.name, c.mine?.phase)))
        .collect();
    let changes: Vec<(&str, Phase, &DeviceAssignment)> = writes
        .into_iter()
        .filter_map(|w| {
            Some((
                w.device.as_str(),
                *before.get(w.device.as_str())?,
                &w.assignment,
            ))
        })
        .collect();
    summary::carry(facts, &changes)
}

/// The status to write once the plan's writes are done, `unwritten` naming the devices
/// whose records could not be written; `None`: write none this time.
///
/// An ongoing Rollout's status is derived afresh from the records at every step, so a plan
/// whose writes partly failed is corrected by the next one. An ended Rollout's counts are
/// carried forward instead, so they take only the writes that landed (the others are planned
/// again); and a step that ends a Rollout is recorded only once every record it counts is
/// written.
pub fn settle(
    facts: &Facts<'_>,
    candidates: &[Candidate<'_>],
    plan: &Plan,
    unwritten: &HashSet<String>,
) -> Option<RolloutStatus> {
    if unwritten.is_empty() {
        return Some(plan.status.clone());
    }
    if facts.previous.phase.is_final() {
        let written = plan
            .writes
            .iter()
            .filter(|w| !unwritten.contains(&w.device));
        return Some(carried(facts, candidates, written));
    }
    (!plan.status.phase.is_final()).then(|| plan.status.clone())
}
