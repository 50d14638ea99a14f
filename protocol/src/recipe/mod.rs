//! The recipe (`changeSpec`) model, its validation and its execution order.
//!
//! A `changeSpec` is an object with an `id` and any number of sections (`patch`, `base`, or
//! any other name). Each section holds up to five stages, run in the fixed order of [`Stage`];
//! each stage is a list of actions. An action without an `action` member but with a `shell` is
//! an `executeOnce` step.
//!
//! [`ChangeSpec`] keeps the document exactly as written next to its typed view: serializing it
//! writes the original value back, unknown members included, so a signature over the user's
//! text stays valid. Sections keep the order of the text they were parsed from (parse from JSON
//! text, not from a `serde_json::Value`, whose map may be sorted).
//!
//! [`validate`], [`normalize_crlf`] and [`has_crlf_in_bash`] work on the raw JSON value, so
//! they can report on documents the typed view refuses. A device reads what it runs as a
//! [`Plan`], which keeps a step it cannot run in place with the reason.

mod crlf;
mod model;
mod order;
mod plan;
mod validate;
mod zone_vars;

pub use crlf::{has_crlf_in_bash, normalize_crlf};
pub use model::{
    ACTION_FIELDS, Action, ActionKind, ChangeSpec, RecipeError, Section, Stage, unknown_field,
};
pub use order::section_order;
pub use plan::{
    DEFAULT_DOWNLOAD_PROTOCOL, DEFAULT_UPLOAD_INTERVAL_SECS, DownloadStep, Plan, PlanError,
    PlanSection, PlanStep, PlannedStage, ShellStep, Step, StepError, UploadStep,
};
pub use validate::{
    Issue, KNOWN_PROTOCOLS, KNOWN_SHELLS, SIGNATURE_ALLOWANCE, validate, validate_with_limits,
};
pub use zone_vars::{
    ZoneExpandError, ZoneSyntaxError, expand_zone_variables, is_zone_name, zone_variables,
};

use serde_json::Value;

/// Every action of `spec` with its path (`changeSpec.patch.transitPackage[1]`), in execution
/// order: sections in document order, stages in [`Stage`] order, actions in list order.
pub fn action_paths(spec: &ChangeSpec) -> impl Iterator<Item = (String, &Action)> {
    spec.sections.iter().flat_map(|(name, section)| {
        section.stages().flat_map(move |(stage, actions)| {
            actions
                .iter()
                .enumerate()
                .map(move |(index, action)| (action_path(name, stage, index), action))
        })
    })
}

/// The path of one action: `changeSpec.{section}.{stage}[{index}]`.
pub fn action_path(section: &str, stage: Stage, index: usize) -> String {
    format!("changeSpec.{section}.{}[{index}]", stage.name())
}

/// An action found in a raw `changeSpec` value.
pub(crate) struct RawAction<'a> {
    /// `changeSpec.{section}.{stage}[{index}]`.
    pub path: String,
    pub section: &'a str,
    pub stage: Stage,
    pub index: usize,
    pub value: &'a Value,
}

/// Actions of a raw `changeSpec` value in known stages. Sections come in the value's map
/// order; members that are not objects of stages are skipped.
pub(crate) fn raw_actions(spec: &Value) -> Vec<RawAction<'_>> {
    let Some(members) = spec.as_object() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (section, stages) in members.iter().filter(|(name, _)| name.as_str() != "id") {
        let Some(stages) = stages.as_object() else {
            continue;
        };
        for stage in Stage::ALL {
            let Some(Value::Array(actions)) = stages.get(stage.name()) else {
                continue;
            };
            for (index, value) in actions.iter().enumerate() {
                let path = action_path(section, stage, index);
                found.push(RawAction {
                    path,
                    section,
                    stage,
                    index,
                    value,
                });
            }
        }
    }
    found
}
