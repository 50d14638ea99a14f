//! The `Device` resource: one field machine and its hub identity.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A field machine kept patched and observed by CloudPillar.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cloudpillar.io",
    version = "v1alpha1",
    kind = "Device",
    namespaced,
    status = "DeviceStatus",
    shortname = "dev",
    category = "cloudpillar",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.deviceState"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// Identity of the device in its hub. Defaults to the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9\-.%_*?!(),:=@$']+$")
    )]
    pub device_id: Option<String>,

    /// How much the agent on the device may do: FULL runs every action, STRICT forbids
    /// shell steps and enforces file zones, COMM only communicates.
    #[serde(default)]
    pub mode: DeviceMode,

    /// Tags written to the device twin, for queries in the hub.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Operating mode of the agent on a device.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum DeviceMode {
    /// Every recipe action is allowed.
    #[default]
    Full,
    /// No shell steps; uploads and downloads must fall within the device's file zones.
    Strict,
    /// Communication only: twin and messages, no recipe actions.
    Comm,
}

/// Observed state of a device, mirrored from the reported section of its twin.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Agent state as last reported (READY, BUSY, PATCH_INTRANSIT, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_state: Option<String>,
}
