//! What the agent reports: device state and per-step progress of the running recipe.
//!
//! `reported.changeSpec` mirrors the desired recipe's shape, each action replaced by a
//! [`StepReport`], plus `id`, `actionPath`, `Status`, `lastFaultedRecipe` and
//! `lastFaultedPath`. Member names and spellings (`ResultCode`, `Status`, `InProgress`) are
//! those of the field format and must not change.

mod change_spec;

pub use change_spec::{ReportedChangeSpec, ReportedSection};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A device state as `reported.deviceState` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeviceState {
    /// Provisioning through DPS.
    Provisioning,
    /// Idle and connected.
    Ready,
    /// Local work has priority: transfers paused, hub disconnected.
    Busy,
    /// Downloading a patch.
    #[serde(rename = "PATCH_INTRANSIT")]
    PatchInTransit,
    /// Patch downloaded.
    PatchReady,
    /// Patch waits for a local confirmation.
    #[serde(rename = "PATCH_WAITCONFIRM")]
    PatchWaitConfirm,
    /// Installing a patch.
    PatchApplying,
    /// Downloading an update.
    #[serde(rename = "UPDATE_INTRANSIT")]
    UpdateInTransit,
    /// Update downloaded.
    UpdateReady,
    /// Update waits for a local confirmation.
    #[serde(rename = "UPDATE_WAITCONFIRM")]
    UpdateWaitConfirm,
    /// Installing an update.
    UpdateApplying,
    /// Uploading files.
    #[serde(rename = "UPLOAD_INTRANSIT")]
    UploadInTransit,
    /// Running a configuration action.
    #[serde(rename = "ACTION_INPROGRESS")]
    ActionInProgress,
}

impl DeviceState {
    /// All thirteen states, in the order the contract lists them.
    pub const ALL: [DeviceState; 13] = [
        Self::Provisioning,
        Self::Ready,
        Self::Busy,
        Self::PatchInTransit,
        Self::PatchReady,
        Self::PatchWaitConfirm,
        Self::PatchApplying,
        Self::UpdateInTransit,
        Self::UpdateReady,
        Self::UpdateWaitConfirm,
        Self::UpdateApplying,
        Self::UploadInTransit,
        Self::ActionInProgress,
    ];

    /// The state as the twin spells it (`PATCH_INTRANSIT`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "PROVISIONING",
            Self::Ready => "READY",
            Self::Busy => "BUSY",
            Self::PatchInTransit => "PATCH_INTRANSIT",
            Self::PatchReady => "PATCH_READY",
            Self::PatchWaitConfirm => "PATCH_WAITCONFIRM",
            Self::PatchApplying => "PATCH_APPLYING",
            Self::UpdateInTransit => "UPDATE_INTRANSIT",
            Self::UpdateReady => "UPDATE_READY",
            Self::UpdateWaitConfirm => "UPDATE_WAITCONFIRM",
            Self::UpdateApplying => "UPDATE_APPLYING",
            Self::UploadInTransit => "UPLOAD_INTRANSIT",
            Self::ActionInProgress => "ACTION_INPROGRESS",
        }
    }
}

impl std::fmt::Display for DeviceState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Status of one step, or of the whole recipe (`Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum StepStatus {
    /// Not started yet.
    Pending,
    /// Running.
    InProgress,
    /// Finished successfully.
    Success,
    /// Finished with an error; `ResultCode` says which.
    Failure,
    /// Not run because an earlier step failed or a restriction applies.
    Skipped,
    /// Stopped by a cancel from the cloud.
    Cancelled,
}

impl StepStatus {
    /// The status as the report spells it (`InProgress`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Success => "Success",
            Self::Failure => "Failure",
            Self::Skipped => "Skipped",
            Self::Cancelled => "Cancelled",
        }
    }

    /// True once the step will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failure | Self::Skipped | Self::Cancelled
        )
    }
}

/// The report that replaces one action in `reported.changeSpec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepReport {
    /// Where the step is.
    pub status: StepStatus,
    /// Percent done, for transfers.
    #[serde(rename = "Progress", default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u32>,
    /// Machine-readable outcome: an exit code (`"0"`) or a word (`FinishedTransit`,
    /// `integrity_mismatch`).
    #[serde(
        rename = "ResultCode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub result_code: Option<String>,
    /// Outcome for people.
    #[serde(
        rename = "ResultText",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub result_text: Option<String>,
}

impl StepReport {
    /// A step not started yet.
    pub fn pending() -> Self {
        Self {
            status: StepStatus::Pending,
            progress: None,
            result_code: None,
            result_text: None,
        }
    }

    /// A finished step with its result.
    pub fn finished(status: StepStatus, code: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            status,
            progress: None,
            result_code: Some(code.into()),
            result_text: Some(text.into()),
        }
    }
}

/// The parts of `properties.reported` this crate models; other members stay in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reported {
    /// Current device state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_state: Option<DeviceState>,
    /// Progress of the current or last recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_spec: Option<ReportedChangeSpec>,
    /// Everything else in the section, as it came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
