//! One step of a Rollout, decided from durable state only (pure; no I/O).
//!
//! Inputs are the Rollout, the devices it selects with this Rollout's record on each (the
//! current `status.assignment`, or one a later Rollout took over, which is only counted),
//! and the clock; the output is the assignment records to write, the devices whose twins
//! must receive the recipe, and the new Rollout status. Because every input is durable
//! (Device and Rollout status, written before acting), a restarted operator plans exactly
//! what the stopped one would have: no device is started twice or skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use cloudpillar_crds::{
    DeviceAssignment, DeviceRolloutPhase as Phase, FailureAction, RolloutPhase, RolloutSpec,
    RolloutStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::{Selector, SelectorExt};

use super::reasons;
use super::summary::{self, Gate};
use super::waves::{self, Observed, cumulative_targets};
use super::{abort, settle};

/// One device as the Rollout sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// Device name.
    pub name: &'a str,
    /// Whether the selector matches it now.
    pub selected: bool,
    /// This Rollout's record on the device, if it claimed it.
    pub mine: Option<&'a DeviceAssignment>,
    /// Whether `mine` was handed over to a later Rollout (it is finished and only counted).
    pub handed_over: bool,
    /// The other Rollout that still holds the device (one recipe at a time), by name.
    pub held_by: Option<&'a str>,
    /// The agent reports BUSY.
    pub busy: bool,
    /// The Device's labels, for waves with their own selector.
    pub labels: &'a BTreeMap<String, String>,
    /// Report and reachability.
    pub observed: Observed<'a>,
}

/// Everything else a step depends on.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// Rollout name.
    pub rollout: &'a str,
    /// Rollout UID.
    pub uid: &'a str,
    /// Rollout spec.
    pub spec: &'a RolloutSpec,
    /// Rollout generation.
    pub generation: Option<i64>,
    /// Current status.
    pub previous: &'a RolloutStatus,
    /// `changeSpec.id` of the Recipe when it is Valid and Signed; `None` otherwise.
    pub recipe_id: Option<&'a str>,
    /// Why the Recipe is not ready, naming it (when `recipe_id` is `None`).
    pub recipe_problem: Option<&'a str>,
    /// Whether the maintenance window is open (true without a window).
    pub window_open: bool,
    /// When a closed maintenance window opens next.
    pub window_opens: Option<Timestamp>,
    /// Now.
    pub now: Timestamp,
    /// Most devices started in one step, to keep a reconcile short.
    pub max_starts: usize,
}

/// A write of a device's assignment record.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignmentWrite {
    /// Device name.
    pub device: String,
    /// The record to write.
    pub assignment: DeviceAssignment,
    /// Whether this claims a device the Rollout did not hold.
    pub claim: bool,
    /// Whether the write carries the Device's resourceVersion, so that it fails when the
    /// Device changed meanwhile: claims, and rewrites of finished records (another Rollout
    /// may be taking the device).
    pub guarded: bool,
    /// Whether the twin must hold a cancel request for the recipe before the record is
    /// written (the device timed out, or its Rollout was aborted).
    pub cancel: bool,
}

impl AssignmentWrite {
    /// An update of a record the Rollout holds, from `before` to `record`.
    pub(super) fn update(
        device: &str,
        before: &DeviceAssignment,
        record: DeviceAssignment,
    ) -> Self {
        Self {
            device: device.to_owned(),
            guarded: before.phase.is_finished(),
            cancel: false,
            claim: false,
            assignment: record,
        }
    }
}

/// A Kubernetes Event to publish on the Rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Warning rather than Normal.
    pub warning: bool,
    /// Reason, PascalCase.
    pub reason: &'static str,
    /// Text for people.
    pub note: String,
}

/// What one step decided.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Assignment records to write, claims first.
    pub writes: Vec<AssignmentWrite>,
    /// Devices whose twin must receive the recipe, then get `assignedTime`.
    pub starts: Vec<String>,
    /// The new status.
    pub status: RolloutStatus,
    /// Events to publish.
    pub events: Vec<Announcement>,
    /// When a timed pause ends or a device times out, if sooner than the resync.
    pub wake_at: Option<Timestamp>,
}

/// Plans one step.
pub fn plan(facts: &Facts<'_>, candidates: &[Candidate<'_>]) -> Plan {
    let now_time = Time(facts.now);
    let timeout = facts
        .spec
        .strategy
        .device_timeout
        .as_ref()
        .map(|d| Duration::from(*d));
    let mut plan = Plan::default();
    let by_name: BTreeMap<&str, &Candidate<'_>> = candidates.iter().map(|c| (c.name, c)).collect();

    // Observe: move each claimed device to the phase its report shows.
    let mut members: BTreeMap<&str, DeviceAssignment> = BTreeMap::new();
    for candidate in candidates {
        let Some(mine) = candidate.mine else { continue };
        if candidate.handed_over {
            members.insert(candidate.name, mine.clone());
            continue;
        }
        let (phase, reason) = waves::observe(mine, &candidate.observed, timeout, facts.now);
        let mut record = mine.clone();
        if phase != mine.phase || reason != mine.reason {
            record.phase = phase;
            record.reason = reason;
            record.phase_time = Some(now_time.clone());
            let mut write = AssignmentWrite::update(candidate.name, mine, record.clone());
            // A device that timed out must not start the recipe later, nor go on with it.
            write.cancel = !mine.phase.is_finished()
                && record
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with(reasons::TIMEOUT));
            plan.writes.push(write);
        }
        if record.phase == Phase::Assigned && record.assigned_time.is_none() {
            plan.starts.push(candidate.name.to_owned());
        }
        members.insert(candidate.name, record);
    }
    let unclaimed: Vec<&Candidate<'_>> = candidates
        .iter()
        .filter(|c| c.selected && c.mine.is_none())
        .collect();
    let total = u32::try_from(members.len() + unclaimed.len()).unwrap_or(u32::MAX);
    let targets = cumulative_targets(&facts.spec.strategy.waves, total);
    let wave_selectors: Vec<Option<Option<Selector>>> = facts
        .spec
        .strategy
        .waves
        .iter()
        .map(|w| w.selector.clone().map(|s| Selector::try_from(s).ok()))
        .collect();
    // Whether a device may join wave `wave` (1-based): waves with a selector take only the
    // devices it matches, and an unusable selector takes none rather than all.
    let joins = |wave: u32, candidate: &Candidate<'_>| match wave_selectors
        .get((wave as usize).saturating_sub(1))
    {
        Some(Some(Some(selector))) => selector.matches(candidate.labels),
        Some(Some(None)) => false,
        _ => true,
    };

    // Gate: what stops new devices from starting, in order of precedence.
    let mut counts = summary::counts(&members, unclaimed.len());
    let crossed = facts
        .spec
        .strategy
        .failure_threshold
        .as_ref()
        .filter(|t| waves::threshold_crossed(t, &counts));
    let recipe_changed = facts
        .previous
        .recipe_id
        .as_deref()
        .zip(facts.recipe_id)
        .is_some_and(|(a, b)| a != b);
    let mut gate = if facts.previous.phase.is_final() {
        Gate::Final(facts.previous.phase)
    } else if crossed.is_some_and(|t| t.action == FailureAction::Abort) {
        Gate::Final(RolloutPhase::Aborted)
    } else if crossed.is_some() {
        Gate::FailureThreshold
    } else if facts.recipe_id.is_none() || recipe_changed {
        Gate::RecipeNotReady
    } else if total == 0 && facts.previous.start_time.is_none() {
        // Never selected a device: wait for one to match rather than end with 0 of 0.
        Gate::NoDevices
    } else if facts.spec.paused {
        Gate::Requested
    } else {
        Gate::Open
    };

    // Walk the waves: a wave is done when it holds its share and all its devices finished.
    let mut wave = facts.previous.current_wave.unwrap_or(1).max(1);
    let wave_count = u32::try_from(targets.len()).unwrap_or(1).max(1);
    let mut completed: BTreeMap<u32, Timestamp> = summary::completion_times(facts.previous);
    while gate == Gate::Open {
        let index = (wave - 1) as usize;
        let in_waves: Vec<&DeviceAssignment> =
            members.values().filter(|a| a.wave <= wave).collect();
        // A wave with a selector also ends when no device it could take is left.
        let exhausted = wave_selectors.get(index).is_some_and(Option::is_some)
            && !unclaimed.iter().any(|c| joins(wave, c));
        let filled = exhausted || in_waves.len() as u32 >= targets.get(index).copied().unwrap_or(0);
        if !filled || !in_waves.iter().all(|a| a.phase.is_finished()) {
            break;
        }
        let done_at = *completed.entry(wave).or_insert(facts.now);
        if wave >= wave_count {
            let outcome = if counts.failed > 0 {
                RolloutPhase::Failed
            } else {
                RolloutPhase::Succeeded
            };
            gate = Gate::Final(outcome);
            break;
        }
        let pause = facts
            .spec
            .strategy
            .waves
            .get(index)
            .and_then(|w| w.pause.as_ref());
        let approved = facts.spec.approved_wave.unwrap_or(0) > wave;
        match pause {
            Some(p) if p.until_resumed == Some(true) && !approved => {
                gate = Gate::WaitingForApproval(wave + 1);
                break;
            }
            Some(p) if p.until_resumed == Some(true) => {}
            Some(p) => {
                let wait = p
                    .duration
                    .as_ref()
                    .map_or(Duration::ZERO, |d| Duration::from(*d));
                let resume = done_at + wait;
                if facts.now < resume {
                    plan.wake_at = Some(resume);
                    gate = Gate::WavePause(wave + 1);
                    break;
                }
            }
            None => {}
        }
        wave += 1;
        plan.events.push(Announcement {
            warning: false,
            reason: "WaveStarted",
            note: format!("wave {wave} of {wave_count} started"),
        });
    }

    // Start devices: deferred ones first, then unclaimed ones into the current wave. Devices
    // another Rollout holds wait, and the status names that Rollout.
    let mut waiting: Vec<(&str, &str)> = Vec::new();
    if gate == Gate::Open {
        let limit = facts.spec.strategy.max_concurrent.unwrap_or(u32::MAX);
        let mut free = limit.saturating_sub(counts.in_flight()) as usize;
        let mut started = 0_usize;
        for (name, record) in members
            .iter_mut()
            .filter(|(_, r)| r.phase == Phase::Deferred && r.wave <= wave)
        {
            let busy = by_name.get(name).is_some_and(|c| c.busy);
            let (phase, reason) = match (busy, facts.window_open) {
                (true, _) => (Phase::Deferred, Some("Busy".to_owned())),
                (false, false) => (Phase::Deferred, Some("OutsideMaintenanceWindow".to_owned())),
                (false, true) if free > 0 && started < facts.max_starts => (Phase::Assigned, None),
                (false, true) => continue,
            };
            if phase == record.phase && reason == record.reason {
                continue;
            }
            if phase == Phase::Assigned {
                free -= 1;
                started += 1;
                plan.starts.push((*name).to_owned());
            }
            let before = record.clone();
            record.phase = phase;
            record.reason = reason;
            record.phase_time = Some(now_time.clone());
            plan.writes
                .push(AssignmentWrite::update(name, &before, record.clone()));
        }

        let index = (wave - 1) as usize;
        let held = members.values().filter(|a| a.wave <= wave).count() as u32;
        let mut room = targets
            .get(index)
            .copied()
            .unwrap_or(0)
            .saturating_sub(held);
        let mut claims = Vec::new();
        for candidate in unclaimed.iter().filter(|c| joins(wave, c)) {
            if room == 0 || started >= facts.max_starts {
                break;
            }
            if let Some(holder) = candidate.held_by {
                waiting.push((candidate.name, holder));
                continue;
            }
            let (phase, reason) = if candidate.busy {
                (Phase::Deferred, Some("Busy".to_owned()))
            } else if !facts.window_open {
                (Phase::Deferred, Some("OutsideMaintenanceWindow".to_owned()))
            } else if free > 0 {
                free -= 1;
                started += 1;
                plan.starts.push(candidate.name.to_owned());
                (Phase::Assigned, None)
            } else {
                continue;
            };
            room -= 1;
            let record = DeviceAssignment {
                rollout: facts.rollout.to_owned(),
                rollout_uid: facts.uid.to_owned(),
                recipe: facts.spec.recipe_ref.name.clone(),
                recipe_id: facts.recipe_id.unwrap_or_default().to_owned(),
                wave,
                phase,
                reason,
                assigned_time: None,
                phase_time: Some(now_time.clone()),
            };
            claims.push(AssignmentWrite {
                device: candidate.name.to_owned(),
                assignment: record.clone(),
                claim: true,
                guarded: true,
                cancel: false,
            });
            members.insert(candidate.name, record);
        }
        if !facts.window_open {
            gate = Gate::OutsideWindow;
        } else if !waiting.is_empty()
            && members.values().all(|a| !a.phase.is_in_flight())
            && claims.is_empty()
        {
            gate = Gate::RecipeBusy;
        }
        claims.extend(std::mem::take(&mut plan.writes));
        plan.writes = claims;
    }

    if gate == Gate::Final(RolloutPhase::Aborted) {
        abort::stop_devices(&mut plan, &mut members, &by_name, &now_time);
    }

    // Deadlines: the earliest device timeout among devices holding the recipe.
    if let Some(limit) = timeout {
        let deadline = members
            .values()
            .filter(|a| a.phase.is_in_flight())
            .filter_map(|a| a.assigned_time.as_ref().map(|t| t.0 + limit))
            .min();
        plan.wake_at = [plan.wake_at, deadline].into_iter().flatten().min();
    }

    let unclaimed_left = unclaimed
        .iter()
        .filter(|c| !members.contains_key(c.name))
        .count();
    counts = summary::counts(&members, unclaimed_left);
    let summary = summary::Summary {
        members: &members,
        counts,
        targets: &targets,
        wave,
        gate,
        completed,
        waiting: &waiting,
    };
    plan.status = summary.status(facts, &mut plan.events);
    if facts.previous.phase.is_final() {
        plan.status = settle::carried(facts, candidates, &plan.writes);
    }
    plan
}
