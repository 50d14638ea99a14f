//! Observed state of a `Device`, mostly mirrored from the reported section of its twin.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;
use crate::common::{FreeFormObject, conditions_list, free_form_object};

/// Most entries kept in `status.previousAssignments`.
pub const MAX_PREVIOUS_ASSIGNMENTS: usize = 16;

/// Observed state of a device, mirrored from its twin and from the Rollout that assigned it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Agent state as last reported: PROVISIONING, READY, BUSY, PATCH_INTRANSIT,
    /// PATCH_READY, PATCH_WAITCONFIRM, PATCH_APPLYING, UPDATE_INTRANSIT, UPDATE_READY,
    /// UPDATE_WAITCONFIRM, UPDATE_APPLYING, UPLOAD_INTRANSIT or ACTION_INPROGRESS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_state: Option<String>,

    /// Whether the device is connected to its hub, and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,

    /// When the hub last heard from the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_time: Option<Time>,

    /// `$version` of the twin's desired section when last read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_twin_version: Option<i64>,

    /// `$version` of the twin's reported section when last mirrored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_twin_version: Option<i64>,

    /// The recipe the device reports, where it is in it and how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<DeviceRecipeStatus>,

    /// The Rollout that assigned a recipe to this device, and the device's phase in it.
    /// A device runs one recipe at a time: another Rollout waits while this assignment is
    /// unfinished, and may take the device once its phase is Succeeded, Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<DeviceAssignment>,

    /// Finished assignments of Rollouts that are still running, oldest first: when another
    /// Rollout takes the device, the assignment it replaces moves here, so that its Rollout
    /// goes on counting this device's outcome. Records of Rollouts that have ended or been
    /// deleted are dropped at the next assignment write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_PREVIOUS_ASSIGNMENTS))]
    pub previous_assignments: Vec<DeviceAssignment>,

    /// The last UpgradeProvisioning message the operator queued for the device after
    /// `spec.mode` changed, and whether the agent applied it. Sent once per change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_upgrade: Option<ProvisioningUpgrade>,

    /// Tags the operator last wrote to the twin and the hub acknowledged. A key present
    /// here but gone from the spec is removed from the twin.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 256))]
    pub applied_tags: BTreeMap<String, String>,

    /// Desired properties (from `spec.desired`) the operator last wrote to the twin and the
    /// hub acknowledged. Its top-level keys are the ones the operator owns: a key removed
    /// from the spec is sent as null, keys written by anyone else are never touched.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form_object")]
    pub applied_desired: FreeFormObject,

    /// Current state: `Registered` (identity exists in the hub) and `Synced` (the twin
    /// matches the spec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_list")]
    pub conditions: Vec<Condition>,
}

impl DeviceStatus {
    /// Desired-property keys the operator wrote and may therefore remove.
    pub fn owned_desired_keys(&self) -> impl Iterator<Item = &str> {
        self.applied_desired.keys().map(String::as_str)
    }
}

/// Connection of a device to its hub.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// `Connected`, `Disconnected`, or `Stale` (the hub says connected but the device has
    /// been silent too long). An unreachable device is not a failed one.
    pub state: ConnectionState,

    /// When the device entered this state.
    pub since: Time,
}

/// Connection state of a device.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConnectionState {
    /// Connected to the hub and active.
    Connected,
    /// Not connected to the hub.
    Disconnected,
    /// Reported connected, but silent for longer than expected.
    Stale,
}

/// The recipe a device reports in `reported.changeSpec`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecipeStatus {
    /// `changeSpec.id` of the recipe the device runs or last ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,

    /// Step the device is at, for example `changeSpec.patch.postInstallConfig[1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_path: Option<String>,

    /// Overall recipe status as reported (for example `InProgress`, `Success`, `Failure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,

    /// Progress through the recipe, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub progress: Option<i32>,

    /// Section of the recipe (for example `patch`) in which the last fault happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_faulted_recipe: Option<String>,

    /// Step at which the last fault happened, for example `changeSpec.patch.transitPackage[1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_faulted_path: Option<String>,

    /// Why the recipe failed or was refused, in the device's words (the `ResultText` of the
    /// recipe or of its failed step), for example `exit code 3: disk full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_text: Option<String>,
}

/// A device's place in a Rollout. Written by the Rollout controller on the Device itself, so
/// that a Rollout over many devices never holds one record per device in its own status.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceAssignment {
    /// Name of the Rollout (in this namespace).
    pub rollout: String,

    /// UID of the Rollout, so that a new Rollout with the same name is told apart.
    pub rollout_uid: String,

    /// Name of the Recipe (in this namespace).
    pub recipe: String,

    /// `changeSpec.id` of the recipe version written to the twin.
    pub recipe_id: String,

    /// Wave the device belongs to (1 is the first wave).
    #[schemars(range(min = 1))]
    pub wave: u32,

    /// Where the device is in the Rollout.
    pub phase: DeviceRolloutPhase,

    /// Why the device is in this phase, for example `Busy`, `OutsideMaintenanceWindow`,
    /// `Timeout: no result within 6h of receiving the recipe`, `CancelRequested: ...` or
    /// the failed step with the device's words. A result the device reported after it timed
    /// out or after the Rollout was aborted says so here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,

    /// When the recipe was written to the device's twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_time: Option<Time>,

    /// When the device entered `phase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_time: Option<Time>,
}

/// Phase of one device in a Rollout.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DeviceRolloutPhase {
    /// Selected, but its wave has not started.
    Pending,
    /// In a started wave, but busy or outside the maintenance window; it is retried and
    /// does not count as failed.
    Deferred,
    /// The recipe is in the device's twin; the device has not started it yet.
    Assigned,
    /// The device reports progress on the recipe.
    InProgress,
    /// The device finished every step.
    Succeeded,
    /// A step failed, the device timed out, or it could not receive the recipe (its twin
    /// refused it, or its Hub is unusable).
    Failed,
    /// The device has been disconnected or stale too long to make progress; not failed.
    Unreachable,
    /// The Rollout was deleted or aborted, and the device confirmed it stopped the recipe
    /// or never received or started it.
    Cancelled,
}

impl DeviceRolloutPhase {
    /// Whether the device is done with the recipe, one way or another.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Whether the device counts against `maxConcurrent`.
    pub fn is_in_flight(self) -> bool {
        matches!(self, Self::Assigned | Self::InProgress | Self::Unreachable)
    }
}

/// An UpgradeProvisioning message sent to a device through its hub's C2D queue.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningUpgrade {
    /// Mode the message carries: FULL, STRICT or COMM.
    pub mode: String,
    /// Hub host name the message carries.
    pub hub: String,
    /// Authentication method the message carries: SAS or X509.
    pub auth_method: String,
    /// `Sent` (queued in the hub), `Applied` (the agent reports the same provisioning) or
    /// `Failed` (the hub did not take the message; retried).
    pub state: String,
    /// Why sending failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Id of the message in the hub's C2D queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// When the message was queued or the send failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_time: Option<Time>,
}
