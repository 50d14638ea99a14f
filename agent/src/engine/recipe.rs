//! The runnable form of a `changeSpec`: sections in document order, five stages each.
//!
//! Section order is the order of the keys in the JSON text that delivered the recipe,
//! so a twin patch or an AddRecipe body is parsed from its bytes with an order-keeping
//! visitor rather than through a sorted map.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The five stages, in the order they run.
pub const STAGES: [&str; 5] = [
    "preTransitConfig",
    "transitPackage",
    "preInstallConfig",
    "installSteps",
    "postInstallConfig",
];

/// Errors turning a `changeSpec` into a recipe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    /// Not JSON, or not an object.
    #[error("failed to parse changeSpec: {0}")]
    Parse(String),
    /// `id` missing or not a string.
    #[error("changeSpec has no string id")]
    MissingId,
    /// A section is not an object of stages, or a stage not a list.
    #[error("changeSpec section {section:?}: {reason}")]
    BadSection {
        /// Section name.
        section: String,
        /// What is wrong.
        reason: String,
    },
}

/// One recipe step.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `executeOnce`: a shell script.
    ExecuteOnce(ShellAction),
    /// `singularDownload`: one file from the cloud.
    SingularDownload(DownloadAction),
    /// `periodicUpload`: files sent on an interval.
    PeriodicUpload(UploadAction),
    /// An action this agent does not know; it fails with a reason.
    Unknown(String),
}

/// `executeOnce` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ShellAction {
    /// `shell`.
    pub shell: String,
    /// `command`.
    pub command: String,
    /// `onPause`: run when the device goes BUSY during this step.
    pub on_pause: Option<String>,
    /// `onResume`: run when it is READY again.
    pub on_resume: Option<String>,
    /// `successCodes`: exit codes besides 0 that mean success.
    pub success_codes: Vec<i64>,
    /// `timeout` in seconds, overriding the configured default.
    pub timeout_secs: Option<u64>,
}

/// `singularDownload` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadAction {
    /// `source`: the blob name the backend streams.
    pub source: String,
    /// `protocol`: `|`-separated transports allowed.
    pub protocol: String,
    /// `destinationPath`.
    pub destination: String,
    /// `sign`: base64 signature of the file.
    pub sign: Option<String>,
    /// `retransmissionRewind`: bytes re-requested at most on resume.
    pub rewind: Option<u64>,
}

/// `periodicUpload` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadAction {
    /// `filename`, wildcards allowed in the last component.
    pub filename: String,
    /// `interval` in seconds.
    pub interval_secs: u64,
    /// `enabled`.
    pub enabled: bool,
}

/// A section (`patch`, `base`, ...) with its stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Section key.
    pub name: String,
    /// Stages present, in [`STAGES`] order, each with its actions.
    pub stages: Vec<(&'static str, Vec<Action>)>,
}

/// A recipe ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// `changeSpec.id`.
    pub id: String,
    /// Sections in document order.
    pub sections: Vec<Section>,
}

/// A step's position: `changeSpec.{section}.{stage}[{index}]`.
pub fn action_path(section: &str, stage: &str, index: usize) -> String {
    format!("changeSpec.{section}.{stage}[{index}]")
}

/// Object keys of a JSON text in document order, nested objects included.
#[derive(Debug, Clone, PartialEq)]
enum KeyTree {
    Object(Vec<(String, KeyTree)>),
    Leaf,
}

impl<'de> serde::Deserialize<'de> for KeyTree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TreeVisitor;
        impl<'de> Visitor<'de> for TreeVisitor {
            type Value = KeyTree;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyTree, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, KeyTree>()? {
                    entries.push((k, v));
                }
                Ok(KeyTree::Object(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyTree, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(KeyTree::Leaf)
            }
            fn visit_bool<E>(self, _: bool) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
            fn visit_unit<E>(self) -> Result<KeyTree, E> {
                Ok(KeyTree::Leaf)
            }
        }
        deserializer.deserialize_any(TreeVisitor)
    }
}

/// Section names of a `changeSpec` in the order of `bytes` (a JSON object holding
/// `changeSpec` at `pointer`, e.g. `["desired", "changeSpec"]` or `["changeSpec"]`).
pub fn section_order(bytes: &[u8], pointer: &[&str]) -> Option<Vec<String>> {
    let mut current: KeyTree = serde_json::from_slice(bytes).ok()?;
    for key in pointer {
        let KeyTree::Object(entries) = current else {
            return None;
        };
        current = entries.into_iter().find(|(k, _)| k == key)?.1;
    }
    match current {
        KeyTree::Object(entries) => Some(entries.into_iter().map(|(k, _)| k).collect()),
        KeyTree::Leaf => None,
    }
}

impl Recipe {
    /// Builds the recipe from a `changeSpec` value; `order` lists section names in
    /// document order (names missing from it run after, sorted).
    pub fn from_change_spec(spec: &Value, order: Option<&[String]>) -> Result<Self, RecipeError> {
        let object = spec
            .as_object()
            .ok_or_else(|| RecipeError::Parse("not an object".into()))?;
        let id = object
            .get("id")
            .and_then(Value::as_str)
            .ok_or(RecipeError::MissingId)?;
        let mut names: Vec<&String> = Vec::new();
        for name in order.unwrap_or(&[]) {
            if let Some((k, _)) = object.get_key_value(name.as_str()) {
                names.push(k);
            }
        }
        for k in object.keys() {
            if !names.contains(&k) {
                names.push(k);
            }
        }
        let mut sections = Vec::new();
        for name in names {
            let value = &object[name.as_str()];
            if name == "id" || !value.is_object() {
                continue;
            }
            sections.push(parse_section(name, value)?);
        }
        Ok(Self {
            id: id.to_owned(),
            sections,
        })
    }

    /// Every step with its action path, in run order.
    pub fn steps(&self) -> impl Iterator<Item = (String, &str, &str, &Action)> {
        self.sections.iter().flat_map(|section| {
            section.stages.iter().flat_map(move |(stage, actions)| {
                actions.iter().enumerate().map(move |(i, action)| {
                    (
                        action_path(&section.name, stage, i),
                        section.name.as_str(),
                        *stage,
                        action,
                    )
                })
            })
        })
    }
}

fn parse_section(name: &str, value: &Value) -> Result<Section, RecipeError> {
    let bad = |reason: String| RecipeError::BadSection {
        section: name.into(),
        reason,
    };
    let object = value
        .as_object()
        .ok_or_else(|| bad("not an object".into()))?;
    if let Some(unknown) = object.keys().find(|k| !STAGES.contains(&k.as_str())) {
        return Err(bad(format!("unknown stage {unknown:?}")));
    }
    let mut stages = Vec::new();
    for stage in STAGES {
        let Some(list) = object.get(stage) else {
            continue;
        };
        let list = list
            .as_array()
            .ok_or_else(|| bad(format!("{stage} is not a list")))?;
        stages.push((stage, list.iter().map(parse_action).collect()));
    }
    Ok(Section {
        name: name.to_owned(),
        stages,
    })
}

fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn parse_action(value: &Value) -> Action {
    let kind = text(value, "action")
        .or_else(|| value.get("shell").map(|_| "executeOnce".to_owned()))
        .unwrap_or_default();
    match kind.as_str() {
        "executeOnce" => match (text(value, "shell"), text(value, "command")) {
            (Some(shell), Some(command)) => Action::ExecuteOnce(ShellAction {
                shell,
                command,
                on_pause: text(value, "onPause"),
                on_resume: text(value, "onResume"),
                success_codes: value
                    .get("successCodes")
                    .and_then(Value::as_array)
                    .map(|codes| codes.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default(),
                timeout_secs: value.get("timeout").and_then(Value::as_u64),
            }),
            _ => Action::Unknown("executeOnce without shell and command".into()),
        },
        "singularDownload" => match (text(value, "source"), text(value, "destinationPath")) {
            (Some(source), Some(destination)) => Action::SingularDownload(DownloadAction {
                source,
                protocol: text(value, "protocol").unwrap_or_else(|| "iotmqtt".into()),
                destination,
                sign: text(value, "sign"),
                rewind: value.get("retransmissionRewind").and_then(Value::as_u64),
            }),
            _ => Action::Unknown("singularDownload without source and destinationPath".into()),
        },
        "periodicUpload" => match text(value, "filename") {
            Some(filename) => Action::PeriodicUpload(UploadAction {
                filename,
                interval_secs: value.get("interval").and_then(Value::as_u64).unwrap_or(600),
                enabled: value
                    .get("enabled")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            }),
            None => Action::Unknown("periodicUpload without filename".into()),
        },
        "" => Action::Unknown("step names no action".into()),
        other => Action::Unknown(format!("unknown action {other:?}")),
    }
}
