//! Wave sizes, failure threshold and per-device phases (pure arithmetic, no I/O).

use std::time::Duration;

use cloudpillar_crds::{
    DeviceAssignment, DeviceCounts, DeviceRecipeStatus, DeviceRolloutPhase, FailureThreshold, Wave,
};
use k8s_openapi::jiff::Timestamp;

use super::reasons;

/// Cumulative device targets: entry `i` is how many devices waves `1..=i+1` take together.
///
/// A wave takes `count` devices or `percent` of `total` rounded up; the last wave takes every
/// device left, so the rollout always reaches all of them. Targets never exceed `total`.
pub fn cumulative_targets(waves: &[Wave], total: u32) -> Vec<u32> {
    let mut running: u32 = 0;
    let last = waves.len().saturating_sub(1);
    waves
        .iter()
        .enumerate()
        .map(|(index, wave)| {
            let size = match (wave.count, wave.percent) {
                (Some(count), _) => count,
                (None, Some(percent)) => {
                    (u64::from(total) * u64::from(percent)).div_ceil(100) as u32
                }
                (None, None) => 0,
            };
            running = running.saturating_add(size).min(total);
            if index == last { total } else { running }
        })
        .collect()
}

/// Whether failures crossed the threshold.
///
/// `count`: more than `count` devices failed. `percent`: failed devices are more than
/// `percent` of the devices that received the recipe so far. Unreachable devices are not
/// failed; nothing counts before the first device started.
pub fn threshold_crossed(threshold: &FailureThreshold, counts: &DeviceCounts) -> bool {
    let failed = u64::from(counts.failed);
    if let Some(count) = threshold.count {
        return failed > u64::from(count);
    }
    let started = u64::from(counts.total - counts.pending - counts.deferred);
    match threshold.percent {
        Some(percent) if started > 0 => failed * 100 > u64::from(percent) * started,
        _ => false,
    }
}

/// What the rollout knows about one device right now.
#[derive(Debug, Clone, Default)]
pub struct Observed<'a> {
    /// The device's reported recipe.
    pub report: Option<&'a DeviceRecipeStatus>,
    /// Whether the device is connected and not stale.
    pub reachable: bool,
    /// Whether the device reports BUSY (clinical work; it paused its transfers).
    pub busy: bool,
}

/// The phase a claimed device is in now, with a reason when there is one.
///
/// Devices deferred before they received the recipe keep their phase (that deferral is
/// lifted by the start logic). A device is Assigned until it reports the recipe, InProgress
/// while it runs it, then Succeeded, Failed or Cancelled as it reports. One that turns BUSY
/// meanwhile is Deferred (reason Busy) until it is back, and is not timed out while busy;
/// one that is disconnected or stale is Unreachable, which is not failure; one that takes
/// longer than `timeout` from receiving the recipe has Failed with reason Timeout. A device
/// asked to cancel keeps that reason until it reports. Finished devices keep their phase,
/// unless the result of a device the operator had stopped waiting for arrives (see
/// `reasons::late`).
pub fn observe(
    assignment: &DeviceAssignment,
    device: &Observed<'_>,
    timeout: Option<Duration>,
    now: Timestamp,
) -> (DeviceRolloutPhase, Option<String>) {
    use DeviceRolloutPhase as Phase;
    let current = assignment.phase;
    let report = device
        .report
        .filter(|r| r.id.as_deref() == Some(assignment.recipe_id.as_str()));
    let result = report.and_then(result_of);
    if current.is_finished() {
        let late = result.and_then(|r| reasons::late(assignment, r));
        return late.unwrap_or((current, assignment.reason.clone()));
    }
    let deferred_before_start = current == Phase::Deferred && assignment.assigned_time.is_none();
    if deferred_before_start || current == Phase::Pending {
        return (current, assignment.reason.clone());
    }
    let Some(assigned) = assignment.assigned_time.as_ref() else {
        return (Phase::Assigned, None);
    };
    if let Some(result) = result {
        let late = reasons::cancel_pending(assignment)
            .then(|| reasons::late(assignment, result.clone()))
            .flatten();
        return late.unwrap_or(result);
    }
    let (phase, reason) = if device.busy {
        (Phase::Deferred, Some("Busy".into()))
    } else if let Some(limit) = timeout
        && now.duration_since(assigned.0).unsigned_abs() > limit
    {
        (Phase::Failed, Some(reasons::timeout(limit)))
    } else if !device.reachable {
        (Phase::Unreachable, None)
    } else if report.is_some() {
        (Phase::InProgress, None)
    } else {
        (Phase::Assigned, None)
    };
    if reasons::cancel_pending(assignment) && !phase.is_finished() {
        return (phase, assignment.reason.clone());
    }
    (phase, reason)
}

/// The finished phase a report shows, with the reason it gives; `None` while it runs.
fn result_of(report: &DeviceRecipeStatus) -> Option<(DeviceRolloutPhase, Option<String>)> {
    use DeviceRolloutPhase as Phase;
    let why = || {
        report
            .result_text
            .as_deref()
            .map(|t| format!(": {t}"))
            .unwrap_or_default()
    };
    match report.status.as_deref() {
        Some("Success") => Some((Phase::Succeeded, None)),
        Some("Failure") => {
            let path = report
                .last_faulted_path
                .as_deref()
                .or(report.action_path.as_deref());
            let at = path.map(|p| format!(" at {p}")).unwrap_or_default();
            Some((Phase::Failed, Some(format!("StepFailed{at}{}", why()))))
        }
        Some("Refused") => Some((Phase::Failed, Some(format!("Refused{}", why())))),
        Some("Cancelled") => Some((Phase::Cancelled, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid time")
    }

    fn assignment(phase: DeviceRolloutPhase, assigned: Option<i64>) -> DeviceAssignment {
        DeviceAssignment {
            rollout: "ro".into(),
            rollout_uid: "uid".into(),
            recipe: "rcp".into(),
            recipe_id: "r1".into(),
            wave: 1,
            phase,
            reason: None,
            assigned_time: assigned.map(|s| Time(at(s))),
            phase_time: None,
        }
    }

    fn report(id: &str, status: &str) -> DeviceRecipeStatus {
        DeviceRecipeStatus {
            id: Some(id.into()),
            status: Some(status.into()),
            last_faulted_path: Some("changeSpec.patch.installSteps[0]".into()),
            ..DeviceRecipeStatus::default()
        }
    }

    #[test]
    fn percent_waves_round_up_and_the_last_wave_takes_the_rest() {
        let waves = vec![Wave::percent(10), Wave::percent(30), Wave::percent(10)];
        assert_eq!(cumulative_targets(&waves, 11), vec![2, 6, 11]);
        assert_eq!(cumulative_targets(&waves, 0), vec![0, 0, 0]);
    }

    #[test]
    fn count_waves_never_exceed_the_devices_there_are() {
        let waves = vec![Wave::count(2), Wave::count(5), Wave::count(1)];
        assert_eq!(cumulative_targets(&waves, 4), vec![2, 4, 4]);
        assert_eq!(cumulative_targets(&[Wave::count(3)], 10), vec![10]);
    }

    #[test]
    fn count_threshold_is_crossed_only_above_the_count() {
        let threshold = FailureThreshold {
            count: Some(1),
            ..FailureThreshold::default()
        };
        let mut counts = DeviceCounts {
            total: 10,
            failed: 1,
            succeeded: 3,
            ..Default::default()
        };
        assert!(!threshold_crossed(&threshold, &counts));
        counts.failed = 2;
        assert!(threshold_crossed(&threshold, &counts));
        let zero = FailureThreshold {
            count: Some(0),
            ..FailureThreshold::default()
        };
        assert!(threshold_crossed(
            &zero,
            &DeviceCounts {
                total: 1,
                failed: 1,
                ..Default::default()
            }
        ));
    }

    #[test]
    fn percent_threshold_counts_only_devices_that_started() {
        let threshold = FailureThreshold {
            percent: Some(20),
            ..FailureThreshold::default()
        };
        let counts = |failed, succeeded, pending| DeviceCounts {
            total: failed + succeeded + pending,
            failed,
            succeeded,
            pending,
            ..Default::default()
        };
        assert!(
            !threshold_crossed(&threshold, &counts(1, 4, 95)),
            "1 of 5 is 20 %, not more"
        );
        assert!(
            threshold_crossed(&threshold, &counts(2, 4, 94)),
            "2 of 6 is over 20 %"
        );
        assert!(!threshold_crossed(&threshold, &counts(0, 0, 10)));
    }

    #[test]
    fn device_phase_follows_its_report_and_only_for_this_recipe() {
        let claimed = assignment(DeviceRolloutPhase::Assigned, Some(100));
        let seen = |r: Option<&DeviceRecipeStatus>, reachable| {
            observe(
                &claimed,
                &Observed {
                    report: r,
                    reachable,
                    busy: false,
                },
                None,
                at(200),
            )
            .0
        };
        assert_eq!(seen(None, true), DeviceRolloutPhase::Assigned);
        assert_eq!(
            seen(Some(&report("old", "InProgress")), true),
            DeviceRolloutPhase::Assigned
        );
        assert_eq!(
            seen(Some(&report("r1", "InProgress")), true),
            DeviceRolloutPhase::InProgress
        );
        assert_eq!(
            seen(Some(&report("r1", "InProgress")), false),
            DeviceRolloutPhase::Unreachable
        );
        assert_eq!(
            seen(Some(&report("r1", "Success")), false),
            DeviceRolloutPhase::Succeeded
        );
        assert_eq!(
            seen(Some(&report("r1", "Cancelled")), true),
            DeviceRolloutPhase::Cancelled
        );
        let (phase, reason) = observe(
            &claimed,
            &Observed {
                report: Some(&report("r1", "Failure")),
                reachable: true,
                busy: false,
            },
            None,
            at(200),
        );
        assert_eq!(phase, DeviceRolloutPhase::Failed);
        assert_eq!(
            reason.as_deref(),
            Some("StepFailed at changeSpec.patch.installSteps[0]")
        );
    }

    #[test]
    fn a_device_past_its_timeout_fails_and_a_finished_one_stays_finished() {
        let claimed = assignment(DeviceRolloutPhase::InProgress, Some(100));
        let running = report("r1", "InProgress");
        let device = Observed {
            report: Some(&running),
            reachable: false,
            busy: false,
        };
        let limit = Some(Duration::from_secs(60));
        assert_eq!(
            observe(&claimed, &device, limit, at(150)).0,
            DeviceRolloutPhase::Unreachable
        );
        let (phase, reason) = observe(&claimed, &device, limit, at(161));
        assert_eq!(
            (phase, reason.as_deref()),
            (
                DeviceRolloutPhase::Failed,
                Some("Timeout: no result within 1m of receiving the recipe")
            )
        );

        let done = assignment(DeviceRolloutPhase::Succeeded, Some(100));
        assert_eq!(
            observe(&done, &device, limit, at(10_000)).0,
            DeviceRolloutPhase::Succeeded
        );
    }

    #[test]
    fn a_claim_whose_twin_write_is_pending_stays_assigned() {
        let claimed = assignment(DeviceRolloutPhase::Assigned, None);
        let running = report("r1", "Success");
        let device = Observed {
            report: Some(&running),
            reachable: true,
            busy: false,
        };
        assert_eq!(
            observe(&claimed, &device, None, at(1)).0,
            DeviceRolloutPhase::Assigned
        );
    }

    #[test]
    fn a_running_device_that_turns_busy_is_deferred_until_it_is_back() {
        let running = report("r1", "InProgress");
        let busy = Observed {
            report: Some(&running),
            reachable: false,
            busy: true,
        };
        let limit = Some(Duration::from_secs(60));
        let claimed = assignment(DeviceRolloutPhase::InProgress, Some(100));
        let (phase, reason) = observe(&claimed, &busy, limit, at(500));
        assert_eq!(
            (phase, reason.as_deref()),
            (DeviceRolloutPhase::Deferred, Some("Busy")),
            "busy is neither failed, timed out nor unreachable"
        );

        let mut deferred = assignment(DeviceRolloutPhase::Deferred, Some(100));
        deferred.reason = Some("Busy".into());
        assert_eq!(
            observe(&deferred, &busy, None, at(500)).0,
            DeviceRolloutPhase::Deferred
        );
        let back = Observed {
            busy: false,
            reachable: true,
            ..busy
        };
        assert_eq!(
            observe(&deferred, &back, None, at(500)).0,
            DeviceRolloutPhase::InProgress
        );
        let finished = report("r1", "Success");
        let done = Observed {
            report: Some(&finished),
            ..back
        };
        assert_eq!(
            observe(&deferred, &done, None, at(500)).0,
            DeviceRolloutPhase::Succeeded
        );
    }
}
