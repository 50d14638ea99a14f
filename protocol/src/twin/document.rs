//! The twin document in the JSON shape Azure IoT Hub uses on its service API.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Key holding a section's version number (`properties.desired.$version`).
pub const VERSION_KEY: &str = "$version";
/// Key holding a section's per-member update metadata.
pub const METADATA_KEY: &str = "$metadata";

/// A device twin as the service API returns it.
///
/// Fields this model does not name (`deviceEtag`, `lastActivityTime`, `capabilities`, ...) are
/// kept in `extra` so a document read and written back loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// Device identity, unique per hub.
    pub device_id: String,
    /// Opaque ETag guarding writes to the whole twin.
    pub etag: String,
    /// Twin version, increased on every change of tags or properties.
    pub version: u64,
    /// Whether the device identity may connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TwinStatus>,
    /// Whether the device is connected right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_state: Option<ConnectionState>,
    /// Service-only tags (a JSON object).
    #[serde(default = "empty_object")]
    pub tags: Value,
    /// Desired and reported properties.
    #[serde(default)]
    pub properties: TwinProperties,
    /// Members not modelled above, kept as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The `properties` member of a twin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinProperties {
    /// Written by the back end only; carries `$version` and optionally `$metadata`.
    #[serde(default = "empty_object")]
    pub desired: Value,
    /// Written by the device only; carries `$version` and optionally `$metadata`.
    #[serde(default = "empty_object")]
    pub reported: Value,
}

impl Default for TwinProperties {
    fn default() -> Self {
        Self {
            desired: empty_object(),
            reported: empty_object(),
        }
    }
}

/// Whether a device identity is allowed to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TwinStatus {
    /// The device may connect.
    Enabled,
    /// The device is refused.
    Disabled,
}

/// Connection state of a device as the hub sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectionState {
    /// A device connection is open.
    Connected,
    /// No device connection is open.
    Disconnected,
}

impl Twin {
    /// A new twin with empty sections at version 1 (desired and reported at `$version` 1).
    pub fn new(device_id: impl Into<String>, etag: impl Into<String>) -> Self {
        let mut properties = TwinProperties::default();
        set_section_version(&mut properties.desired, 1);
        set_section_version(&mut properties.reported, 1);
        Self {
            device_id: device_id.into(),
            etag: etag.into(),
            version: 1,
            status: Some(TwinStatus::Enabled),
            connection_state: Some(ConnectionState::Disconnected),
            tags: empty_object(),
            properties,
            extra: Map::new(),
        }
    }

    /// `$version` of the desired section, if it has one.
    pub fn desired_version(&self) -> Option<u64> {
        section_version(&self.properties.desired)
    }

    /// `$version` of the reported section, if it has one.
    pub fn reported_version(&self) -> Option<u64> {
        section_version(&self.properties.reported)
    }
}

/// Reads `$version` from a desired or reported section.
pub fn section_version(section: &Value) -> Option<u64> {
    section.get(VERSION_KEY).and_then(Value::as_u64)
}

/// Writes `$version` into a section, turning a non-object into an empty object first.
pub fn set_section_version(section: &mut Value, version: u64) {
    if !section.is_object() {
        *section = empty_object();
    }
    if let Value::Object(members) = section {
        members.insert(VERSION_KEY.to_owned(), Value::from(version));
    }
}

/// A copy of a section without its top-level `$version` and `$metadata` members.
pub fn without_meta(section: &Value) -> Value {
    match section {
        Value::Object(members) => Value::Object(
            members
                .iter()
                .filter(|(key, _)| key.as_str() != VERSION_KEY && key.as_str() != METADATA_KEY)
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}
