//! The `changeSpec` field format, and the schema the API server checks it against.
//!
//! A `changeSpec` holds an `id` and sections (`patch`, `base`); a section maps stage names
//! to lists of actions. The schema is written by hand around the derived [`Action`] schema
//! because Kubernetes needs a structural schema (an object has either fixed properties or
//! map values, never both) and because its validation rules refuse, at apply time, unknown
//! stages, unknown actions, actions missing what they need, and a `destinationPath` that
//! climbs out of its directory.

use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::common::optional_enum;

/// Section names a `changeSpec` may hold.
pub const SECTIONS: [&str; 2] = ["patch", "base"];

/// Stage names, in the order a device runs them.
pub const STAGES: [&str; 5] = [
    "preTransitConfig",
    "transitPackage",
    "preInstallConfig",
    "installSteps",
    "postInstallConfig",
];

/// Most actions in one stage.
pub const MAX_ACTIONS_PER_STAGE: usize = 100;

/// A recipe in the device twin's field format (`desired.changeSpec`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeSpec {
    /// Unique per recipe version.
    pub id: String,

    /// The `patch` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Section>,

    /// The `base` section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Section>,
}

impl ChangeSpec {
    /// The sections present, with their names, in the order of [`SECTIONS`].
    pub fn sections(&self) -> impl Iterator<Item = (&'static str, &Section)> {
        [("patch", &self.patch), ("base", &self.base)]
            .into_iter()
            .filter_map(|(name, section)| section.as_ref().map(|s| (name, s)))
    }
}

/// Stages of one section and their actions. Iterates in run order.
pub type Section = BTreeMap<Stage, Vec<Action>>;

/// A stage of a section. The order of the variants is the order a device runs them.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    /// Preparation before anything is transferred.
    PreTransitConfig,
    /// Downloads and uploads.
    TransitPackage,
    /// Preparation before installing, for example unpacking.
    PreInstallConfig,
    /// The installation itself.
    InstallSteps,
    /// Checks and clean-up after installing.
    PostInstallConfig,
}

/// One step of a stage. Which fields apply depends on `action`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.action) && self.action != 'executeOnce') || \
                 (has(self.shell) && has(self.command))",
        "message": "an executeOnce step (the default action) needs shell and command",
    },
    {
        "rule": "!has(self.action) || self.action != 'singularDownload' || \
                 (has(self.source) && has(self.destinationPath))",
        "message": "a singularDownload step needs source and destinationPath",
    },
    {
        "rule": "!has(self.action) || self.action != 'periodicUpload' || \
                 (has(self.filename) && has(self.interval))",
        "message": "a periodicUpload step needs filename and interval",
    },
    {
        "rule": "!has(self.action) || self.action != 'singularUpload' || has(self.filename)",
        "message": "a singularUpload step needs filename",
    },
]))]
pub struct Action {
    /// What the step does: executeOnce (run a shell command; the default), singularDownload
    /// (fetch one file), singularUpload (send one file) or periodicUpload (send matching
    /// files every `interval` seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_enum::<ActionKind>")]
    pub action: Option<ActionKind>,

    /// What the step is for, shown to people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,

    /// executeOnce: shell that runs `command`, for example `bash` or `powershell`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub shell: Option<String>,

    /// executeOnce: the command or script to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32768))]
    pub command: Option<String>,

    /// executeOnce: command run when the device is set busy while this step runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub on_pause: Option<String>,

    /// executeOnce: command run when the device is ready again after `onPause`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub on_resume: Option<String>,

    /// singularDownload: name of the artifact to fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub source: Option<String>,

    /// singularDownload: transports the device may use, in order of preference and separated
    /// by `|`, for example `https|iotamqp|iotmqtt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub protocol: Option<String>,

    /// singularDownload: where the file goes on the device, relative to the agent's working
    /// directory or inside a zone (`${ZoneName}/...`). A `..` segment is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 1024),
        extend("x-kubernetes-validations" = [{
            "rule": r"!self.matches('(^|[/\\\\])\\.\\.([/\\\\]|$)')",
            "message": "destinationPath may not contain a '..' segment: a download must stay \
                        inside its directory",
        }])
    )]
    pub destination_path: Option<String>,

    /// singularDownload: base64 ECDSA P-521 signature of the file, checked by the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub sign: Option<String>,

    /// singularDownload: bytes re-sent before the interruption point when a transfer resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub retransmission_rewind: Option<i64>,

    /// singularUpload and periodicUpload: file to send; periodicUpload allows wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub filename: Option<String>,

    /// periodicUpload: seconds between uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub interval: Option<i64>,

    /// periodicUpload: whether the periodic upload runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl Action {
    /// The action kind, with a missing `action` meaning executeOnce.
    pub fn kind(&self) -> ActionKind {
        self.action.unwrap_or(ActionKind::ExecuteOnce)
    }
}

/// Kinds of recipe steps.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ActionKind {
    /// Run a shell command once.
    #[default]
    ExecuteOnce,
    /// Fetch one file to the device.
    SingularDownload,
    /// Send one file from the device.
    SingularUpload,
    /// Send matching files from the device at an interval.
    PeriodicUpload,
}

/// Schema of `spec.changeSpec` for the API server (see the module documentation).
pub fn change_spec_schema(generator: &mut SchemaGenerator) -> Schema {
    let section = |generator: &mut SchemaGenerator, description: &str| {
        let mut schema = section_schema(generator);
        schema.insert("description".into(), description.into());
        schema
    };
    json_schema!({
        "type": "object",
        "required": ["id"],
        "properties": {
            "id": {
                "type": "string",
                "minLength": 1,
                "maxLength": 128,
                "description": "Identifies this recipe version; devices use it to tell recipes \
                                apart, so any change to the recipe needs a new id.",
            },
            "patch": section(generator, "The patch section: stages and their steps."),
            "base": section(generator, "The base section: stages and their steps."),
        },
        "x-kubernetes-validations": [{
            "rule": "has(self.patch) || has(self.base)",
            "message": "changeSpec needs at least one section: patch or base",
        }],
    })
}

fn section_schema(generator: &mut SchemaGenerator) -> Schema {
    let action = generator.subschema_for::<Action>();
    json_schema!({
        "type": "object",
        "maxProperties": STAGES.len(),
        "additionalProperties": {
            "type": "array",
            "maxItems": MAX_ACTIONS_PER_STAGE,
            "items": action,
        },
        "x-kubernetes-validations": [{
            "rule": "self.all(stage, stage in ['preTransitConfig', 'transitPackage', \
                     'preInstallConfig', 'installSteps', 'postInstallConfig'])",
            "messageExpression": "'unknown stage ' + self.filter(stage, !(stage in \
                                  ['preTransitConfig', 'transitPackage', 'preInstallConfig', \
                                  'installSteps', 'postInstallConfig']))[0] + ': stages are \
                                  preTransitConfig, transitPackage, preInstallConfig, \
                                  installSteps and postInstallConfig'",
            "message": "unknown stage: stages are preTransitConfig, transitPackage, \
                        preInstallConfig, installSteps and postInstallConfig",
        }],
    })
}
