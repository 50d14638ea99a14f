//! Typed view of a `changeSpec`, kept beside the document it was read from.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A stage of a section. Variant order is execution order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
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

impl Stage {
    /// All stages in execution order.
    pub const ALL: [Stage; 5] = [
        Stage::PreTransitConfig,
        Stage::TransitPackage,
        Stage::PreInstallConfig,
        Stage::InstallSteps,
        Stage::PostInstallConfig,
    ];

    /// The stage's name in a `changeSpec`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::PreTransitConfig => "preTransitConfig",
            Stage::TransitPackage => "transitPackage",
            Stage::PreInstallConfig => "preInstallConfig",
            Stage::InstallSteps => "installSteps",
            Stage::PostInstallConfig => "postInstallConfig",
        }
    }

    /// The stage a `changeSpec` calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|stage| stage.name() == name)
    }
}

/// The five stages of one section, each a list of actions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Section {
    /// Preparation before anything is transferred.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_transit_config: Vec<Action>,
    /// Downloads and uploads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transit_package: Vec<Action>,
    /// Preparation before installing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_install_config: Vec<Action>,
    /// The installation itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub install_steps: Vec<Action>,
    /// Checks and clean-up after installing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_install_config: Vec<Action>,
}

impl Section {
    /// Stages with their actions, in execution order (empty stages included).
    pub fn stages(&self) -> impl Iterator<Item = (Stage, &[Action])> {
        Stage::ALL
            .into_iter()
            .map(|stage| (stage, self.stage(stage)))
    }

    /// The actions of one stage.
    pub fn stage(&self, stage: Stage) -> &[Action] {
        match stage {
            Stage::PreTransitConfig => &self.pre_transit_config,
            Stage::TransitPackage => &self.transit_package,
            Stage::PreInstallConfig => &self.pre_install_config,
            Stage::InstallSteps => &self.install_steps,
            Stage::PostInstallConfig => &self.post_install_config,
        }
    }
}

/// Kinds of recipe steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ActionKind {
    /// Run a shell command once (the kind of a step with `shell` and no `action`).
    ExecuteOnce,
    /// Fetch one file to the device.
    SingularDownload,
    /// Send one file from the device.
    SingularUpload,
    /// Send matching files from the device every `interval` seconds.
    PeriodicUpload,
}

impl ActionKind {
    /// The kind's name in a `changeSpec`.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::ExecuteOnce => "executeOnce",
            ActionKind::SingularDownload => "singularDownload",
            ActionKind::SingularUpload => "singularUpload",
            ActionKind::PeriodicUpload => "periodicUpload",
        }
    }

    /// The kind a `changeSpec` calls `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            ActionKind::ExecuteOnce,
            ActionKind::SingularDownload,
            ActionKind::SingularUpload,
            ActionKind::PeriodicUpload,
        ]
        .into_iter()
        .find(|kind| kind.name() == name)
    }
}

/// The members a step may have, as a recipe spells them (the fields of [`Action`]). Any
/// other member, a misspelled one above all, is refused with its path by
/// [`crate::recipe::validate`] and by [`crate::recipe::Plan`] before anything runs.
pub const ACTION_FIELDS: [&str; 16] = [
    "action",
    "description",
    "shell",
    "command",
    "onPause",
    "onResume",
    "successCodes",
    "timeout",
    "source",
    "protocol",
    "destinationPath",
    "sign",
    "retransmissionRewind",
    "filename",
    "interval",
    "enabled",
];

/// The first member of the step `action` that is not among [`ACTION_FIELDS`].
pub fn unknown_field(action: &serde_json::Value) -> Option<&str> {
    (action.as_object()?.keys())
        .map(String::as_str)
        .find(|member| !ACTION_FIELDS.contains(member))
}

/// One step. Which members apply depends on the kind; [`crate::recipe::validate`] checks that
/// the ones a kind needs are there. Members not named here stay in the document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    /// Kind of step; a step with `shell` and no `action` is executeOnce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionKind>,
    /// What the step is for, shown to people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// executeOnce: `bash`, `sh`, `powershell`, `pwsh` or `cmd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// executeOnce: the command or script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// executeOnce: run when the device is set busy during this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_pause: Option<String>,
    /// executeOnce: run when the device is ready again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_resume: Option<String>,
    /// executeOnce: exit codes besides 0 that mean success (e.g. 3010).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_codes: Option<Vec<i64>>,
    /// executeOnce: seconds before the step is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// singularDownload: name of the artifact to fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// singularDownload: allowed transports joined by `|` (`https|iotamqp|iotmqtt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// singularDownload: where the file goes; relative, or inside a zone (`${Zone}/...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_path: Option<String>,
    /// singularDownload: base64 P-521 signature of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign: Option<String>,
    /// singularDownload: bytes re-sent before the interruption point on resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retransmission_rewind: Option<u64>,
    /// Uploads: file to send (wildcards allowed for periodicUpload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// periodicUpload: seconds between uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// periodicUpload: whether it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl Action {
    /// The step's kind: `action`, or executeOnce when only `shell` says so.
    pub fn kind(&self) -> Option<ActionKind> {
        self.action
            .or(self.shell.as_ref().map(|_| ActionKind::ExecuteOnce))
    }
}

/// A `changeSpec` could not be read into the typed view.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The value is not a `changeSpec` (see the message for where).
    #[error("changeSpec could not be read")]
    ReadChangeSpec {
        /// Parser error, naming the section or member at fault.
        #[source]
        source: serde_json::Error,
    },
}

/// A recipe: the document as written, plus its typed sections in document order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeSpec {
    /// Unique per recipe version.
    pub id: String,
    /// Sections (`patch`, `base`, ...) in document order.
    pub sections: Vec<(String, Section)>,
    raw: Value,
}

impl ChangeSpec {
    /// Reads JSON text, keeping the order of its sections.
    pub fn from_json(text: &str) -> Result<Self, RecipeError> {
        serde_json::from_str(text).map_err(|source| RecipeError::ReadChangeSpec { source })
    }

    /// Reads a value; sections come in the value's map order.
    pub fn from_value(value: Value) -> Result<Self, RecipeError> {
        serde_json::from_value(value).map_err(|source| RecipeError::ReadChangeSpec { source })
    }

    /// The document exactly as read: what is signed (through canonical JSON) and sent.
    pub fn as_value(&self) -> &Value {
        &self.raw
    }

    /// Gives the document back.
    pub fn into_value(self) -> Value {
        self.raw
    }

    /// The section named `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|(section, _)| section == name)
            .map(|(_, section)| section)
    }
}

impl Serialize for ChangeSpec {
    /// Writes the original document, unknown members included.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ChangeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ChangeSpecVisitor)
    }
}

struct ChangeSpecVisitor;

impl<'de> Visitor<'de> for ChangeSpecVisitor {
    type Value = ChangeSpec;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a changeSpec object with an id and sections")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChangeSpec, A::Error> {
        let mut raw = Map::new();
        let mut id = None;
        let mut sections = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: Value = map.next_value()?;
            if raw.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "changeSpec.{key} appears twice"
                )));
            }
            if key == "id" {
                let text = value
                    .as_str()
                    .filter(|text| !text.is_empty())
                    .ok_or_else(|| de::Error::custom("changeSpec.id must be a non-empty string"))?;
                id = Some(text.to_owned());
            } else if value.is_object() {
                let section = Section::deserialize(&value).map_err(|error| {
                    de::Error::custom(format_args!("changeSpec.{key}: {error}"))
                })?;
                sections.push((key.clone(), section));
            }
            raw.insert(key, value);
        }
        let id = id.ok_or_else(|| de::Error::missing_field("id"))?;
        Ok(ChangeSpec {
            id,
            sections,
            raw: Value::Object(raw),
        })
    }
}

impl JsonSchema for ChangeSpec {
    fn schema_name() -> Cow<'static, str> {
        "ChangeSpec".into()
    }

    /// An object with a string `id`; `patch` and `base` are described as sections, and other
    /// section names are kept (Kubernetes `x-kubernetes-preserve-unknown-fields`).
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let section = generator.subschema_for::<Section>();
        json_schema!({
            "type": "object",
            "description": "A recipe: an id and sections (patch, base, ...), each holding the \
                            stages preTransitConfig, transitPackage, preInstallConfig, \
                            installSteps and postInstallConfig.",
            "required": ["id"],
            "properties": {
                "id": {"type": "string", "minLength": 1},
                "patch": section.clone(),
                "base": section,
            },
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}
