//! Condition types used in the status of CloudPillar resources.
//!
//! Conditions are the standard `metav1.Condition`; this module names the types each
//! resource reports and keeps the Kubernetes rule that `lastTransitionTime` moves only
//! when a condition's status flips.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// `Hub`: the operator reached the hub with the configured credentials.
pub const HUB_READY: &str = "Ready";

/// `Device`: the identity exists in the hub.
pub const DEVICE_REGISTERED: &str = "Registered";
/// `Device`: the twin's tags and desired properties match the spec.
pub const DEVICE_SYNCED: &str = "Synced";

/// `Recipe`: the recipe passed validation and may be rolled out.
pub const RECIPE_VALID: &str = "Valid";
/// `Recipe`: the canonical `changeSpec` is signed; digest and signature are in status.
pub const RECIPE_SIGNED: &str = "Signed";

/// `Rollout`: devices are being started or are running the recipe.
pub const ROLLOUT_PROGRESSING: &str = "Progressing";
/// `Rollout`: no new devices start (by request, wave pause, failure threshold or window).
pub const ROLLOUT_PAUSED: &str = "Paused";
/// `Rollout`: every selected device finished; the reason tells success from failure.
pub const ROLLOUT_COMPLETE: &str = "Complete";

/// `status` value of a condition that holds.
pub const TRUE: &str = "True";
/// `status` value of a condition that does not hold.
pub const FALSE: &str = "False";
/// `status` value of a condition that cannot be determined.
pub const UNKNOWN: &str = "Unknown";

/// Finds the condition of type `type_` in `conditions`.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of type `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// Puts `wanted` into `conditions`, replacing the condition of the same type.
///
/// When the status did not change, the existing `lastTransitionTime` is kept, as the
/// Kubernetes conventions require. Returns whether anything other than timestamps
/// changed, so that callers can skip a status write that would change nothing.
pub fn set(conditions: &mut Vec<Condition>, mut wanted: Condition) -> bool {
    let Some(current) = conditions.iter_mut().find(|c| c.type_ == wanted.type_) else {
        conditions.push(wanted);
        return true;
    };
    if current.status == wanted.status {
        wanted.last_transition_time = current.last_transition_time.clone();
    }
    let changed = *current != wanted;
    *current = wanted;
    changed
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn condition(status: &str, reason: &str, at_second: i64) -> Condition {
        Condition {
            type_: RECIPE_VALID.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::from_second(at_second).expect("valid time")),
        }
    }

    #[test]
    fn adds_a_condition_that_was_missing() {
        let mut list = Vec::new();
        assert!(set(&mut list, condition(TRUE, "Checked", 10)));
        assert!(is_true(&list, RECIPE_VALID));
    }

    #[test]
    fn keeps_transition_time_when_status_is_unchanged() {
        let mut list = vec![condition(TRUE, "Checked", 10)];
        let changed = set(&mut list, condition(TRUE, "Checked", 99));
        assert!(
            !changed,
            "an equal condition with a newer timestamp is not a change"
        );
        assert_eq!(list[0].last_transition_time.0.as_second(), 10);
    }

    #[test]
    fn moves_transition_time_when_status_flips() {
        let mut list = vec![condition(TRUE, "Checked", 10)];
        assert!(set(&mut list, condition(FALSE, "UnknownAction", 99)));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_transition_time.0.as_second(), 99);
        assert!(!is_true(&list, RECIPE_VALID));
    }

    #[test]
    fn reports_a_change_of_reason_with_the_same_status() {
        let mut list = vec![condition(FALSE, "UnknownAction", 10)];
        assert!(set(&mut list, condition(FALSE, "PathTraversal", 99)));
        assert_eq!(list[0].reason, "PathTraversal");
        assert_eq!(list[0].last_transition_time.0.as_second(), 10);
    }
}
