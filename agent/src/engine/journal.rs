//! The recipe journal: which steps of which recipe finished, persisted before reporting.
//!
//! F07: a finished step is written here (fsync, rename) before the reported patch that
//! announces it, so a restart, a token renewal or a second delivery of the same
//! `changeSpec.id` never runs it again. Recipes that ended are remembered by id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::outcome::StepOutcome;
use crate::durable::{self, DurableError};

/// How many ended recipe ids are remembered.
const HISTORY: usize = 32;

/// Overall status of a recipe run, as reported in `changeSpec.Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipeStatus {
    /// Steps remain.
    InProgress,
    /// Every step succeeded.
    Success,
    /// A step failed; later steps did not run.
    Failure,
    /// Cancelled from the cloud or superseded.
    Cancelled,
    /// Refused before anything ran (signature, parse).
    Refused,
}

impl RecipeStatus {
    /// Whether the run is over.
    pub fn is_final(self) -> bool {
        self != Self::InProgress
    }
}

/// Where a recipe came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipeSource {
    /// `desired.changeSpec`.
    Twin,
    /// The local AddRecipe call.
    Local,
}

/// The persisted run of the current recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// `changeSpec.id`.
    pub id: String,
    /// Origin.
    pub source: RecipeSource,
    /// The `changeSpec` as received, so a restart can resume without the cloud.
    pub spec: Value,
    /// Section order of the text it came in.
    pub order: Vec<String>,
    /// Finished steps by action path.
    pub steps: BTreeMap<String, StepOutcome>,
    /// Overall status.
    pub status: RecipeStatus,
    /// Why the whole recipe was refused or cancelled.
    #[serde(default)]
    pub reason: Option<(String, String)>,
    /// Section of the step that failed.
    #[serde(default)]
    pub last_faulted_recipe: Option<String>,
    /// Path of the step that failed.
    #[serde(default)]
    pub last_faulted_path: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct JournalFile {
    current: Option<Run>,
    /// Ended recipe ids with their final status, oldest first.
    history: Vec<(String, RecipeStatus)>,
}

/// The journal in `<state_dir>/journal.json`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: JournalFile,
}

impl Journal {
    /// Opens (or starts) the journal.
    pub fn open(state_dir: &Path) -> Result<Self, DurableError> {
        let path = state_dir.join("journal.json");
        let file = durable::read_json(&path)?.unwrap_or_default();
        Ok(Self { path, file })
    }

    /// The current run, if any.
    pub fn current(&self) -> Option<&Run> {
        self.file.current.as_ref()
    }

    /// Final status of a recipe id seen before (current or history).
    pub fn status_of(&self, id: &str) -> Option<RecipeStatus> {
        if let Some(run) = self.current().filter(|r| r.id == id) {
            return Some(run.status);
        }
        self.file
            .history
            .iter()
            .rev()
            .find(|(h, _)| h == id)
            .map(|(_, s)| *s)
    }

    /// Starts `run`, moving the previous one to history.
    pub fn start(&mut self, run: Run) -> Result<(), DurableError> {
        if let Some(previous) = self.file.current.take() {
            self.remember(previous.id, previous.status);
        }
        self.file.current = Some(run);
        self.save()
    }

    /// Records a finished step of the current run.
    pub fn record_step(&mut self, path: &str, outcome: StepOutcome) -> Result<(), DurableError> {
        if let Some(run) = self.file.current.as_mut() {
            if outcome.status == super::outcome::StepStatus::Failure {
                run.last_faulted_path = Some(path.to_owned());
                run.last_faulted_recipe = path.split('.').nth(1).map(str::to_owned);
            }
            run.steps.insert(path.to_owned(), outcome);
        }
        self.save()
    }

    /// Sets the overall status (and a reason) of the current run.
    pub fn finish(
        &mut self,
        status: RecipeStatus,
        reason: Option<(String, String)>,
    ) -> Result<(), DurableError> {
        if let Some(run) = self.file.current.as_mut() {
            run.status = status;
            if reason.is_some() {
                run.reason = reason;
            }
        }
        self.save()
    }

    fn remember(&mut self, id: String, status: RecipeStatus) {
        self.file.history.retain(|(h, _)| *h != id);
        self.file.history.push((id, status));
        let excess = self.file.history.len().saturating_sub(HISTORY);
        self.file.history.drain(..excess);
    }

    fn save(&self) -> Result<(), DurableError> {
        durable::write_json(&self.path, &self.file)
    }
}
