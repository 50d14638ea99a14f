//! The reasons a device's assignment gives when the operator stops waiting for it, and the
//! outcome recorded when the device's result arrives after that (pure; no I/O).
//!
//! A device that times out is Failed at once and its twin gets a cancel request; so do the
//! unfinished devices of an aborted or deleted Rollout. A device may still finish the recipe
//! before it sees the cancel. Its report is then the truth about the device and is recorded
//! as such (a late Success is Succeeded), with a reason that says it came late. A device
//! that confirms the cancel after timing out stays Failed: it did not finish in time.

use std::time::Duration;

use cloudpillar_crds::{DeviceAssignment, DeviceRolloutPhase as Phase};

/// Reason prefix of a device that took longer than `deviceTimeout`.
pub const TIMEOUT: &str = "Timeout";

/// Reason prefix of a running device whose twin holds a cancel request.
pub const CANCEL_REQUESTED: &str = "CancelRequested";

/// Reason prefix of a device whose recipe was withdrawn before it started it.
pub const WITHDRAWN: &str = "Withdrawn";

/// Reason prefix of a result reported after the operator had stopped waiting for it.
pub const FINISHED_LATE: &str = "FinishedLate";

/// What made the operator stop a Rollout's devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The failure threshold was crossed with action Abort.
    Aborted,
    /// The Rollout was deleted.
    Deleted,
}

impl Stop {
    fn words(self) -> &'static str {
        match self {
            Self::Aborted => "the Rollout was aborted",
            Self::Deleted => "the Rollout was deleted",
        }
    }

    fn of(reason: &str) -> Option<Self> {
        [Self::Aborted, Self::Deleted]
            .into_iter()
            .find(|stop| reason.contains(stop.words()))
    }
}

/// `Timeout: no result within 6h of receiving the recipe`.
pub fn timeout(limit: Duration) -> String {
    format!(
        "{TIMEOUT}: no result within {} of receiving the recipe",
        span(limit)
    )
}

/// `CancelRequested: the Rollout was aborted`.
pub fn cancel_requested(stop: Stop) -> String {
    format!("{CANCEL_REQUESTED}: {}", stop.words())
}

/// `Withdrawn: the Rollout was aborted before the device started the recipe`.
pub fn withdrawn(stop: Stop, received: bool) -> String {
    let step = if received { "started" } else { "received" };
    format!(
        "{WITHDRAWN}: {} before the device {step} the recipe",
        stop.words()
    )
}

/// Whether the operator asked the device to cancel and waits for its answer.
pub fn cancel_pending(assignment: &DeviceAssignment) -> bool {
    reason(assignment).starts_with(CANCEL_REQUESTED)
}

/// The outcome to record when the device reports `result` (a finished phase and its reason)
/// for a recipe the operator had stopped waiting for; `None` when the assignment is not one
/// of those, or already records the result.
pub fn late(
    assignment: &DeviceAssignment,
    result: (Phase, Option<String>),
) -> Option<(Phase, Option<String>)> {
    let given = reason(assignment);
    let after = if given.starts_with(TIMEOUT) {
        "after it had timed out".to_owned()
    } else if given.starts_with(CANCEL_REQUESTED) || given.starts_with(WITHDRAWN) {
        format!("after {}", Stop::of(given)?.words())
    } else {
        return None;
    };
    let (phase, why) = result;
    let outcome = match phase {
        Phase::Succeeded => (
            Phase::Succeeded,
            format!("{FINISHED_LATE}: the device reported Success {after}"),
        ),
        Phase::Cancelled if given.starts_with(TIMEOUT) => {
            let stopped = "; the device stopped the recipe";
            let reason = match given.ends_with(stopped) {
                true => given.to_owned(),
                false => format!("{given}{stopped}"),
            };
            (Phase::Failed, reason)
        }
        Phase::Cancelled if given.starts_with(WITHDRAWN) => return None,
        Phase::Cancelled => (
            Phase::Cancelled,
            format!("Cancelled: {}", Stop::of(given)?.words()),
        ),
        _ => (
            phase,
            format!("{}; reported {after}", why.as_deref().unwrap_or("Failed")),
        ),
    };
    let unchanged = outcome.0 == assignment.phase && outcome.1 == given;
    (!unchanged).then_some((outcome.0, Some(outcome.1)))
}

fn reason(assignment: &DeviceAssignment) -> &str {
    assignment.reason.as_deref().unwrap_or_default()
}

/// A duration as people write it: `45s`, `20m`, `1h30m`, `2d`.
pub fn span(duration: Duration) -> String {
    let mut left = duration.as_secs();
    if left == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let mut text = String::new();
    for (unit, seconds) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if left >= seconds {
            text.push_str(&format!("{}{unit}", left / seconds));
            left %= seconds;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phase: Phase, reason: &str) -> DeviceAssignment {
        DeviceAssignment {
            rollout: "ro".into(),
            rollout_uid: "uid".into(),
            recipe: "fw".into(),
            recipe_id: "r1".into(),
            wave: 1,
            phase,
            reason: Some(reason.into()),
            assigned_time: None,
            phase_time: None,
        }
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(span(Duration::from_secs(20)), "20s");
        assert_eq!(span(Duration::from_secs(5_400)), "1h30m");
        assert_eq!(span(Duration::from_secs(6 * 3_600)), "6h");
        assert_eq!(span(Duration::from_secs(172_800 + 61)), "2d1m1s");
        assert_eq!(span(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn a_late_success_after_a_timeout_is_recorded_as_it_is_and_says_so() {
        let timed_out = record(Phase::Failed, &timeout(Duration::from_secs(20)));
        let (phase, reason) = late(&timed_out, (Phase::Succeeded, None)).expect("changes");
        assert_eq!(phase, Phase::Succeeded);
        assert_eq!(
            reason.as_deref(),
            Some("FinishedLate: the device reported Success after it had timed out")
        );
        let recorded = record(phase, reason.as_deref().unwrap_or_default());
        assert_eq!(late(&recorded, (Phase::Succeeded, None)), None, "once");
    }

    #[test]
    fn a_cancel_confirmed_after_a_timeout_stays_a_failure() {
        let timed_out = record(Phase::Failed, &timeout(Duration::from_secs(20)));
        let (phase, reason) = late(&timed_out, (Phase::Cancelled, None)).expect("changes");
        assert_eq!(phase, Phase::Failed);
        assert_eq!(
            reason.as_deref(),
            Some(
                "Timeout: no result within 20s of receiving the recipe; \
                 the device stopped the recipe"
            )
        );
        let recorded = record(phase, reason.as_deref().unwrap_or_default());
        assert_eq!(late(&recorded, (Phase::Cancelled, None)), None, "once");
    }

    #[test]
    fn results_after_an_abort_name_it() {
        let asked = record(Phase::InProgress, &cancel_requested(Stop::Aborted));
        assert_eq!(
            late(&asked, (Phase::Cancelled, None)),
            Some((
                Phase::Cancelled,
                Some("Cancelled: the Rollout was aborted".into())
            ))
        );
        let failed = late(
            &asked,
            (Phase::Failed, Some("StepFailed at p: disk full".into())),
        );
        assert_eq!(
            failed,
            Some((
                Phase::Failed,
                Some("StepFailed at p: disk full; reported after the Rollout was aborted".into())
            ))
        );
        let withdrawn = record(Phase::Cancelled, &withdrawn(Stop::Aborted, true));
        assert_eq!(late(&withdrawn, (Phase::Cancelled, None)), None);
        assert_eq!(
            late(&withdrawn, (Phase::Succeeded, None)).and_then(|(_, r)| r),
            Some("FinishedLate: the device reported Success after the Rollout was aborted".into())
        );
        assert_eq!(
            late(
                &record(Phase::Failed, "StepFailed"),
                (Phase::Succeeded, None)
            ),
            None
        );
    }
}
