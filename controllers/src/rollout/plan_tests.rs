//! Wave planning from durable state: concurrency, deferral, pauses, thresholds, restarts.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use cloudpillar_crds::{
    DeviceAssignment, DeviceRecipeStatus, DeviceRolloutPhase as Phase, FailureAction,
    FailureThreshold, RolloutPhase, RolloutSpec, RolloutStatus, Wave, WavePause,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;

use super::plan::{Candidate, Facts, Plan, plan};
use super::settle::settle;
use super::waves::Observed;

/// A fleet with its durable records, advanced step by step like the controller does.
struct Fleet {
    spec: RolloutSpec,
    status: RolloutStatus,
    records: BTreeMap<String, DeviceAssignment>,
    reports: BTreeMap<String, DeviceRecipeStatus>,
    busy: Vec<String>,
    elsewhere: Vec<String>,
    /// Devices a later Rollout took: their records here are kept as previous assignments.
    handed_over: Vec<String>,
    /// Devices whose record writes fail.
    lost: Vec<String>,
    names: Vec<String>,
    labels: BTreeMap<String, BTreeMap<String, String>>,
    now: i64,
    /// `changeSpec.id` of a ready Recipe, or why it is not ready.
    recipe: Result<&'static str, &'static str>,
    /// When the maintenance window opens, while it is closed.
    window_opens: Option<i64>,
}

impl Fleet {
    fn new(devices: usize, waves: Vec<Wave>) -> Self {
        let mut spec = RolloutSpec::for_label("fw", "site", "lab");
        spec.strategy.waves = waves;
        Self {
            spec,
            status: RolloutStatus::default(),
            records: BTreeMap::new(),
            reports: BTreeMap::new(),
            busy: Vec::new(),
            elsewhere: Vec::new(),
            handed_over: Vec::new(),
            lost: Vec::new(),
            names: (0..devices).map(|i| format!("dev-{i:02}")).collect(),
            labels: BTreeMap::new(),
            now: 1_000,
            recipe: Ok("r1"),
            window_opens: None,
        }
    }

    /// One reconcile: plan, then apply the plan as the executor would (twin writes succeed,
    /// record writes too except those of the devices in `lost`).
    fn step(&mut self) -> Plan {
        let now = Timestamp::from_second(self.now).expect("valid time");
        let unlabelled = BTreeMap::new();
        let candidates: Vec<Candidate<'_>> = self
            .names
            .iter()
            .map(|name| Candidate {
                name,
                selected: true,
                mine: self.records.get(name),
                handed_over: self.handed_over.contains(name),
                held_by: self.elsewhere.contains(name).then_some("fw-1-9"),
                busy: self.busy.contains(name),
                labels: self.labels.get(name).unwrap_or(&unlabelled),
                observed: Observed {
                    report: self.reports.get(name),
                    reachable: true,
                    busy: self.busy.contains(name),
                },
            })
            .collect();
        let facts = Facts {
            rollout: "ro",
            uid: "uid-1",
            spec: &self.spec,
            generation: Some(1),
            previous: &self.status,
            recipe_id: self.recipe.ok(),
            recipe_problem: self.recipe.err(),
            window_open: self.window_opens.is_none(),
            window_opens: self
                .window_opens
                .map(|t| Timestamp::from_second(t).expect("valid time")),
            now,
            max_starts: 500,
        };
        let plan = plan(&facts, &candidates);
        let unwritten: HashSet<String> = plan
            .writes
            .iter()
            .map(|w| w.device.clone())
            .filter(|d| self.lost.contains(d))
            .collect();
        let status = settle(&facts, &candidates, &plan, &unwritten);
        for write in plan
            .writes
            .iter()
            .filter(|w| !unwritten.contains(&w.device))
        {
            self.records
                .insert(write.device.clone(), write.assignment.clone());
        }
        for name in plan.starts.iter().filter(|n| !unwritten.contains(*n)) {
            if let Some(record) = self.records.get_mut(name) {
                record.assigned_time = Some(Time(now));
            }
        }
        if let Some(status) = status {
            self.status = status;
        }
        plan
    }

    /// A failure threshold of `count` devices with `action`.
    fn fail_at(&mut self, count: u32, action: FailureAction) {
        self.spec.strategy.failure_threshold = Some(FailureThreshold {
            count: Some(count),
            percent: None,
            action,
        });
    }

    fn report(&mut self, name: &str, status: &str) {
        let report = DeviceRecipeStatus {
            id: Some("r1".into()),
            status: Some(status.into()),
            ..DeviceRecipeStatus::default()
        };
        self.reports.insert(name.to_owned(), report);
    }

    fn in_phase(&self, phase: Phase) -> Vec<String> {
        self.records
            .iter()
            .filter(|(_, r)| r.phase == phase)
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn finish_running(&mut self, status: &str) {
        for name in self
            .in_phase(Phase::Assigned)
            .into_iter()
            .chain(self.in_phase(Phase::InProgress))
        {
            self.report(&name, status);
        }
    }
}

#[test]
fn never_more_devices_in_flight_than_max_concurrent_even_when_all_match_at_once() {
    let mut fleet = Fleet::new(10, vec![Wave::percent(100)]);
    fleet.spec.strategy.max_concurrent = Some(3);
    let first = fleet.step();
    assert_eq!(first.starts.len(), 3);
    assert_eq!(fleet.status.counts.in_flight(), 3);
    assert_eq!(fleet.status.counts.pending, 7);

    let again = fleet.step();
    assert!(
        again.starts.is_empty(),
        "no slot is free until a device finishes"
    );

    fleet.report("dev-00", "Success");
    let next = fleet.step();
    assert_eq!(next.starts, vec!["dev-03".to_owned()]);
    assert_eq!(fleet.status.counts.in_flight(), 3);
    assert_eq!(fleet.status.counts.succeeded, 1);
}

#[test]
fn two_waves_run_in_order_and_the_rollout_succeeds() {
    let mut fleet = Fleet::new(4, vec![Wave::percent(50), Wave::percent(50)]);
    fleet.step();
    assert_eq!(fleet.in_phase(Phase::Assigned), vec!["dev-00", "dev-01"]);
    assert_eq!(fleet.status.current_wave, Some(1));
    assert_eq!(fleet.status.phase, RolloutPhase::Progressing);

    fleet.report("dev-00", "InProgress");
    fleet.step();
    assert_eq!(fleet.in_phase(Phase::InProgress), vec!["dev-00"]);
    assert!(
        fleet.in_phase(Phase::Assigned) == vec!["dev-01"],
        "wave 2 waits for wave 1"
    );

    fleet.finish_running("Success");
    let plan = fleet.step();
    assert!(plan.events.iter().any(|e| e.reason == "WaveStarted"));
    assert_eq!(fleet.status.current_wave, Some(2));
    assert_eq!(fleet.in_phase(Phase::Assigned), vec!["dev-02", "dev-03"]);

    fleet.finish_running("Success");
    fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Succeeded);
    assert_eq!(fleet.status.counts.succeeded, 4);
    assert!(fleet.status.completion_time.is_some());
    assert_eq!(fleet.status.waves.len(), 2);
}

#[test]
fn busy_devices_are_deferred_not_failed_and_start_when_ready() {
    let mut fleet = Fleet::new(3, vec![Wave::percent(100)]);
    fleet.busy = vec!["dev-01".into()];
    fleet.step();
    assert_eq!(fleet.in_phase(Phase::Deferred), vec!["dev-01"]);
    assert_eq!(fleet.status.counts.deferred, 1);
    assert_eq!(fleet.status.counts.failed, 0);
    assert_eq!(fleet.records["dev-01"].reason.as_deref(), Some("Busy"));

    fleet.busy.clear();
    let plan = fleet.step();
    assert_eq!(plan.starts, vec!["dev-01".to_owned()]);
    assert_eq!(fleet.status.counts.deferred, 0);
}

#[test]
fn a_device_busy_mid_run_is_deferred_then_finishes_without_a_second_start() {
    let mut fleet = Fleet::new(2, vec![Wave::percent(100)]);
    fleet.step();
    fleet.report("dev-01", "InProgress");
    fleet.report("dev-00", "InProgress");
    fleet.step();
    fleet.busy = vec!["dev-01".into()];
    fleet.step();
    assert_eq!(fleet.in_phase(Phase::Deferred), vec!["dev-01"]);
    assert_eq!(fleet.status.counts.deferred, 1);
    assert_eq!(fleet.status.counts.failed, 0);

    fleet.busy.clear();
    let plan = fleet.step();
    assert!(plan.starts.is_empty(), "the recipe is not sent again");
    assert_eq!(fleet.in_phase(Phase::InProgress), vec!["dev-00", "dev-01"]);
    fleet.report("dev-01", "Success");
    fleet.report("dev-00", "Success");
    fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Succeeded);
}

#[test]
fn a_failed_device_lists_its_step_and_the_devices_own_words() {
    let mut fleet = Fleet::new(1, vec![Wave::percent(100)]);
    fleet.step();
    fleet.reports.insert(
        "dev-00".into(),
        DeviceRecipeStatus {
            id: Some("r1".into()),
            status: Some("Failure".into()),
            last_faulted_path: Some("changeSpec.patch.installSteps[0]".into()),
            result_text: Some("exited with code 3: disk full".into()),
            ..DeviceRecipeStatus::default()
        },
    );
    fleet.step();
    let failed = &fleet.status.failed_devices[0];
    assert_eq!(failed.reason, "StepFailed");
    assert_eq!(
        failed.action_path.as_deref(),
        Some("changeSpec.patch.installSteps[0]")
    );
    assert_eq!(
        failed.message.as_deref(),
        Some("StepFailed at changeSpec.patch.installSteps[0]: exited with code 3: disk full")
    );
}

fn canary_ring_first() -> Vec<Wave> {
    let mut canary = Wave::count(1);
    canary.selector = Some(LabelSelector {
        match_labels: Some([("ring".to_owned(), "canary".to_owned())].into()),
        ..LabelSelector::default()
    });
    vec![canary, Wave::percent(100)]
}

#[test]
fn a_wave_with_a_selector_takes_only_the_devices_it_matches() {
    let mut fleet = Fleet::new(4, canary_ring_first());
    fleet
        .labels
        .insert("dev-02".into(), [("ring".into(), "canary".into())].into());
    let plan = fleet.step();
    assert_eq!(
        plan.starts,
        vec!["dev-02".to_owned()],
        "the canary ring goes first"
    );
    fleet.report("dev-02", "Success");
    let plan = fleet.step();
    assert_eq!(plan.starts, vec!["dev-00", "dev-01", "dev-03"]);
    assert_eq!(fleet.status.current_wave, Some(2));
}

#[test]
fn a_wave_whose_selector_matches_nothing_left_ends_without_blocking_the_next() {
    let mut fleet = Fleet::new(3, canary_ring_first());
    let plan = fleet.step();
    assert_eq!(
        plan.starts.len(),
        3,
        "no canary device: the next wave takes everyone"
    );
    assert_eq!(fleet.status.current_wave, Some(2));
}

#[test]
fn failure_threshold_pauses_with_the_reason_and_an_event() {
    let mut fleet = Fleet::new(6, vec![Wave::count(2), Wave::count(4)]);
    fleet.fail_at(1, FailureAction::Pause);
    fleet.step();
    fleet.report("dev-00", "Failure");
    fleet.report("dev-01", "Failure");
    let plan = fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Paused);
    let paused =
        cloudpillar_crds::conditions::find(&fleet.status.conditions, "Paused").expect("Paused");
    assert_eq!(
        (paused.status.as_str(), paused.reason.as_str()),
        ("True", "FailureThreshold")
    );
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "FailureThreshold")
    );
    assert!(plan.starts.is_empty(), "no device of wave 2 starts");
    assert_eq!(fleet.status.failed_devices.len(), 2);
}

#[test]
fn failure_threshold_with_abort_ends_the_rollout() {
    let mut fleet = Fleet::new(4, vec![Wave::percent(100)]);
    fleet.spec.strategy.max_concurrent = Some(1);
    fleet.fail_at(0, FailureAction::Abort);
    fleet.step();
    fleet.report("dev-00", "Failure");
    fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Aborted);
    assert!(fleet.step().starts.is_empty());
    assert_eq!(
        fleet.status.phase,
        RolloutPhase::Aborted,
        "an aborted rollout stays aborted"
    );
}

#[test]
fn a_timed_pause_between_waves_holds_the_next_wave_until_it_ends() {
    let mut first = Wave::count(1);
    first.pause = Some(WavePause {
        duration: Some(Duration::from_secs(600).into()),
        until_resumed: None,
    });
    let mut fleet = Fleet::new(2, vec![first, Wave::count(1)]);
    fleet.step();
    fleet.report("dev-00", "Success");
    let plan = fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Paused);
    assert_eq!(
        plan.wake_at,
        Some(Timestamp::from_second(1_600).expect("time"))
    );
    assert!(plan.starts.is_empty());

    fleet.now += 599;
    assert!(fleet.step().starts.is_empty());
    fleet.now += 1;
    assert_eq!(fleet.step().starts, vec!["dev-01".to_owned()]);
    assert_eq!(fleet.status.phase, RolloutPhase::Progressing);
}

#[test]
fn a_pause_until_resumed_waits_for_the_approved_wave() {
    let mut first = Wave::count(1);
    first.pause = Some(WavePause {
        duration: None,
        until_resumed: Some(true),
    });
    let mut fleet = Fleet::new(2, vec![first, Wave::count(1)]);
    fleet.step();
    fleet.report("dev-00", "Success");
    fleet.step();
    let paused =
        cloudpillar_crds::conditions::find(&fleet.status.conditions, "Paused").expect("Paused");
    assert_eq!(paused.reason, "WaitingForApproval");
    fleet.spec.approved_wave = Some(2);
    assert_eq!(fleet.step().starts, vec!["dev-01".to_owned()]);
}

#[test]
fn a_device_held_by_another_rollout_waits_and_the_rollout_says_so() {
    let mut fleet = Fleet::new(1, vec![Wave::percent(100)]);
    fleet.elsewhere = vec!["dev-00".into()];
    let plan = fleet.step();
    assert!(plan.starts.is_empty());
    let paused =
        cloudpillar_crds::conditions::find(&fleet.status.conditions, "Paused").expect("Paused");
    assert_eq!(paused.reason, "RecipeBusy");
    assert_eq!(
        paused.message,
        "dev-00 waits for Rollout fw-1-9 to finish (a device runs one recipe at a time)"
    );
    assert_eq!(fleet.status.counts.pending, 1);

    fleet.elsewhere.clear();
    assert_eq!(fleet.step().starts, vec!["dev-00".to_owned()]);
}

#[test]
fn a_device_that_matches_later_joins_the_current_wave() {
    let mut fleet = Fleet::new(2, vec![Wave::percent(100)]);
    fleet.spec.strategy.max_concurrent = Some(5);
    fleet.step();
    fleet.names.push("dev-late".into());
    assert_eq!(fleet.step().starts, vec!["dev-late".to_owned()]);
    assert_eq!(fleet.records["dev-late"].wave, 1);
}

#[test]
fn replanning_after_a_restart_neither_repeats_nor_skips_a_device() {
    let mut fleet = Fleet::new(6, vec![Wave::percent(100)]);
    fleet.spec.strategy.max_concurrent = Some(2);
    fleet.step();
    // The operator stopped after claiming dev-02 but before writing its twin.
    fleet.report("dev-00", "Success");
    let plan = fleet.step();
    let claimed = plan
        .writes
        .iter()
        .find(|w| w.claim)
        .expect("a new claim")
        .device
        .clone();
    fleet
        .records
        .get_mut(&claimed)
        .expect("claimed")
        .assigned_time = None;

    // A fresh operator plans from the same records: it finishes that start and claims no one else.
    let resumed = fleet.step();
    assert_eq!(resumed.starts, vec![claimed]);
    assert!(resumed.writes.iter().all(|w| !w.claim));
    let mut started: Vec<String> = fleet.records.keys().cloned().collect();
    started.sort();
    assert_eq!(started, vec!["dev-00", "dev-01", "dev-02"]);
}

#[test]
fn a_failed_device_fails_the_rollout_whose_record_then_stays_as_it_ended() {
    let mut fleet = Fleet::new(2, vec![Wave::percent(100)]);
    fleet.step();
    fleet.report("dev-00", "Success");
    fleet.report("dev-01", "Failure");
    fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Failed);
    assert_eq!(fleet.status.failed_devices[0].name, "dev-01");

    // A later Rollout claims both devices: their records no longer name this one, and the
    // finished Rollout keeps the counts and failures it ended with.
    let ended = fleet.status.clone();
    fleet.records.clear();
    fleet.reports.clear();
    let plan = fleet.step();
    assert!(plan.starts.is_empty() && plan.writes.is_empty());
    assert_eq!(fleet.status, ended);
}

#[test]
fn a_waiting_device_is_named_with_its_rollout_while_others_run() {
    let mut fleet = Fleet::new(3, vec![Wave::percent(100)]);
    fleet.elsewhere = vec!["dev-02".into()];
    fleet.step();
    let progressing = cloudpillar_crds::conditions::find(&fleet.status.conditions, "Progressing")
        .expect("Progressing");
    assert!(
        progressing.message.ends_with(
            "; dev-02 waits for Rollout fw-1-9 to finish (a device runs one recipe at a time)"
        ),
        "{}",
        progressing.message
    );
}

#[test]
fn a_missing_recipe_is_named_in_the_pending_rollout() {
    let mut fleet = Fleet::new(1, vec![Wave::percent(100)]);
    fleet.recipe = Err("Recipe fw does not exist");
    fleet.step();
    let progressing = cloudpillar_crds::conditions::find(&fleet.status.conditions, "Progressing")
        .expect("Progressing");
    assert_eq!(fleet.status.phase, RolloutPhase::Pending);
    assert_eq!(progressing.reason, "RecipeNotReady");
    assert_eq!(progressing.message, "Recipe fw does not exist");
}

#[test]
fn a_device_another_rollout_took_after_it_finished_still_counts_and_is_not_claimed_again() {
    let mut fleet = Fleet::new(3, vec![Wave::count(1), Wave::percent(100)]);
    fleet.step();
    fleet.report("dev-00", "Success");
    fleet.step();
    assert_eq!(fleet.status.current_wave, Some(2));
    let before = fleet.status.counts.clone();

    // A later Rollout takes the finished canary and runs its own recipe on it.
    fleet.handed_over.push("dev-00".into());
    fleet.reports.insert(
        "dev-00".into(),
        DeviceRecipeStatus {
            id: Some("other".into()),
            status: Some("InProgress".into()),
            ..DeviceRecipeStatus::default()
        },
    );
    let plan = fleet.step();
    assert!(
        plan.writes.iter().all(|w| w.device != "dev-00") && !plan.starts.contains(&"dev-00".into()),
        "the handed-over record is neither rewritten nor claimed again"
    );
    assert_eq!(fleet.status.counts, before, "counts do not regress");

    fleet.finish_running("Success");
    fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Succeeded);
    assert_eq!(
        (fleet.status.counts.total, fleet.status.counts.succeeded),
        (3, 3)
    );
}

#[test]
fn a_timed_out_device_is_cancelled_and_its_late_success_is_recorded_as_it_is() {
    let mut fleet = Fleet::new(2, vec![Wave::percent(100)]);
    fleet.spec.strategy.device_timeout = Some(Duration::from_secs(300).into());
    fleet.step();
    fleet.report("dev-01", "Success");
    fleet.now += 301;
    let plan = fleet.step();
    let timed_out = plan
        .writes
        .iter()
        .find(|w| w.device == "dev-00")
        .expect("dev-00 written");
    assert!(timed_out.cancel, "the twin gets a cancel request first");
    assert_eq!(
        timed_out.assignment.reason.as_deref(),
        Some("Timeout: no result within 5m of receiving the recipe")
    );
    assert_eq!(fleet.status.phase, RolloutPhase::Failed);
    assert_eq!(fleet.status.failed_devices[0].reason, "Timeout");

    // The device had been running all along and reports Success after all.
    fleet.report("dev-00", "Success");
    let plan = fleet.step();
    let late = plan.writes.first().expect("late result written");
    assert!(late.guarded && !late.cancel);
    assert_eq!(fleet.records["dev-00"].phase, Phase::Succeeded);
    assert_eq!(
        fleet.records["dev-00"].reason.as_deref(),
        Some("FinishedLate: the device reported Success after it had timed out")
    );
    let counts = &fleet.status.counts;
    assert_eq!((counts.succeeded, counts.failed), (2, 0), "{counts:?}");
    assert_eq!(fleet.status.waves[0].counts.succeeded, 2);
    assert!(fleet.status.failed_devices.is_empty());
    assert_eq!(
        fleet.status.phase,
        RolloutPhase::Failed,
        "an ended Rollout keeps its phase"
    );
    assert!(fleet.step().writes.is_empty(), "recorded once");
}

#[test]
fn an_abort_cancels_every_device_that_has_not_finished() {
    let mut fleet = Fleet::new(5, vec![Wave::percent(100)]);
    fleet.spec.strategy.max_concurrent = Some(3);
    fleet.fail_at(0, FailureAction::Abort);
    fleet.busy = vec!["dev-03".into()];
    fleet.step();
    fleet.report("dev-01", "InProgress");
    fleet.report("dev-00", "Failure");
    let plan = fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Aborted);
    assert!(plan.starts.is_empty());
    let write = |name: &str| {
        plan.writes
            .iter()
            .find(|w| w.device == name)
            .cloned()
            .expect("written")
    };
    let running = write("dev-01");
    assert!(running.cancel);
    assert_eq!(running.assignment.phase, Phase::InProgress);
    assert_eq!(
        running.assignment.reason.as_deref(),
        Some("CancelRequested: the Rollout was aborted")
    );
    let unstarted = write("dev-02");
    assert!(unstarted.cancel);
    assert_eq!(
        (
            unstarted.assignment.phase,
            unstarted.assignment.reason.as_deref()
        ),
        (
            Phase::Cancelled,
            Some("Withdrawn: the Rollout was aborted before the device started the recipe")
        )
    );
    let deferred = write("dev-03");
    assert!(!deferred.cancel, "its twin never held the recipe");
    assert_eq!(deferred.assignment.phase, Phase::Cancelled);
    assert!(
        plan.writes.iter().all(|w| w.device != "dev-04"),
        "never claimed"
    );

    // The running device confirms: counted as Cancelled, the Rollout stays Aborted.
    fleet.report("dev-01", "Cancelled");
    fleet.step();
    assert_eq!(fleet.records["dev-01"].phase, Phase::Cancelled);
    let counts = &fleet.status.counts;
    assert_eq!(
        (
            counts.failed,
            counts.cancelled,
            counts.in_flight(),
            counts.pending
        ),
        (1, 3, 0, 1),
        "{counts:?}"
    );
    assert_eq!(fleet.status.phase, RolloutPhase::Aborted);
}

#[test]
fn a_rollout_that_selects_no_device_waits_for_one_instead_of_succeeding() {
    let mut fleet = Fleet::new(0, vec![Wave::percent(100)]);
    let plan = fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Pending);
    let progressing = cloudpillar_crds::conditions::find(&fleet.status.conditions, "Progressing")
        .expect("Progressing");
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", "NoDevicesSelected")
    );
    assert_eq!(
        progressing.message,
        "no Device in this namespace matches the selector site=lab; \
         the Rollout starts when one does"
    );
    assert!(
        plan.events
            .iter()
            .any(|e| e.warning && e.reason == "NoDevicesSelected")
    );
    assert!(fleet.step().events.is_empty(), "announced once");

    fleet.names.push("dev-late".into());
    assert_eq!(fleet.step().starts, vec!["dev-late".to_owned()]);
    assert_eq!(fleet.status.phase, RolloutPhase::Progressing);
}

fn condition(fleet: &Fleet, type_: &str) -> (String, String, String) {
    let found = cloudpillar_crds::conditions::find(&fleet.status.conditions, type_)
        .unwrap_or_else(|| panic!("no {type_} condition"));
    (
        found.status.clone(),
        found.reason.clone(),
        found.message.clone(),
    )
}

#[test]
fn conditions_say_what_the_rollout_is_doing_in_every_phase() {
    let mut fleet = Fleet::new(3, vec![Wave::percent(100)]);
    fleet.recipe = Err("Recipe fw does not exist");
    fleet.step();
    assert_eq!(condition(&fleet, "Paused").1, "NotStarted");

    fleet.recipe = Ok("r1");
    fleet.spec.strategy.max_concurrent = Some(2);
    fleet.step();
    fleet.report("dev-00", "InProgress");
    fleet.step();
    let (status, reason, message) = condition(&fleet, "Progressing");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "WaveInProgress")
    );
    assert_eq!(
        message,
        "0 of 3 devices succeeded, 0 failed, 1 running, 1 not started yet, 0 deferred, 1 pending"
    );
    assert_eq!(condition(&fleet, "Paused").1, "Running");

    fleet.spec.paused = true;
    fleet.step();
    let (status, reason, _) = condition(&fleet, "Progressing");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Paused"));

    fleet.spec.paused = false;
    fleet.finish_running("Success");
    fleet.step();
    fleet.finish_running("Success");
    fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Succeeded);
    assert_eq!(condition(&fleet, "Paused").1, "Finished");
    assert!(fleet.step().events.is_empty(), "nothing new to announce");
}

#[test]
fn a_closed_maintenance_window_says_when_it_opens() {
    let mut fleet = Fleet::new(1, vec![Wave::percent(100)]);
    // 2026-12-12T02:00:00Z.
    fleet.window_opens = Some(1_797_040_800);
    fleet.step();
    let (_, reason, message) = condition(&fleet, "Paused");
    assert_eq!(reason, "OutsideMaintenanceWindow");
    assert_eq!(
        message,
        "no device starts until the maintenance window opens at 2026-12-12T02:00:00Z"
    );
}

#[test]
fn an_ended_rollout_counts_only_the_changes_that_were_written() {
    let mut fleet = Fleet::new(3, vec![Wave::percent(100)]);
    fleet.fail_at(0, FailureAction::Abort);
    fleet.step();
    fleet.report("dev-01", "InProgress");
    fleet.report("dev-02", "InProgress");
    fleet.step();

    // The abort's write for dev-02 fails: the Rollout is not recorded as ended yet.
    fleet.report("dev-00", "Failure");
    fleet.lost = vec!["dev-02".into()];
    fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Progressing);
    fleet.lost.clear();
    fleet.step();
    assert_eq!(fleet.status.phase, RolloutPhase::Aborted);

    // Both confirm the cancel, but dev-02's record write fails once.
    fleet.report("dev-01", "Cancelled");
    fleet.report("dev-02", "Cancelled");
    fleet.lost = vec!["dev-02".into()];
    fleet.step();
    assert_eq!(
        (
            fleet.status.counts.cancelled,
            fleet.status.counts.in_progress
        ),
        (1, 1)
    );
    fleet.lost.clear();
    fleet.step();
    fleet.step();
    let counts = &fleet.status.counts;
    assert_eq!(
        (
            counts.total,
            counts.failed,
            counts.cancelled,
            counts.in_flight()
        ),
        (3, 1, 2, 0),
        "{counts:?}"
    );
    assert_eq!(fleet.status.waves[0].counts, *counts);
}
