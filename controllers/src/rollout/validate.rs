//! Spec problems the API server's rules cannot see, such as a time zone missing from the IANA
//! database: the Rollout shows them in its status (phase Invalid, Progressing False with reason
//! InvalidSpec) and in a Warning Event, instead of only in the operator's log.

use cloudpillar_crds::conditions::ROLLOUT_PROGRESSING;
use cloudpillar_crds::{Rollout, RolloutPhase, RolloutSpec};
use kube::Resource;
use kube::api::Api;
use kube::core::Selector;
use kube::runtime::controller::Action;

use super::{execute, window};
use crate::error::Result;
use crate::runtime::Context;
use crate::status::{condition, merge_conditions};

/// Condition reason and Event reason of a spec the operator cannot use.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// What in `spec` the operator cannot use, if anything.
pub fn problem(spec: &RolloutSpec, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
    if let Err(error) = Selector::try_from(spec.selector.clone()) {
        return Some(format!("selector: {error}"));
    }
    for (index, wave) in spec.strategy.waves.iter().enumerate() {
        if let Some(Err(error)) = wave.selector.clone().map(Selector::try_from) {
            return Some(format!("wave {} selector: {error}", index + 1));
        }
    }
    let window = spec.strategy.maintenance_window.as_ref()?;
    window::evaluate(window, now).err().map(|e| e.to_string())
}

/// Records `problem` in the Rollout's status and, when it is news, in a Warning Event. Nothing
/// else happens until the spec changes; devices already running finish.
pub async fn refuse(
    api: &Api<Rollout>,
    rollout: &Rollout,
    ctx: &Context,
    problem: String,
) -> Result<Action> {
    let previous = rollout.status.clone().unwrap_or_default();
    let generation = rollout.meta().generation;
    let mut status = previous.clone();
    status.observed_generation = generation;
    status.phase = RolloutPhase::Invalid;
    let wanted = condition(
        ROLLOUT_PROGRESSING,
        false,
        INVALID_SPEC,
        problem.clone(),
        generation,
    );
    status.conditions = merge_conditions(&previous.conditions, vec![wanted]);

    let shown = cloudpillar_crds::conditions::find(&previous.conditions, ROLLOUT_PROGRESSING)
        .is_some_and(|c| c.reason == INVALID_SPEC && c.message == problem);
    let news = previous.phase != RolloutPhase::Invalid || !shown;
    execute::write_status(api, rollout, &previous, &status).await?;
    if news {
        tracing::warn!(%problem, "rollout spec cannot be used");
        ctx.publish(rollout, true, INVALID_SPEC, problem).await;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cloudpillar_crds::MaintenanceWindow;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    use super::*;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc
            .with_ymd_and_hms(2026, 12, 5, 3, 0, 0)
            .single()
            .expect("valid date")
    }

    #[test]
    fn an_unknown_time_zone_is_named() {
        let mut spec = RolloutSpec::for_label("fw", "site", "lab");
        spec.strategy.maintenance_window = Some(MaintenanceWindow {
            schedule: "0 2 * * *".into(),
            duration: std::time::Duration::from_secs(7200).into(),
            time_zone: "Mars/Olympus".into(),
        });
        let problem = problem(&spec, now()).unwrap_or_default();
        assert!(problem.contains("\"Mars/Olympus\" is unknown"), "{problem}");
    }

    #[test]
    fn an_unknown_operator_in_a_wave_selector_is_named() {
        let mut spec = RolloutSpec::for_label("fw", "site", "lab");
        let mut canary = cloudpillar_crds::Wave::count(1);
        canary.selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "ring".into(),
                operator: "Near".into(),
                values: None,
            }]),
            match_labels: None,
        });
        spec.strategy.waves = vec![canary, cloudpillar_crds::Wave::percent(100)];
        let problem = problem(&spec, now()).unwrap_or_default();
        assert!(problem.starts_with("wave 1 selector: "), "{problem}");
    }

    #[test]
    fn a_usable_spec_has_no_problem() {
        assert_eq!(
            problem(&RolloutSpec::for_label("fw", "site", "lab"), now()),
            None
        );
    }
}
