//! Twin depth and size limits, counted the way IoT Hub counts them (field case F06).
//!
//! # Depth
//!
//! Depth counts JSON objects from the section root: `{"a":1}` placed as `reported` has depth 1,
//! `{"a":{"b":1}}` depth 2. Arrays add no level of their own (objects inside them do). The
//! `properties`/`reported` wrappers and the top-level `$metadata` are not counted.
//!
//! # Size
//!
//! The size of a section is the sum, over every member at every depth, of the key's UTF-8 length
//! plus the value's size: a string counts its UTF-8 length without C0/C1 control characters, a
//! number 8 bytes, a boolean 4 bytes, `null` nothing, and an object or array the sum of what it
//! holds. Top-level `$version` and `$metadata` are read-only and not counted. So
//! `{"ab":"xyz","n":1,"t":true}` is (2 + 3) + (1 + 8) + (1 + 4) = 19 bytes.

use serde_json::Value;

use crate::twin::{METADATA_KEY, VERSION_KEY};

/// Limits a twin section must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwinLimits {
    /// Deepest allowed object nesting (see the module docs).
    pub max_depth: usize,
    /// Largest `properties.desired`, in bytes as [`twin_size`] counts them.
    pub desired_bytes: usize,
    /// Largest `properties.reported`.
    pub reported_bytes: usize,
    /// Largest `tags`.
    pub tags_bytes: usize,
}

impl Default for TwinLimits {
    /// IoT Hub's published limits: depth 10, 32 KiB desired and reported, 8 KiB tags.
    fn default() -> Self {
        Self {
            max_depth: 10,
            desired_bytes: 32 * 1024,
            reported_bytes: 32 * 1024,
            tags_bytes: 8 * 1024,
        }
    }
}

impl TwinLimits {
    /// Checks a whole `properties.desired` section.
    pub fn check_desired(&self, section: &Value) -> Result<(), LimitError> {
        check(section, self.desired_bytes, self)
    }

    /// Checks a whole `properties.reported` section.
    pub fn check_reported(&self, section: &Value) -> Result<(), LimitError> {
        check(section, self.reported_bytes, self)
    }

    /// Checks the `tags` section.
    pub fn check_tags(&self, section: &Value) -> Result<(), LimitError> {
        check(section, self.tags_bytes, self)
    }
}

/// A section breaks a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Objects nest deeper than allowed.
    #[error("twin section is nested {depth} levels deep, more than {max}")]
    TooDeep {
        /// Depth found.
        depth: usize,
        /// Deepest allowed.
        max: usize,
    },
    /// The section is larger than allowed.
    #[error("twin section is {size} bytes, more than {max}")]
    TooLarge {
        /// Size found, counted as [`twin_size`] does.
        size: usize,
        /// Largest allowed.
        max: usize,
    },
}

/// Object nesting depth of a section (see the module docs).
pub fn depth(section: &Value) -> usize {
    match section {
        Value::Object(members) => {
            let deepest = members
                .iter()
                .filter(|(key, _)| key.as_str() != METADATA_KEY)
                .map(|(_, value)| depth(value))
                .max()
                .unwrap_or(0);
            1 + deepest
        }
        other => value_depth(other),
    }
}

fn value_depth(value: &Value) -> usize {
    match value {
        Value::Object(members) => 1 + members.values().map(value_depth).max().unwrap_or(0),
        Value::Array(items) => items.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Size of a section as IoT Hub counts it (see the module docs).
pub fn twin_size(section: &Value) -> usize {
    match section {
        Value::Object(members) => members
            .iter()
            .filter(|(key, _)| key.as_str() != VERSION_KEY && key.as_str() != METADATA_KEY)
            .map(|(key, value)| key.len() + value_size(value))
            .sum(),
        other => value_size(other),
    }
}

fn value_size(value: &Value) -> usize {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(text) => text
            .chars()
            .filter(|c| !c.is_control())
            .map(char::len_utf8)
            .sum(),
        Value::Array(items) => items.iter().map(value_size).sum(),
        Value::Object(members) => members.iter().map(|(k, v)| k.len() + value_size(v)).sum(),
    }
}

/// Checks depth, then size, of one section against `max_bytes` and `limits.max_depth`.
pub fn check(section: &Value, max_bytes: usize, limits: &TwinLimits) -> Result<(), LimitError> {
    let found_depth = depth(section);
    if found_depth > limits.max_depth {
        return Err(LimitError::TooDeep {
            depth: found_depth,
            max: limits.max_depth,
        });
    }
    let size = twin_size(section);
    if size > max_bytes {
        return Err(LimitError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    Ok(())
}
