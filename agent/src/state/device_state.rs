//! The thirteen device states as they appear in `reported.deviceState`.

use serde::{Deserialize, Serialize};

/// A device state, spelled on the wire as in the twin contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeviceState {
    /// Provisioning through DPS; nothing else runs.
    Provisioning,
    /// Idle and connected.
    Ready,
    /// Clinical work in progress: paused and disconnected.
    Busy,
    /// Downloading a patch package.
    #[serde(rename = "PATCH_INTRANSIT")]
    PatchInTransit,
    /// Patch package complete.
    PatchReady,
    /// Patch waits for a local confirmation.
    #[serde(rename = "PATCH_WAITCONFIRM")]
    PatchWaitConfirm,
    /// Installing a patch.
    PatchApplying,
    /// Downloading an update package.
    #[serde(rename = "UPDATE_INTRANSIT")]
    UpdateInTransit,
    /// Update package complete.
    UpdateReady,
    /// Update waits for a local confirmation.
    #[serde(rename = "UPDATE_WAITCONFIRM")]
    UpdateWaitConfirm,
    /// Installing an update.
    UpdateApplying,
    /// Streaming uploads.
    #[serde(rename = "UPLOAD_INTRANSIT")]
    UploadInTransit,
    /// Running a configuration action.
    #[serde(rename = "ACTION_INPROGRESS")]
    ActionInProgress,
}

impl DeviceState {
    /// Every state, in contract order.
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

    /// The wire spelling.
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
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
