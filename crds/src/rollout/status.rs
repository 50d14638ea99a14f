//! Observed state of a `Rollout`: phase, wave, device counts and recent failures.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Condition;
use crate::common::conditions_list;
use crate::device::DeviceRolloutPhase;
use crate::rollout::MAX_WAVES;

/// Most entries kept in `status.failedDevices`.
pub const MAX_FAILED_DEVICES: usize = 20;

/// Observed state of a rollout.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pending (waiting for a valid, signed recipe, or for a Device the selector matches),
    /// Progressing, Paused, Succeeded, Failed (finished with failed devices), Aborted
    /// (stopped by the failure threshold; its unfinished devices are asked to cancel) or
    /// Invalid (the spec holds something the operator cannot use; the Progressing condition
    /// says what).
    #[serde(default)]
    pub phase: RolloutPhase,

    /// `changeSpec.id` of the recipe version being rolled out, fixed when the first device
    /// receives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_id: Option<String>,

    /// Number of the wave in progress (1 is the first wave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_wave: Option<u32>,

    /// Devices by phase, over all waves.
    #[serde(default)]
    pub counts: DeviceCounts,

    /// Progress of each wave that has started, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_WAVES))]
    pub waves: Vec<WaveStatus>,

    /// The most recent failed devices with their reasons (at most 20; `counts.failed`
    /// has the total).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FAILED_DEVICES))]
    pub failed_devices: Vec<FailedDevice>,

    /// When the first device received the recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the rollout reached Succeeded, Failed or Aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Current state: `Progressing` (True while devices start, reason `WaveInProgress`;
    /// False while Pending with reason `RecipeNotReady` or `NoDevicesSelected`, while
    /// Paused, once ended, and with reason `InvalidSpec` when the spec cannot be used),
    /// `Paused` (True: the reason says why: Requested, WaitingForApproval, WavePause,
    /// FailureThreshold, OutsideMaintenanceWindow, RecipeBusy, RecipeNotReady; False:
    /// `Running`, `NotStarted` or `Finished`) and `Complete`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_list")]
    pub conditions: Vec<Condition>,
}

/// Phase of a rollout.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// Not started: the recipe is not yet valid and signed, or no Device matches the
    /// selector yet.
    #[default]
    Pending,
    /// Devices are being started or are running the recipe.
    Progressing,
    /// No new devices start until the pause ends or is lifted.
    Paused,
    /// Every selected device finished the recipe successfully.
    Succeeded,
    /// Every selected device finished, and some failed.
    Failed,
    /// Stopped early because the failure threshold was crossed with action Abort. Devices
    /// that had not finished are asked to cancel the recipe.
    Aborted,
    /// The spec holds something the operator cannot use, such as an unknown time zone; the
    /// Progressing condition says what. No device starts until the spec is fixed; devices
    /// already running finish.
    Invalid,
}

impl RolloutPhase {
    /// Whether the rollout will not start any more devices.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Aborted)
    }
}

/// Number of devices in each phase.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCounts {
    /// Devices selected.
    #[serde(default)]
    pub total: u32,
    /// Selected, waiting for their wave or a free slot.
    #[serde(default)]
    pub pending: u32,
    /// In a started wave but busy or outside the maintenance window; retried, not failed.
    #[serde(default)]
    pub deferred: u32,
    /// Recipe written to the twin, not started by the device yet.
    #[serde(default)]
    pub assigned: u32,
    /// Running the recipe.
    #[serde(default)]
    pub in_progress: u32,
    /// Finished successfully.
    #[serde(default)]
    pub succeeded: u32,
    /// Failed a step, timed out, or could not receive the recipe (its twin refused it).
    #[serde(default)]
    pub failed: u32,
    /// Disconnected or stale while holding the recipe; not failed.
    #[serde(default)]
    pub unreachable: u32,
    /// Stopped by a cancellation (Rollout deleted or aborted) the device confirmed, or
    /// withdrawn before the device started the recipe.
    #[serde(default)]
    pub cancelled: u32,
}

impl DeviceCounts {
    /// Counts one more device in `phase` (and in `total`).
    pub fn add(&mut self, phase: DeviceRolloutPhase) {
        self.total += 1;
        *self.slot(phase) += 1;
    }

    /// Counts one device less in `phase` (and in `total`), never below zero.
    pub fn remove(&mut self, phase: DeviceRolloutPhase) {
        self.total = self.total.saturating_sub(1);
        let slot = self.slot(phase);
        *slot = slot.saturating_sub(1);
    }

    fn slot(&mut self, phase: DeviceRolloutPhase) -> &mut u32 {
        match phase {
            DeviceRolloutPhase::Pending => &mut self.pending,
            DeviceRolloutPhase::Deferred => &mut self.deferred,
            DeviceRolloutPhase::Assigned => &mut self.assigned,
            DeviceRolloutPhase::InProgress => &mut self.in_progress,
            DeviceRolloutPhase::Succeeded => &mut self.succeeded,
            DeviceRolloutPhase::Failed => &mut self.failed,
            DeviceRolloutPhase::Unreachable => &mut self.unreachable,
            DeviceRolloutPhase::Cancelled => &mut self.cancelled,
        }
    }

    /// Devices that hold the recipe and have not finished: these count against
    /// `maxConcurrent`.
    pub fn in_flight(&self) -> u32 {
        self.assigned + self.in_progress + self.unreachable
    }

    /// Devices done with the recipe, one way or another.
    pub fn finished(&self) -> u32 {
        self.succeeded + self.failed + self.cancelled
    }
}

impl FromIterator<DeviceRolloutPhase> for DeviceCounts {
    fn from_iter<I: IntoIterator<Item = DeviceRolloutPhase>>(phases: I) -> Self {
        let mut counts = Self::default();
        phases.into_iter().for_each(|phase| counts.add(phase));
        counts
    }
}

/// Progress of one wave.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaveStatus {
    /// Number of the wave (1 is the first wave).
    #[schemars(range(min = 1))]
    pub number: u32,

    /// Name of the wave, if the spec gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Devices this wave takes.
    #[serde(default)]
    pub size: u32,

    /// The wave's devices by phase.
    #[serde(default)]
    pub counts: DeviceCounts,

    /// When the wave's first device received the recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When every device of the wave had finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// When the pause after this wave ends, for a timed pause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_time: Option<Time>,
}

/// A device that failed, and why.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedDevice {
    /// Name of the Device.
    pub name: String,

    /// Wave the device belonged to (1 is the first wave).
    pub wave: u32,

    /// Short machine-readable reason, for example `StepFailed`, `Timeout` or `TwinRefused`.
    pub reason: String,

    /// What the device reported, for example the step's result code and text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,

    /// Step that failed, for example `changeSpec.patch.installSteps[0]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_path: Option<String>,

    /// When the failure was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}
