//! A recipe read for running on a device.
//!
//! [`ChangeSpec`](super::ChangeSpec) refuses a document with any action it does not know,
//! which is right before signing. A device reads a delivered recipe more leniently: a step
//! it cannot run keeps its place with the reason and fails when its turn comes, so the steps
//! before it still run and the report still shows the recipe's shape. The shape itself must
//! hold: an `id`, and sections that are objects of known stages, each a list, of steps with
//! no member a step cannot have (a misspelled field refuses the recipe, with its path).

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Action, ActionKind, Stage, action_path, unknown_field};

/// Default `interval` of a periodicUpload, in seconds.
pub const DEFAULT_UPLOAD_INTERVAL_SECS: u64 = 600;

/// Default `protocol` of a singularDownload: chunks over the hub.
pub const DEFAULT_DOWNLOAD_PROTOCOL: &str = "iotmqtt";

/// The recipe's shape does not allow running it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The `changeSpec` is not a JSON object.
    #[error("failed to parse changeSpec: not an object")]
    NotAnObject,
    /// `id` is missing or not a string.
    #[error("changeSpec has no string id")]
    MissingId,
    /// `id` is the empty string: nothing could tell this recipe's runs and reports apart.
    #[error("changeSpec id is empty")]
    EmptyId,
    /// A step member has the wrong type: refused before anything runs, like a misspelled one.
    #[error("{path}: {reason}")]
    UnreadableStep {
        /// Where, e.g. `changeSpec.patch.installSteps[1]`.
        path: String,
        /// What does not fit.
        reason: String,
    },
    /// A step has a member no step has (a misspelled field): refused before anything runs.
    #[error("{path}: unknown field {field:?}")]
    UnknownField {
        /// Where, e.g. `changeSpec.patch.transitPackage[0].sorce`.
        path: String,
        /// The member.
        field: String,
    },
    /// A section names an unknown stage, or a stage is not a list.
    #[error("changeSpec section {section:?}: {reason}")]
    BadSection {
        /// Section name.
        section: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why one step cannot run; it fails with this text when reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Neither `action` nor `shell` says what the step does.
    #[error("step names no action")]
    NoAction,
    /// `action` names a kind this crate does not know.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// A member has the wrong type.
    #[error("step could not be read: {0}")]
    Unreadable(String),
    /// Members the kind needs are missing.
    #[error("{kind} without {}", needs.join(" and "))]
    Incomplete {
        /// `action` name.
        kind: &'static str,
        /// Members it needs to run.
        needs: &'static [&'static str],
    },
    /// The kind does not run on devices.
    #[error("{0} does not run on a device")]
    NotForDevices(&'static str),
}

/// An `executeOnce` step ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellStep {
    /// `shell`.
    pub shell: String,
    /// `command`.
    pub command: String,
    /// `onPause`: run when the device goes BUSY during the step.
    pub on_pause: Option<String>,
    /// `onResume`: run when it is READY again.
    pub on_resume: Option<String>,
    /// `successCodes`: exit codes besides 0 that mean success.
    pub success_codes: Vec<i64>,
    /// `timeout` in seconds, when the recipe sets one.
    pub timeout_secs: Option<u64>,
}

/// A `singularDownload` step ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadStep {
    /// `source`: the artifact name, or its URL for HTTPS.
    pub source: String,
    /// `protocol`: allowed transports joined by `|`.
    pub protocol: String,
    /// `destinationPath`.
    pub destination: String,
    /// `sign`: signature of the file.
    pub sign: Option<String>,
    /// `retransmissionRewind`: bytes sent again at most on resume.
    pub rewind: Option<u64>,
}

impl DownloadStep {
    /// Whether `transport` (`https`, `iotmqtt`, ...) is one of the allowed ones.
    pub fn allows(&self, transport: &str) -> bool {
        self.protocol.split('|').any(|allowed| allowed == transport)
    }
}

/// A `periodicUpload` step ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStep {
    /// `filename`, wildcards allowed in the last component.
    pub filename: String,
    /// `interval` in seconds.
    pub interval_secs: u64,
    /// `enabled`.
    pub enabled: bool,
}

/// One step with its members checked for its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `executeOnce`.
    Shell(ShellStep),
    /// `singularDownload`.
    Download(DownloadStep),
    /// `periodicUpload`.
    PeriodicUpload(UploadStep),
}

impl Step {
    /// The runnable form of a typed action.
    pub fn from_action(action: &Action) -> Result<Self, StepError> {
        let kind = action.kind().ok_or(StepError::NoAction)?;
        let incomplete = |needs| StepError::Incomplete {
            kind: kind.name(),
            needs,
        };
        match kind {
            ActionKind::ExecuteOnce => match (&action.shell, &action.command) {
                (Some(shell), Some(command)) => Ok(Self::Shell(ShellStep {
                    shell: shell.clone(),
                    command: command.clone(),
                    on_pause: action.on_pause.clone(),
                    on_resume: action.on_resume.clone(),
                    success_codes: action.success_codes.clone().unwrap_or_default(),
                    timeout_secs: action.timeout,
                })),
                _ => Err(incomplete(&["shell", "command"])),
            },
            ActionKind::SingularDownload => match (&action.source, &action.destination_path) {
                (Some(source), Some(destination)) => Ok(Self::Download(DownloadStep {
                    source: source.clone(),
                    protocol: action
                        .protocol
                        .clone()
                        .unwrap_or_else(|| DEFAULT_DOWNLOAD_PROTOCOL.to_owned()),
                    destination: destination.clone(),
                    sign: action.sign.clone(),
                    rewind: action.retransmission_rewind,
                })),
                _ => Err(incomplete(&["source", "destinationPath"])),
            },
            ActionKind::PeriodicUpload => match &action.filename {
                Some(filename) => Ok(Self::PeriodicUpload(UploadStep {
                    filename: filename.clone(),
                    interval_secs: action.interval.unwrap_or(DEFAULT_UPLOAD_INTERVAL_SECS),
                    enabled: action.enabled.unwrap_or(true),
                })),
                None => Err(incomplete(&["filename"])),
            },
            ActionKind::SingularUpload => Err(StepError::NotForDevices(kind.name())),
        }
    }

    /// Reads one raw action of a `changeSpec`.
    pub fn from_value(value: &Value) -> Result<Self, StepError> {
        if let Some(Value::String(kind)) = value.get("action")
            && ActionKind::from_name(kind).is_none()
        {
            return Err(StepError::UnknownAction(kind.clone()));
        }
        if !value.is_object() {
            return Err(StepError::NoAction);
        }
        let action =
            Action::deserialize(value).map_err(|error| StepError::Unreadable(error.to_string()))?;
        Self::from_action(&action)
    }
}

/// The steps of one stage; each is ready, or says why it cannot run.
pub type PlannedStage = (Stage, Vec<Result<Step, StepError>>);

/// A section with the stages its document lists, in run order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSection {
    /// Section name (`patch`, `base`, ...).
    pub name: String,
    /// Stages present in the document (empty lists included), in [`Stage`] order.
    pub stages: Vec<PlannedStage>,
}

/// One step of a plan with where it stands.
#[derive(Debug, Clone, Copy)]
pub struct PlanStep<'a> {
    /// Section name.
    pub section: &'a str,
    /// Stage.
    pub stage: Stage,
    /// Position in the stage.
    pub index: usize,
    /// The step, or why it cannot run.
    pub step: &'a Result<Step, StepError>,
}

impl PlanStep<'_> {
    /// `changeSpec.{section}.{stage}[{index}]`.
    pub fn path(&self) -> String {
        action_path(self.section, self.stage, self.index)
    }
}

/// A `changeSpec` read for running: sections in document order, stages in run order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `changeSpec.id`.
    pub id: String,
    /// Sections, in the order given to [`Plan::from_value`].
    pub sections: Vec<PlanSection>,
}

impl Plan {
    /// Reads a `changeSpec` value. `order` lists section names in the order of the text that
    /// delivered it (see [`section_order`](super::section_order)); sections it does not name
    /// follow in the value's own order. Members that are not objects are not sections.
    pub fn from_value(spec: &Value, order: Option<&[String]>) -> Result<Self, PlanError> {
        let members = spec.as_object().ok_or(PlanError::NotAnObject)?;
        let id = members
            .get("id")
            .and_then(Value::as_str)
            .ok_or(PlanError::MissingId)?;
        if id.is_empty() {
            return Err(PlanError::EmptyId);
        }
        let ordered = order.unwrap_or_default().iter().map(String::as_str);
        let rest = members.keys().map(String::as_str);
        let mut names: Vec<&str> = Vec::new();
        for name in ordered
            .filter(|name| members.contains_key(*name))
            .chain(rest)
        {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let mut sections = Vec::new();
        for name in names.into_iter().filter(|name| *name != "id") {
            if let Some(stages) = members.get(name).and_then(Value::as_object) {
                sections.push(read_section(name, stages)?);
            }
        }
        Ok(Self {
            id: id.to_owned(),
            sections,
        })
    }

    /// Every step in run order.
    pub fn steps(&self) -> impl Iterator<Item = PlanStep<'_>> {
        self.sections.iter().flat_map(|section| {
            section.stages.iter().flat_map(move |(stage, steps)| {
                steps.iter().enumerate().map(move |(index, step)| PlanStep {
                    section: &section.name,
                    stage: *stage,
                    index,
                    step,
                })
            })
        })
    }
}

fn read_section(name: &str, stages: &Map<String, Value>) -> Result<PlanSection, PlanError> {
    let bad = |reason: String| PlanError::BadSection {
        section: name.to_owned(),
        reason,
    };
    if let Some(unknown) = stages.keys().find(|key| Stage::from_name(key).is_none()) {
        return Err(bad(format!("unknown stage {unknown:?}")));
    }
    let mut planned = Vec::new();
    for stage in Stage::ALL {
        let Some(list) = stages.get(stage.name()) else {
            continue;
        };
        let list = list
            .as_array()
            .ok_or_else(|| bad(format!("{} is not a list", stage.name())))?;
        for (index, step) in list.iter().enumerate() {
            if let Some(field) = unknown_field(step) {
                return Err(PlanError::UnknownField {
                    path: format!("{}.{field}", action_path(name, stage, index)),
                    field: field.to_owned(),
                });
            }
        }
        let steps: Vec<_> = list.iter().map(Step::from_value).collect();
        for (index, step) in steps.iter().enumerate() {
            if let Err(StepError::Unreadable(reason)) = step {
                return Err(PlanError::UnreadableStep {
                    path: action_path(name, stage, index),
                    reason: reason.clone(),
                });
            }
        }
        planned.push((stage, steps));
    }
    Ok(PlanSection {
        name: name.to_owned(),
        stages: planned,
    })
}
