//! The recipe engine: sections, stages and steps in order, each result persisted.
//!
//! One recipe runs at a time. A delivery with a new `changeSpec.id` supersedes the running
//! one (its task is cancelled, its journal entry closed as cancelled); a delivery of an id
//! already seen never runs a finished step again (F07).

pub mod groups;
pub mod journal;
pub mod outcome;
pub mod report;
mod run;
pub mod shell;
pub mod verify;

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod groups_tests;
#[cfg(test)]
mod report_tests;
#[cfg(test)]
mod shell_tests;

use std::sync::Arc;

use cloudpillar_protocol::limits::TwinLimits;
use cloudpillar_protocol::recipe::{Plan, Step};
use cloudpillar_protocol::signing::TrustStore;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use self::journal::{Journal, RecipeSource, RecipeStatus, Run};
use self::report::LiveStep;
use crate::config::Config;
use crate::reported::Reported;
use crate::state::Device;
use crate::transfer::Transfers;
use crate::zones::Zones;

/// A recipe as delivered by the twin or the local API.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `changeSpec` value.
    pub spec: Value,
    /// Section names in the order of the delivering text.
    pub order: Vec<String>,
    /// `changeSign`, when present.
    pub sign: Option<String>,
    /// Origin.
    pub source: RecipeSource,
}

/// What [`Engine::submit`] did with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// A new run started (or a persisted one resumed).
    Started,
    /// The same id is already running.
    AlreadyRunning,
    /// The id ended before; nothing runs again.
    AlreadyEnded(RecipeStatus),
    /// Refused before anything ran: `(ResultCode, ResultText)`.
    Refused(String, String),
}

/// What the running recipe shares with the engine.
#[derive(Debug)]
pub struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) zones: Arc<Zones>,
    pub(crate) journal: Mutex<Journal>,
    pub(crate) reported: Arc<Reported>,
    pub(crate) device: Arc<Device>,
    pub(crate) transfers: Option<Arc<dyn Transfers>>,
    pub(crate) groups: groups::Groups,
    live: Mutex<Option<LiveStep>>,
    plan: Mutex<Option<Arc<Plan>>>,
    limits: TwinLimits,
}

impl Shared {
    pub(crate) async fn set_live(&self, live: Option<LiveStep>) {
        // Lock order: journal, then live. A late progress update must not revive a step
        // that already ended.
        let journal = self.journal.lock().await;
        if let Some(step) = &live {
            let ended = journal
                .current()
                .is_none_or(|r| r.status.is_final() || r.steps.contains_key(&step.path));
            if ended {
                return;
            }
        }
        *self.live.lock().await = live;
        drop(journal);
        self.publish().await;
    }

    /// Rebuilds `reported.changeSpec` from the journal and the live step.
    pub(crate) async fn publish(&self) {
        let journal = self.journal.lock().await;
        let Some(run) = journal.current() else { return };
        let plan = self.plan.lock().await.clone();
        let live = self.live.lock().await.clone();
        let doc = report::build(run, plan.as_deref(), live.as_ref(), &self.limits);
        self.reported.set("changeSpec", doc);
    }
}

/// The recipe engine.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<Shared>,
    trust: TrustStore,
    running: Mutex<Option<(String, CancellationToken)>>,
}

impl Engine {
    /// Builds the engine over an opened journal.
    pub fn new(
        config: Arc<Config>,
        zones: Arc<Zones>,
        journal: Journal,
        reported: Arc<Reported>,
        device: Arc<Device>,
        transfers: Option<Arc<dyn Transfers>>,
        trust: TrustStore,
    ) -> Self {
        let shared = Arc::new(Shared {
            groups: groups::Groups::new(
                &config.state_dir,
                std::time::Duration::from_secs(config.shell.stop_grace_secs),
            ),
            config,
            zones,
            journal: Mutex::new(journal),
            reported,
            device,
            transfers,
            live: Mutex::new(None),
            plan: Mutex::new(None),
            limits: TwinLimits::default(),
        });
        Self {
            shared,
            trust,
            running: Mutex::new(None),
        }
    }

    /// Resumes the persisted run after a restart, if it had not ended.
    pub async fn resume(&self) -> Option<Submitted> {
        let run = self.shared.journal.lock().await.current().cloned()?;
        let plan = Plan::from_value(&run.spec, Some(&run.order)).ok()?;
        *self.shared.plan.lock().await = Some(Arc::new(plan.clone()));
        self.shared.publish().await;
        // Periodic uploads live beyond their step: start again those that were running.
        let uploading = matches!(
            run.status,
            RecipeStatus::InProgress | RecipeStatus::Success | RecipeStatus::Failure
        );
        for planned in plan.steps().filter(|_| uploading) {
            let path = planned.path();
            let done = run
                .steps
                .get(&path)
                .is_some_and(outcome::StepOutcome::is_success);
            if let (true, Ok(Step::PeriodicUpload(step))) = (done, planned.step) {
                run::upload(&self.shared, &run.id, &path, step).await;
            }
        }
        if run.status.is_final() {
            return Some(Submitted::AlreadyEnded(run.status));
        }
        if self.spawn(plan).await {
            Some(Submitted::Started)
        } else {
            Some(Submitted::AlreadyRunning)
        }
    }

    /// Takes a delivered recipe: verify, then start, resume or ignore it.
    ///
    /// Twin recipes need a `changeSign` that verifies unless local configuration made
    /// signatures optional. Local recipes come through the authenticated loopback API and
    /// are verified only when they carry a signature.
    pub async fn submit(&self, delivery: Delivery) -> Submitted {
        let Some(id) = delivery
            .spec
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Submitted::Refused("bad_recipe".into(), "changeSpec has no id".into());
        };
        let seen = self.shared.journal.lock().await.status_of(&id);
        match seen {
            Some(status) if status.is_final() => {
                tracing::debug!(recipe = %id, ?status, "recipe already ended; not run again");
                return Submitted::AlreadyEnded(status);
            }
            _ => {}
        }
        if let Some(running) = self.running.lock().await.as_ref()
            && running.0 == id
            && !running.1.is_cancelled()
        {
            return Submitted::AlreadyRunning;
        }
        if seen.is_some() {
            return self.resume().await.unwrap_or(Submitted::AlreadyRunning);
        }

        // A new id supersedes whatever runs.
        self.stop_running("superseded by a newer recipe").await;
        let mut run = Run {
            id: id.clone(),
            source: delivery.source,
            spec: delivery.spec.clone(),
            order: delivery.order.clone(),
            steps: Default::default(),
            status: RecipeStatus::InProgress,
            reason: None,
            last_faulted_recipe: None,
            last_faulted_path: None,
        };
        let check = verify::check_change_sign(
            &self.trust,
            &delivery.spec,
            delivery.sign.as_deref(),
            self.shared.config.require_signatures && delivery.source == RecipeSource::Twin,
        )
        .and_then(|()| {
            Plan::from_value(&delivery.spec, Some(&delivery.order))
                .map_err(|e| ("bad_recipe".to_owned(), e.to_string()))
        });
        let plan = match check {
            Ok(plan) => plan,
            Err((code, text)) if delivery.source == RecipeSource::Local => {
                // The caller hears why; the recipe the twin assigned keeps running and
                // keeps its report.
                tracing::warn!(recipe = %id, %code, %text, "local recipe refused");
                return Submitted::Refused(code, text);
            }
            Err((code, text)) => {
                tracing::warn!(recipe = %id, %code, %text, "recipe refused");
                run.status = RecipeStatus::Refused;
                run.reason = Some((code.clone(), text.clone()));
                if let Err(error) = self.shared.journal.lock().await.start(run) {
                    tracing::error!(%error, "failed to journal a refused recipe");
                }
                *self.shared.plan.lock().await = None;
                self.shared.publish().await;
                return Submitted::Refused(code, text);
            }
        };
        if let Err(error) = self.shared.journal.lock().await.start(run) {
            tracing::error!(%error, "failed to journal a new recipe");
            return Submitted::Refused("io_error".into(), error.to_string());
        }
        if let Some(transfers) = &self.shared.transfers {
            transfers.stop_uploads_except(&id).await;
        }
        *self.shared.plan.lock().await = Some(Arc::new(plan.clone()));
        self.shared.publish().await;
        self.spawn(plan).await;
        Submitted::Started
    }

    /// Cancels the recipe `id` from the cloud (F22): answers what the agent reports.
    pub async fn cancel(&self, id: &str) -> Value {
        let status = self.shared.journal.lock().await.status_of(id);
        match status {
            Some(RecipeStatus::InProgress) => {
                self.stop_running("cancelled from the cloud").await;
                json!({ "id": id, "result": "cancelled" })
            }
            Some(RecipeStatus::Success) => {
                json!({ "id": id, "result": "cancel_rejected: already_succeeded" })
            }
            Some(other) => json!({ "id": id, "result": format!("cancel_rejected: {other:?}") }),
            None => json!({ "id": id, "result": "cancel_rejected: unknown_recipe" }),
        }
    }

    async fn stop_running(&self, why: &str) {
        let previous = self.running.lock().await.take();
        if let Some((old_id, token)) = previous {
            token.cancel();
            let mut journal = self.shared.journal.lock().await;
            let live = self.shared.live.lock().await.take();
            if journal
                .current()
                .is_some_and(|r| r.id == old_id && !r.status.is_final())
            {
                let finished = |path: &str| {
                    journal
                        .current()
                        .is_some_and(|r| r.steps.contains_key(path))
                };
                if let Some(live) = live.filter(|l| !finished(&l.path)) {
                    let outcome = outcome::StepOutcome::failed(outcome::codes::CANCELLED, why);
                    if let Err(error) = journal.record_step(&live.path, outcome) {
                        tracing::error!(%error, "failed to journal a cancelled step");
                    }
                }
                let reason = Some(("cancelled".to_owned(), why.to_owned()));
                if let Err(error) = journal.finish(RecipeStatus::Cancelled, reason) {
                    tracing::error!(%error, "failed to journal a cancel");
                }
            }
            drop(journal);
            self.shared.publish().await;
            self.shared.device.try_apply(crate::state::Command::Finish);
            tracing::info!(recipe = %old_id, why, "recipe stopped");
        }
    }

    /// Starts the runner unless one already runs this recipe (the startup resume and a
    /// twin delivery may race: only one of them starts it).
    async fn spawn(&self, plan: Plan) -> bool {
        let mut running = self.running.lock().await;
        if running
            .as_ref()
            .is_some_and(|(id, token)| *id == plan.id && !token.is_cancelled())
        {
            return false;
        }
        let token = CancellationToken::new();
        *running = Some((plan.id.clone(), token.clone()));
        tokio::spawn(run::run_recipe(
            Arc::clone(&self.shared),
            Arc::new(plan),
            token,
        ));
        true
    }

    /// Stops for the agent's shutdown: the running shell step's process group is stopped
    /// (SIGTERM, `shell.stop_grace_secs`, SIGKILL) and its record kept, so the next start
    /// runs the step again as after a `kill -9`; no step starts after this.
    pub async fn shut_down(&self) {
        self.shared.groups.shut_down().await;
    }

    /// Id and status of the current run.
    pub async fn current(&self) -> Option<(String, RecipeStatus)> {
        self.shared
            .journal
            .lock()
            .await
            .current()
            .map(|r| (r.id.clone(), r.status))
    }

    /// The shared parts (for the API and the link).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}
