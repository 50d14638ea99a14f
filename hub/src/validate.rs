//! Twin limits and key rules, answered with Azure's status codes.
//!
//! Sizes follow Azure's documented rule (key lengths plus value sizes; numbers 8 bytes,
//! booleans 4, strings their UTF-8 length), depth counts `{"a":1}` as 1 below the section.

use serde_json::Value;

use crate::error::Refusal;

/// Largest C2D body, bytes.
pub const C2D_MAX_BYTES: usize = 64 * 1024;
/// Largest D2C body, bytes.
pub const D2C_MAX_BYTES: usize = 256 * 1024;
/// Largest desired or reported section, bytes.
pub const PROPERTIES_MAX: usize = 32 * 1024;
/// Largest tags section, bytes.
pub const TAGS_MAX: usize = 8 * 1024;
/// Deepest nesting below a section.
pub const MAX_DEPTH: usize = 10;
/// Longest key, UTF-8 bytes.
pub const MAX_KEY: usize = 1024;

/// Which twin section a document belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `tags`.
    Tags,
    /// `properties.desired`.
    Desired,
    /// `properties.reported`.
    Reported,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Self::Tags => "tags",
            Self::Desired => "properties.desired",
            Self::Reported => "properties.reported",
        }
    }

    fn max_size(self) -> usize {
        match self {
            Self::Tags => TAGS_MAX,
            Self::Desired | Self::Reported => PROPERTIES_MAX,
        }
    }
}

/// Checks the keys and depth of a patch before it is merged (nulls allowed).
pub fn check_patch(section: Section, patch: &Value) -> Result<(), Refusal> {
    check_keys(section, patch, 0)
}

/// Checks a merged section against the size and depth limits.
pub fn check_section(section: Section, doc: &Value) -> Result<(), Refusal> {
    let size = size_of(doc);
    if size > section.max_size() {
        return Err(Refusal::new(
            413,
            "RequestEntityTooLarge",
            format!(
                "{} is {size} bytes, over the {} byte limit",
                section.name(),
                section.max_size()
            ),
        ));
    }
    check_keys(section, doc, 0)
}

fn check_keys(section: Section, value: &Value, depth: usize) -> Result<(), Refusal> {
    let Some(members) = value.as_object() else {
        return Ok(());
    };
    if depth >= MAX_DEPTH && !members.is_empty() {
        return Err(Refusal::bad_request(format!(
            "{} nests deeper than {MAX_DEPTH} levels",
            section.name()
        )));
    }
    for (key, child) in members {
        let forbidden = |c: char| c == '.' || c == '$' || c == ' ' || c.is_control();
        if key.is_empty() || key.len() > MAX_KEY || key.chars().any(forbidden) {
            return Err(Refusal::bad_request(format!(
                "key {key:?} in {} is empty, longer than {MAX_KEY} bytes, or holds '.', '$', \
                 space or a control character",
                section.name()
            )));
        }
        check_keys(section, child, depth + 1)?;
    }
    Ok(())
}

/// Azure's twin size of a value.
pub fn size_of(value: &Value) -> usize {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(size_of).sum(),
        Value::Object(members) => members.iter().map(|(k, v)| k.len() + size_of(v)).sum(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!(1), |inner, _| json!({ "k": inner }))
    }

    #[test]
    fn f06_size_counts_keys_numbers_as_8_and_bools_as_4() {
        assert_eq!(size_of(&json!({"ab":"xyz","n":1,"t":true})), 19);
    }

    #[test]
    fn f06_ten_levels_pass_and_eleven_are_refused() {
        check_section(Section::Reported, &nested(10)).unwrap();
        assert_eq!(
            check_section(Section::Reported, &nested(11))
                .unwrap_err()
                .status,
            400
        );
        check_section(Section::Reported, &json!({"a":1})).unwrap();
    }

    #[test]
    fn f05_forbidden_key_characters_are_refused() {
        for key in ["firmware.bin", "$pre", "v1.2 hotfix", "a\u{1}b"] {
            let err = check_patch(Section::Reported, &json!({ "files": { key: 1 } })).unwrap_err();
            assert_eq!(err.status, 400, "{key}");
        }
        check_patch(
            Section::Reported,
            &json!({"firmware%2Ebin": {"crc": "0943260c"}}),
        )
        .unwrap();
    }

    #[test]
    fn oversize_sections_are_413() {
        let big = json!({ "x": "y".repeat(PROPERTIES_MAX) });
        assert_eq!(
            check_section(Section::Desired, &big).unwrap_err().status,
            413
        );
        let tags = json!({ "x": "y".repeat(TAGS_MAX) });
        assert_eq!(check_section(Section::Tags, &tags).unwrap_err().status, 413);
    }
}
