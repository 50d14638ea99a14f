//! Checks a `changeSpec` before it is signed (operator) or run (agent).

use serde_json::{Value, json};

use super::{ACTION_FIELDS, Stage, raw_actions, zone_variables};
use crate::encoding::decode_base64_strict;
use crate::keys::{KeyError, validate_document_keys};
use crate::limits::{TwinLimits, depth, twin_size};
use crate::signing::SignedText;

/// Shells an executeOnce step may name.
pub const KNOWN_SHELLS: [&str; 5] = ["bash", "sh", "powershell", "pwsh", "cmd"];
/// Transports a `protocol` member may list, joined by `|`.
pub const KNOWN_PROTOCOLS: [&str; 3] = ["https", "iotamqp", "iotmqtt"];
/// Bytes of the desired section kept free for `changeSign` next to the recipe (a `kid:base64`
/// P-521 signature is 193 characters).
pub const SIGNATURE_ALLOWANCE: usize = 256;

const ACTION_KINDS: [&str; 4] = [
    "executeOnce",
    "singularDownload",
    "singularUpload",
    "periodicUpload",
];
const TEXT_MEMBERS: [&str; 10] = [
    "description",
    "shell",
    "command",
    "onPause",
    "onResume",
    "source",
    "protocol",
    "destinationPath",
    "sign",
    "filename",
];
const COUNT_MEMBERS: [&str; 3] = ["timeout", "retransmissionRewind", "interval"];

/// One problem found in a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where, e.g. `changeSpec.patch.transitPackage[1].destinationPath`.
    pub path: String,
    /// What is wrong, in lowercase words.
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}: {}", self.path, self.message)
    }
}

/// Every problem of a raw `changeSpec`, checked against IoT Hub's default twin limits.
/// An empty list means the recipe may be signed and run.
pub fn validate(spec: &Value) -> Vec<Issue> {
    validate_with_limits(spec, &TwinLimits::default())
}

/// [`validate`] with explicit twin limits.
pub fn validate_with_limits(spec: &Value, limits: &TwinLimits) -> Vec<Issue> {
    let mut issues = Issues::default();
    let Some(members) = spec.as_object() else {
        issues.add("changeSpec", "must be an object");
        return issues.0;
    };
    match members.get("id") {
        Some(Value::String(id)) if !id.is_empty() => {}
        Some(_) => issues.add("changeSpec.id", "must be a non-empty string"),
        None => issues.add("changeSpec.id", "is missing"),
    }
    let sections: Vec<_> = members
        .iter()
        .filter(|(k, v)| k.as_str() != "id" && v.is_object())
        .collect();
    if sections.is_empty() {
        issues.add(
            "changeSpec",
            "has no section (an object of stages such as patch or base)",
        );
    }
    for (name, section) in sections {
        check_section(name, section, &mut issues);
    }
    for found in raw_actions(spec) {
        check_action(&found.path, found.value, &mut issues);
    }
    check_twin_rules(spec, limits, &mut issues);
    issues.0
}

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn check_section(name: &str, section: &Value, issues: &mut Issues) {
    let Some(stages) = section.as_object() else {
        return;
    };
    for (stage, actions) in stages {
        let path = format!("changeSpec.{name}.{stage}");
        if Stage::from_name(stage).is_none() {
            issues.add(
                path,
                "unknown stage: stages are preTransitConfig, transitPackage, preInstallConfig, \
                 installSteps and postInstallConfig",
            );
        } else if let Some(list) = actions.as_array() {
            for (index, action) in list.iter().enumerate() {
                if !action.is_object() {
                    issues.add(format!("{path}[{index}]"), "an action must be an object");
                }
            }
        } else {
            issues.add(path, "a stage must be a list of actions");
        }
    }
}

fn check_action(path: &str, action: &Value, issues: &mut Issues) {
    let Some(members) = action.as_object() else {
        return;
    };
    let at = |member: &str| format!("{path}.{member}");
    for member in members
        .keys()
        .filter(|m| !ACTION_FIELDS.contains(&m.as_str()))
    {
        issues.add(at(member), format!("unknown field {member:?}"));
    }
    for member in TEXT_MEMBERS {
        if members.get(member).is_some_and(|v| !v.is_string()) {
            issues.add(at(member), "must be a string");
        }
    }
    for member in COUNT_MEMBERS {
        if members.get(member).is_some_and(|v| v.as_u64().is_none()) {
            issues.add(at(member), "must be a whole number of zero or more");
        }
    }
    if members.get("enabled").is_some_and(|v| !v.is_boolean()) {
        issues.add(at("enabled"), "must be true or false");
    }
    if let Some(codes) = members.get("successCodes") {
        let all_integers = codes
            .as_array()
            .is_some_and(|c| c.iter().all(|v| v.as_i64().is_some()));
        if !all_integers {
            issues.add(at("successCodes"), "must be a list of integer exit codes");
        }
    }
    let text = |member: &str| members.get(member).and_then(Value::as_str);

    let kind = match (members.get("action"), text("shell")) {
        (Some(Value::String(kind)), _) if ACTION_KINDS.contains(&kind.as_str()) => kind.as_str(),
        (Some(Value::String(kind)), _) => {
            let message = format!(
                "unknown action {kind:?}: actions are executeOnce, singularDownload, \
                 singularUpload and periodicUpload"
            );
            return issues.add(at("action"), message);
        }
        (Some(_), _) => return issues.add(at("action"), "must be a string"),
        (None, Some(_)) => "executeOnce",
        (None, None) => {
            return issues.add(path, "names no action and has no shell to run");
        }
    };
    let required: &[&str] = match kind {
        "executeOnce" => &["shell", "command"],
        "singularDownload" => &["source", "destinationPath"],
        "singularUpload" => &["filename"],
        _ => &["filename", "interval"],
    };
    for member in required {
        if !members.contains_key(*member) {
            issues.add(path, format!("{kind} needs {member}"));
        }
    }
    if let Some(shell) = text("shell").filter(|shell| !KNOWN_SHELLS.contains(shell)) {
        issues.add(
            at("shell"),
            format!("unknown shell {shell:?}: shells are bash, sh, powershell, pwsh and cmd"),
        );
    }
    for member in ["interval", "timeout"] {
        if members.get(member).and_then(Value::as_u64) == Some(0) {
            issues.add(at(member), "must be at least 1 second");
        }
    }
    if let Some(protocol) = text("protocol") {
        check_protocol(&at("protocol"), protocol, issues);
    }
    if let Some(destination) = text("destinationPath") {
        check_destination(&at("destinationPath"), destination, issues);
    }
    if let Some(Err(error)) = text("filename").map(zone_variables) {
        issues.add(at("filename"), error.to_string());
    }
    if let Some(sign) = text("sign") {
        check_sign(&at("sign"), sign, issues);
    }
}

/// `sign` is `kid:base64` (or bare base64) of a file signature, in the form the key holder
/// prints; the base64 part must be canonical standard base64 (F16).
fn check_sign(path: &str, sign: &str, issues: &mut Issues) {
    match SignedText::parse(sign) {
        Ok(signed) => {
            if let Err(error) = decode_base64_strict("sign", &signed.signature) {
                issues.add(path.to_owned(), format!("{error}: {}", error.source));
            }
        }
        Err(error) => issues.add(path.to_owned(), format!("sign: {error}")),
    }
}

fn check_protocol(path: &str, protocol: &str, issues: &mut Issues) {
    let parts: Vec<&str> = protocol.split('|').collect();
    for part in &parts {
        if !KNOWN_PROTOCOLS.contains(part) {
            let message = format!(
                "unknown transport {part:?}: transports are https, iotamqp and iotmqtt, joined by |"
            );
            issues.add(path, message);
        }
    }
    let mut seen = parts.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != parts.len() {
        issues.add(path, "lists a transport twice");
    }
}

/// A download destination stays inside the agent's directory or a zone: no `..` segment
/// (with `/` or `\` separators) and no absolute path (`/x`, `\x`, `I:\x`, `\\server\x`) unless
/// it starts with a zone variable such as `${DownloadZone}/x`.
fn check_destination(path: &str, destination: &str, issues: &mut Issues) {
    if destination.is_empty() {
        return issues.add(path, "must not be empty");
    }
    if destination.chars().any(char::is_control) {
        issues.add(path, "must not contain control characters");
    }
    let variables = match zone_variables(destination) {
        Ok(variables) => variables,
        Err(error) => return issues.add(path, error.to_string()),
    };
    if destination
        .split(['/', '\\'])
        .any(|segment| segment == "..")
    {
        issues.add(
            path,
            "may not contain a '..' segment: a download must stay inside its directory",
        );
    }
    let starts_in_zone = variables.first().is_some_and(|(start, _)| *start == 0);
    let bytes = destination.as_bytes();
    let rooted = destination.starts_with(['/', '\\']);
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if (rooted || drive) && !starts_in_zone {
        issues.add(
            path,
            "must be relative or start with a zone variable such as ${Zone}/",
        );
    }
}

fn check_twin_rules(spec: &Value, limits: &TwinLimits, issues: &mut Issues) {
    let wrapped = json!({ "changeSpec": spec });
    if let Err(error) = validate_document_keys(&wrapped) {
        let (path, source) = match error {
            KeyError::InDocument { path, source } => (path, *source),
            other => ("changeSpec".to_owned(), other),
        };
        issues.add(path, format!("invalid key: {source}"));
    }
    let found_depth = depth(&wrapped);
    if found_depth > limits.max_depth {
        let message = format!(
            "nests {found_depth} levels below desired, more than {}",
            limits.max_depth
        );
        issues.add("changeSpec", message);
    }
    let size = twin_size(&wrapped) + "changeSign".len() + SIGNATURE_ALLOWANCE;
    if size > limits.desired_bytes {
        let message = format!(
            "needs {size} bytes of the desired section with its signature, more than {}",
            limits.desired_bytes
        );
        issues.add("changeSpec", message);
    }
}
