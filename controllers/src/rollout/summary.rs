//! The Rollout status a plan step produces: phase, conditions, counts, waves, failures.

use std::collections::BTreeMap;

use cloudpillar_crds::conditions::{ROLLOUT_COMPLETE, ROLLOUT_PAUSED, ROLLOUT_PROGRESSING};
use cloudpillar_crds::rollout::MAX_FAILED_DEVICES;
use cloudpillar_crds::{
    Condition, DeviceAssignment, DeviceCounts, DeviceRolloutPhase as Phase, FailedDevice,
    RolloutPhase, RolloutStatus, WaveStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::Selector;

use super::plan::{Announcement, Facts};
use crate::status::{condition, merge_conditions};

/// Most device names a status message lists.
const NAMES_SHOWN: usize = 5;

/// What keeps new devices from starting, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Devices may start.
    Open,
    /// The rollout is over.
    Final(RolloutPhase),
    /// Failures crossed the threshold with action Pause.
    FailureThreshold,
    /// The Recipe is not Valid and Signed, or changed under the rollout.
    RecipeNotReady,
    /// `spec.paused` is set.
    Requested,
    /// Waiting for `spec.approvedWave` to reach this wave.
    WaitingForApproval(u32),
    /// A timed pause before this wave.
    WavePause(u32),
    /// Outside the maintenance window.
    OutsideWindow,
    /// Devices wait for other Rollouts (see [`Summary::waiting`]) and nothing else can run.
    RecipeBusy,
    /// The selector has never matched a Device.
    NoDevices,
}

/// Counts by phase of claimed devices, plus `unclaimed` pending ones.
pub fn counts(members: &BTreeMap<&str, DeviceAssignment>, unclaimed: usize) -> DeviceCounts {
    let mut counts: DeviceCounts = members.values().map(|a| a.phase).collect();
    let pending = u32::try_from(unclaimed).unwrap_or(u32::MAX);
    counts.total += pending;
    counts.pending += pending;
    counts
}

/// When each wave finished, as recorded in status.
pub fn completion_times(status: &RolloutStatus) -> BTreeMap<u32, Timestamp> {
    status
        .waves
        .iter()
        .filter_map(|w| w.completion_time.as_ref().map(|t| (w.number, t.0)))
        .collect()
}

/// Inputs of the status.
pub struct Summary<'a> {
    /// Claimed devices by name.
    pub members: &'a BTreeMap<&'a str, DeviceAssignment>,
    /// Counts over all devices.
    pub counts: DeviceCounts,
    /// Cumulative wave targets.
    pub targets: &'a [u32],
    /// Current wave.
    pub wave: u32,
    /// What stops new starts.
    pub gate: Gate,
    /// Completion time of each finished wave.
    pub completed: BTreeMap<u32, Timestamp>,
    /// Devices that wait for another Rollout, with the name of that Rollout.
    pub waiting: &'a [(&'a str, &'a str)],
}

impl Summary<'_> {
    /// The new status; pushes Events for changes of phase.
    pub fn status(&self, facts: &Facts<'_>, events: &mut Vec<Announcement>) -> RolloutStatus {
        let previous = facts.previous;
        let generation = facts.generation;
        let started = self.members.values().any(|a| a.phase != Phase::Deferred);
        let (phase, progressing, paused, complete) = self.conditions(facts, started);

        let mut status = RolloutStatus {
            observed_generation: generation,
            phase,
            recipe_id: previous
                .recipe_id
                .clone()
                .or_else(|| self.members.values().next().map(|a| a.recipe_id.clone())),
            current_wave: (!self.members.is_empty()).then_some(self.wave),
            counts: self.counts.clone(),
            waves: self.waves(facts),
            failed_devices: self.failed_devices(),
            start_time: previous.start_time.clone().or_else(|| {
                self.members
                    .values()
                    .filter_map(|a| a.assigned_time.clone())
                    .min_by_key(|t| t.0)
            }),
            completion_time: previous.completion_time.clone(),
            conditions: Vec::new(),
        };
        if phase.is_final() && status.completion_time.is_none() {
            status.completion_time = Some(Time(facts.now));
        }
        status.conditions = conditions(facts, [&progressing, &paused, &complete]);

        if phase != previous.phase
            || Some(paused.1) != reason_of(previous, ROLLOUT_PAUSED)
            || Some(progressing.1) != reason_of(previous, ROLLOUT_PROGRESSING)
        {
            let warning = matches!(phase, RolloutPhase::Failed | RolloutPhase::Aborted)
                || matches!(self.gate, Gate::FailureThreshold | Gate::NoDevices);
            let (reason, note) = match phase {
                RolloutPhase::Paused => (paused.1, paused.2.clone()),
                RolloutPhase::Aborted | RolloutPhase::Failed | RolloutPhase::Succeeded => {
                    (complete.1, complete.2.clone())
                }
                _ => (progressing.1, progressing.2.clone()),
            };
            events.push(Announcement {
                warning,
                reason,
                note,
            });
        }
        status
    }

    /// Phase and the (holds, reason, message) of Progressing, Paused and Complete.
    #[allow(clippy::type_complexity)] // three condition triples, named by the caller
    fn conditions(
        &self,
        facts: &Facts<'_>,
        started: bool,
    ) -> (
        RolloutPhase,
        (bool, &'static str, String),
        (bool, &'static str, String),
        (bool, &'static str, String),
    ) {
        let mut tally = tally(&self.counts);
        if let Some(waiting) = self.waiting_note() {
            tally.push_str(&format!("; {waiting}"));
        }
        let recipe_problem = facts
            .recipe_problem
            .map(str::to_owned)
            .or_else(|| {
                let (before, now) = (facts.previous.recipe_id.as_deref(), facts.recipe_id);
                before.zip(now).filter(|(a, b)| a != b).map(|(a, b)| {
                    format!(
                        "Recipe {} changed its id from {a} to {b}",
                        facts.spec.recipe_ref.name
                    )
                })
            })
            .unwrap_or_else(|| format!("Recipe {} is not ready", facts.spec.recipe_ref.name));
        let not_complete = (false, "InProgress", tally.clone());
        let not_paused = (false, "Running", String::new());
        let finished = (false, "Finished", String::new());
        let not_started = (false, "NotStarted", String::new());
        let paused = |reason: &'static str, message: String| {
            (
                RolloutPhase::Paused,
                (false, "Paused", tally.clone()),
                (true, reason, message),
                not_complete.clone(),
            )
        };
        match self.gate {
            Gate::Final(RolloutPhase::Succeeded) => (
                RolloutPhase::Succeeded,
                (false, "Finished", tally.clone()),
                finished,
                (true, "Succeeded", tally.clone()),
            ),
            Gate::Final(RolloutPhase::Failed) => (
                RolloutPhase::Failed,
                (false, "Finished", tally.clone()),
                finished,
                (true, "Failed", tally.clone()),
            ),
            Gate::Final(_) => (
                RolloutPhase::Aborted,
                (false, "Aborted", tally.clone()),
                finished,
                (
                    true,
                    "FailureThreshold",
                    format!("aborted: failure threshold crossed; {tally}"),
                ),
            ),
            Gate::FailureThreshold => paused(
                "FailureThreshold",
                format!(
                    "failure threshold crossed ({} failed); raise spec.strategy.failureThreshold to go on",
                    self.counts.failed
                ),
            ),
            Gate::Requested => paused("Requested", "spec.paused is true".into()),
            Gate::WaitingForApproval(w) => paused(
                "WaitingForApproval",
                format!("wave {w} starts once spec.approvedWave is {w} or more"),
            ),
            Gate::WavePause(w) => paused("WavePause", format!("timed pause before wave {w}")),
            Gate::OutsideWindow => paused(
                "OutsideMaintenanceWindow",
                match facts.window_opens {
                    Some(at) => {
                        format!("no device starts until the maintenance window opens at {at:.0}")
                    }
                    None => "no device starts until the maintenance window opens".into(),
                },
            ),
            Gate::RecipeBusy => paused("RecipeBusy", self.waiting_note().unwrap_or_default()),
            Gate::RecipeNotReady if !started => (
                RolloutPhase::Pending,
                (false, "RecipeNotReady", recipe_problem),
                not_started,
                not_complete,
            ),
            Gate::RecipeNotReady => paused("RecipeNotReady", recipe_problem),
            Gate::NoDevices => (
                RolloutPhase::Pending,
                (false, "NoDevicesSelected", no_devices(facts)),
                not_started,
                not_complete,
            ),
            Gate::Open => (
                RolloutPhase::Progressing,
                (true, "WaveInProgress", tally.clone()),
                not_paused,
                not_complete,
            ),
        }
    }

    /// `dev-1, dev-2 wait for Rollout a to finish (one recipe at a time)`, at most
    /// [`NAMES_SHOWN`] device names and every holding Rollout.
    fn waiting_note(&self) -> Option<String> {
        if self.waiting.is_empty() {
            return None;
        }
        let mut holders: Vec<&str> = self.waiting.iter().map(|(_, holder)| *holder).collect();
        holders.sort_unstable();
        holders.dedup();
        let mut devices: Vec<&str> = self.waiting.iter().map(|(device, _)| *device).collect();
        let more = devices.len().saturating_sub(NAMES_SHOWN);
        devices.truncate(NAMES_SHOWN);
        let mut names = devices.join(", ");
        if more > 0 {
            names.push_str(&format!(" and {more} more"));
        }
        let (verb, noun) = match (self.waiting.len(), holders.len()) {
            (1, _) => ("waits", "Rollout"),
            (_, 1) => ("wait", "Rollout"),
            _ => ("wait", "Rollouts"),
        };
        Some(format!(
            "{names} {verb} for {noun} {} to finish (a device runs one recipe at a time)",
            holders.join(", ")
        ))
    }

    fn waves(&self, facts: &Facts<'_>) -> Vec<WaveStatus> {
        let previous = facts.previous;
        let known: BTreeMap<u32, &WaveStatus> =
            previous.waves.iter().map(|w| (w.number, w)).collect();
        let mut waves = Vec::new();
        let mut before = 0;
        for number in 1..=self.wave.min(self.targets.len() as u32) {
            let target = self
                .targets
                .get(number as usize - 1)
                .copied()
                .unwrap_or(before);
            let own: Vec<&DeviceAssignment> =
                self.members.values().filter(|a| a.wave == number).collect();
            let old = known.get(&number);
            let first_start = own
                .iter()
                .filter_map(|a| a.assigned_time.clone())
                .min_by_key(|t| t.0);
            let spec = facts.spec.strategy.waves.get(number as usize - 1);
            let pause = spec
                .and_then(|w| w.pause.as_ref())
                .and_then(|p| p.duration.as_ref());
            let completion = self.completed.get(&number).copied();
            waves.push(WaveStatus {
                number,
                name: spec.and_then(|w| w.name.clone()),
                size: target - before,
                counts: own.iter().map(|a| a.phase).collect(),
                start_time: old.and_then(|w| w.start_time.clone()).or(first_start),
                completion_time: completion.map(Time),
                resume_time: completion
                    .zip(pause)
                    .map(|(done, wait)| Time(done + std::time::Duration::from(*wait))),
            });
            before = target;
        }
        waves
    }

    fn failed_devices(&self) -> Vec<FailedDevice> {
        let failed = self
            .members
            .iter()
            .filter(|(_, a)| a.phase == Phase::Failed)
            .map(|(name, a)| failed_entry(name, a))
            .collect();
        newest_failures(failed)
    }
}

/// `Progressing`, `Paused` and `Complete` from their (holds, reason, message), merged into
/// the previous ones.
fn conditions(facts: &Facts<'_>, wanted: [&(bool, &str, String); 3]) -> Vec<Condition> {
    let wanted = [ROLLOUT_PROGRESSING, ROLLOUT_PAUSED, ROLLOUT_COMPLETE]
        .into_iter()
        .zip(wanted)
        .map(|(type_, (holds, reason, message))| {
            condition(type_, *holds, reason, message.clone(), facts.generation)
        })
        .collect();
    merge_conditions(&facts.previous.conditions, wanted)
}

/// The entry of `status.failedDevices` for a failed device.
fn failed_entry(name: &str, assignment: &DeviceAssignment) -> FailedDevice {
    let reason = assignment.reason.as_deref();
    FailedDevice {
        name: name.to_owned(),
        wave: assignment.wave,
        reason: reason
            .and_then(|r| r.split([' ', ':', ';']).next())
            .unwrap_or("Failed")
            .to_owned(),
        message: assignment.reason.clone(),
        action_path: reason
            .filter(|r| r.starts_with("StepFailed at "))
            .and_then(|r| r.split_once(" at "))
            // `StepFailed at <path>: <device's text>`; paths hold no ": ".
            .and_then(|(_, rest)| rest.split(": ").next())
            .map(str::to_owned),
        time: assignment.phase_time.clone(),
    }
}

/// The most recent failures first, at most [`MAX_FAILED_DEVICES`].
fn newest_failures(mut failed: Vec<FailedDevice>) -> Vec<FailedDevice> {
    failed.sort_by(|a, b| {
        b.time
            .as_ref()
            .map(|t| t.0)
            .cmp(&a.time.as_ref().map(|t| t.0))
    });
    failed.truncate(MAX_FAILED_DEVICES);
    failed
}

/// The status an ended Rollout ended with, with `changes` (device, phase before, record
/// now) of the devices it still holds applied to its counts, wave counts, failures and the
/// messages of its conditions. Its phase stays.
pub fn carry(facts: &Facts<'_>, changes: &[(&str, Phase, &DeviceAssignment)]) -> RolloutStatus {
    let ended = facts.previous;
    let mut status = ended.clone();
    status.observed_generation = facts.generation;
    for (name, before, record) in changes {
        status.counts.remove(*before);
        status.counts.add(record.phase);
        if let Some(wave) = status.waves.iter_mut().find(|w| w.number == record.wave) {
            wave.counts.remove(*before);
            wave.counts.add(record.phase);
        }
        status.failed_devices.retain(|f| f.name != *name);
        if record.phase == Phase::Failed {
            status.failed_devices.push(failed_entry(name, record));
        }
    }
    status.failed_devices = newest_failures(status.failed_devices);

    let members = BTreeMap::new();
    let summary = Summary {
        members: &members,
        counts: status.counts.clone(),
        targets: &[],
        wave: ended.current_wave.unwrap_or(1),
        gate: Gate::Final(ended.phase),
        completed: BTreeMap::new(),
        waiting: &[],
    };
    let (_, progressing, paused, complete) = summary.conditions(facts, true);
    status.conditions = conditions(facts, [&progressing, &paused, &complete]);
    status
}

/// `2 of 9 devices succeeded, 1 failed, 3 running, 1 not started yet, 1 deferred, 1 pending`;
/// devices that have not started the recipe, unreachable and cancelled ones only when there
/// are some.
fn tally(c: &DeviceCounts) -> String {
    let mut parts = vec![
        format!("{} of {} devices succeeded", c.succeeded, c.total),
        format!("{} failed", c.failed),
        format!("{} running", c.in_progress),
    ];
    for (count, what) in [
        (c.assigned, "not started yet"),
        (c.unreachable, "unreachable"),
        (c.cancelled, "cancelled"),
    ] {
        if count > 0 {
            parts.push(format!("{count} {what}"));
        }
    }
    parts.push(format!("{} deferred, {} pending", c.deferred, c.pending));
    parts.join(", ")
}

/// The reason of the condition `type_` in `status`, whatever its status.
fn reason_of<'a>(status: &'a RolloutStatus, type_: &str) -> Option<&'a str> {
    cloudpillar_crds::conditions::find(&status.conditions, type_).map(|c| c.reason.as_str())
}

/// `no Device in this namespace matches the selector fleet=rev; ...`.
fn no_devices(facts: &Facts<'_>) -> String {
    let selector = Selector::try_from(facts.spec.selector.clone())
        .map_or_else(|e| format!("({e})"), |s| s.to_string());
    format!(
        "no Device in this namespace matches the selector {selector}; \
         the Rollout starts when one does"
    )
}
