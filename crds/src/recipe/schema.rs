//! The schema the API server checks `spec.changeSpec` against.
//!
//! The Rust type of a `changeSpec` is the twin protocol's [`ChangeSpec`], which keeps the
//! document exactly as written. The schema is written here, for cluster users and for
//! Kubernetes: it must be structural (an object has fixed properties or map values, never
//! both), so sections are the fixed properties `patch` and `base` and each section is a map
//! from stage name to steps. Its validation rules refuse, at apply time, unknown stages,
//! unknown actions, steps missing what their action needs, and a `destinationPath` that
//! climbs out of its directory.
//!
//! [`ChangeSpec`]: cloudpillar_protocol::recipe::ChangeSpec

use cloudpillar_protocol::recipe::{ActionKind, Stage};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::common::optional_enum;

/// Section names a Recipe's `changeSpec` may hold. The twin protocol allows any name; the
/// CRD lists the ones in use so that the API server can check what is inside them.
pub const SECTIONS: [&str; 2] = ["patch", "base"];

/// Most steps in one stage.
pub const MAX_ACTIONS_PER_STAGE: usize = 100;

/// Schema of `spec.changeSpec` (see the module documentation).
pub fn change_spec_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut properties = serde_json::Map::new();
    properties.insert(
        "id".into(),
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 128,
            "description": "Identifies this recipe version; devices use it to tell recipes \
                            apart, so any change to the recipe needs a new id. ASCII letters, \
                            digits, '.', '_' and '-', not starting with '.'.",
            "x-kubernetes-validations": [{
                "rule": "self.matches('^[A-Za-z0-9_-][A-Za-z0-9._-]*$')",
                "message": "changeSpec.id may only hold ASCII letters, digits, '.', '_' and '-', \
                            and may not start with '.': devices keep recipe state under it",
            }],
        })
        .into(),
    );
    for name in SECTIONS {
        let mut section = section_schema(generator);
        let description = format!("The {name} section: stage names mapped to their steps.");
        section.insert("description".into(), description.into());
        properties.insert(name.into(), section.into());
    }
    let any_section = SECTIONS
        .map(|name| format!("has(self.{name})"))
        .join(" || ");
    let any_step = SECTIONS
        .map(|name| {
            format!("(has(self.{name}) && self.{name}.exists(s, size(self.{name}[s]) > 0))")
        })
        .join(" || ");
    json_schema!({
        "type": "object",
        "required": ["id"],
        "properties": properties,
        "x-kubernetes-validations": [{
            "rule": any_section.clone(),
            "message": format!("changeSpec needs at least one section: {}", SECTIONS.join(" or ")),
        }, {
            // A recipe with no step at all would be signed, rolled out and reported a success
            // on every device without doing anything: almost certainly a mistake.
            "rule": format!("!({any_section}) || {any_step}"),
            "message": "changeSpec has no steps: a recipe needs at least one step in one of its \
                        stages",
        }],
    })
}

fn section_schema(generator: &mut SchemaGenerator) -> Schema {
    let stages = Stage::ALL
        .map(|stage| format!("'{}'", stage.name()))
        .join(", ");
    let names = Stage::ALL.map(Stage::name).join(", ");
    json_schema!({
        "type": "object",
        "maxProperties": Stage::ALL.len(),
        "additionalProperties": {
            "type": "array",
            "maxItems": MAX_ACTIONS_PER_STAGE,
            "items": generator.subschema_for::<StepSchema>(),
        },
        "x-kubernetes-validations": [{
            "rule": format!("self.all(stage, stage in [{stages}])"),
            "messageExpression": format!(
                "'unknown stage ' + self.filter(stage, !(stage in [{stages}]))[0] + \
                 ': stages are {names}'"
            ),
            "message": format!("unknown stage: stages are {names}"),
        }],
    })
}

// Never built: this type only carries the schema of a step. Its properties match the twin
// protocol's `Action`; a test keeps the two in step.
/// One step of a stage. Which fields apply depends on `action`.
#[derive(JsonSchema)]
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
#[allow(dead_code)] // read by the JsonSchema derive only
struct StepSchema {
    /// What the step does: executeOnce (run a shell command; the default), singularDownload
    /// (fetch one file), singularUpload (send one file) or periodicUpload (send matching
    /// files every `interval` seconds).
    #[serde(default)]
    #[schemars(schema_with = "optional_enum::<ActionKind>")]
    action: Option<ActionKind>,

    /// What the step is for, shown to people.
    #[schemars(length(max = 4096))]
    description: Option<String>,

    /// executeOnce: shell that runs `command`: bash, sh, powershell, pwsh or cmd.
    #[schemars(length(min = 1, max = 64))]
    shell: Option<String>,

    /// executeOnce: the command or script to run.
    #[schemars(length(min = 1, max = 32768))]
    command: Option<String>,

    /// executeOnce: command run when the device is set busy while this step runs.
    #[schemars(length(max = 32768))]
    on_pause: Option<String>,

    /// executeOnce: command run when the device is ready again after `onPause`.
    #[schemars(length(max = 32768))]
    on_resume: Option<String>,

    /// executeOnce: exit codes besides 0 that mean success, for example `[3010]` (success,
    /// restart needed).
    #[schemars(length(max = 32))]
    success_codes: Option<Vec<i64>>,

    /// executeOnce: seconds the command may run before it is stopped and the step fails.
    #[schemars(range(min = 1))]
    timeout: Option<u64>,

    /// singularDownload: name of the artifact to fetch.
    #[schemars(length(min = 1, max = 2048))]
    source: Option<String>,

    /// singularDownload: transports the device may use, in order of preference and separated
    /// by `|`, for example `https|iotamqp|iotmqtt`.
    #[schemars(length(min = 1, max = 256))]
    protocol: Option<String>,

    /// singularDownload: where the file goes on the device, relative to the agent's working
    /// directory or inside a zone (`${ZoneName}/...`). A `..` segment is refused.
    #[schemars(
        length(min = 1, max = 1024),
        extend("x-kubernetes-validations" = [{
            "rule": r"!self.matches('(^|[/\\\\])\\.\\.([/\\\\]|$)')",
            "message": "destinationPath may not contain a '..' segment: a download must stay \
                        inside its directory",
        }])
    )]
    destination_path: Option<String>,

    /// singularDownload: base64 ECDSA P-521 signature of the file, checked by the device.
    #[schemars(length(min = 1, max = 1024))]
    sign: Option<String>,

    /// singularDownload: bytes re-sent before the interruption point when a transfer resumes.
    retransmission_rewind: Option<u64>,

    /// singularUpload and periodicUpload: file to send; periodicUpload allows wildcards.
    #[schemars(length(min = 1, max = 1024))]
    filename: Option<String>,

    /// periodicUpload: seconds between uploads.
    #[schemars(range(min = 1))]
    interval: Option<u64>,

    /// periodicUpload: whether the periodic upload runs.
    enabled: Option<bool>,
}
