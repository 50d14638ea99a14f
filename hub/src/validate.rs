//! Twin limits and key rules from `cloudpillar-protocol`, answered with Azure's status codes:
//! 400 for forbidden keys and nesting deeper than 10, 413 for sections over their size limit.

use cloudpillar_protocol::causes::ErrorChain;
use cloudpillar_protocol::keys::{KeyError, validate_document_keys, validate_patch_keys};
use cloudpillar_protocol::limits::{LimitError, TwinLimits, depth};
use serde_json::Value;

use crate::error::Refusal;

pub use cloudpillar_protocol::messages::{C2D_MAX_BYTES, D2C_MAX_BYTES};

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
}

/// Checks the keys and depth of a patch before it is merged (nulls allowed).
pub fn check_patch(section: Section, patch: &Value) -> Result<(), Refusal> {
    validate_patch_keys(patch).map_err(|e| key_refusal(section, &e))?;
    let limits = TwinLimits::default();
    let found = depth(patch);
    if found > limits.max_depth {
        return Err(limit_refusal(
            section,
            &LimitError::TooDeep {
                depth: found,
                max: limits.max_depth,
            },
        ));
    }
    Ok(())
}

/// Checks a merged section against the size and depth limits.
pub fn check_section(section: Section, doc: &Value) -> Result<(), Refusal> {
    let limits = TwinLimits::default();
    let checked = match section {
        Section::Tags => limits.check_tags(doc),
        Section::Desired => limits.check_desired(doc),
        Section::Reported => limits.check_reported(doc),
    };
    checked.map_err(|e| limit_refusal(section, &e))?;
    validate_document_keys(doc).map_err(|e| key_refusal(section, &e))
}

/// The refusal names the key and what is wrong with it, not only where it sits.
fn key_refusal(section: Section, e: &KeyError) -> Refusal {
    Refusal::bad_request(format!("{}: {}", section.name(), ErrorChain(e)))
}

fn limit_refusal(section: Section, e: &LimitError) -> Refusal {
    match e {
        LimitError::TooDeep { .. } => Refusal::bad_request(format!("{}: {e}", section.name())),
        LimitError::TooLarge { .. } => Refusal::new(
            413,
            "RequestEntityTooLarge",
            format!("{}: {e}", section.name()),
        ),
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
    fn f06_ten_levels_pass_and_eleven_are_refused_with_400() {
        check_section(Section::Reported, &nested(10)).unwrap();
        check_patch(Section::Reported, &nested(10)).unwrap();
        assert_eq!(
            check_section(Section::Reported, &nested(11))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            check_patch(Section::Desired, &nested(11))
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn f05_forbidden_key_characters_are_refused_with_400() {
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
        let big = json!({ "x": "y".repeat(32 * 1024) });
        assert_eq!(
            check_section(Section::Desired, &big).unwrap_err().status,
            413
        );
        let tags = json!({ "x": "y".repeat(8 * 1024) });
        assert_eq!(check_section(Section::Tags, &tags).unwrap_err().status, 413);
        check_section(Section::Tags, &json!({ "x": "y".repeat(8 * 1024 - 1) })).unwrap();
    }
}
