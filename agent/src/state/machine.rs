//! The device state machine: thirteen states and a table of legal transitions.

use serde::{Deserialize, Serialize};

use super::DeviceState;

/// Which kind of package a transit or install belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackageKind {
    /// A `patch` section.
    Patch,
    /// Any other section (a full update).
    Update,
}

/// Everything that can move the device between states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Local API: provision through DPS.
    InitiateProvisioning,
    /// Provisioning finished and the hub accepted the identity.
    Provisioned,
    /// Local API: clinical work starts, get out of the way.
    SetBusy,
    /// Local API: clinical work ended.
    SetReady,
    /// A recipe starts a shell or configuration stage.
    StartAction,
    /// A recipe starts downloading its package.
    StartTransit(PackageKind),
    /// Every download of the package arrived and verified.
    TransitDone,
    /// The install waits for a local confirmation.
    AwaitConfirm,
    /// The install was confirmed.
    Confirm,
    /// Install stages start.
    StartApply(PackageKind),
    /// Periodic uploads are streaming.
    StartUpload,
    /// The recipe finished, failed or was cancelled.
    Finish,
}

/// The persisted machine: the current state and, while BUSY, where to go back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Current state.
    pub state: DeviceState,
    /// State to resume on `SetReady` while BUSY.
    #[serde(default)]
    pub resume_to: Option<DeviceState>,
}

/// A command that the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("command {command:?} is not allowed in state {state}")]
pub struct IllegalTransition {
    /// State the device was in.
    pub state: DeviceState,
    /// Refused command.
    pub command: Command,
}

use Command as C;
use DeviceState as S;

/// The transition table for every state but BUSY, whose exits depend on `resume_to`.
/// `None` means the command is illegal in that state.
fn table(state: DeviceState, command: Command) -> Option<DeviceState> {
    let next = match (state, command) {
        // PROVISIONING rejects everything but finishing the provisioning.
        (S::Provisioning, C::Provisioned) => S::Ready,
        (S::Provisioning, _) => return None,
        (_, C::InitiateProvisioning) => S::Provisioning,

        (S::Ready, C::StartAction) => S::ActionInProgress,
        (
            S::Ready
            | S::ActionInProgress
            | S::UploadInTransit
            | S::PatchApplying
            | S::UpdateApplying,
            C::StartTransit(kind),
        ) => in_transit(kind),
        (S::Ready | S::ActionInProgress, C::StartUpload) => S::UploadInTransit,
        (S::UploadInTransit, C::StartAction) => S::ActionInProgress,

        (S::PatchInTransit, C::TransitDone) => S::PatchReady,
        (S::UpdateInTransit, C::TransitDone) => S::UpdateReady,
        (S::PatchReady, C::AwaitConfirm) => S::PatchWaitConfirm,
        (S::UpdateReady, C::AwaitConfirm) => S::UpdateWaitConfirm,
        (S::PatchWaitConfirm, C::Confirm) => S::PatchApplying,
        (S::UpdateWaitConfirm, C::Confirm) => S::UpdateApplying,
        (S::PatchReady, C::StartApply(PackageKind::Patch)) => S::PatchApplying,
        (S::UpdateReady, C::StartApply(PackageKind::Update)) => S::UpdateApplying,
        (S::Ready | S::ActionInProgress | S::UploadInTransit, C::StartApply(kind)) => {
            applying(kind)
        }
        (S::PatchApplying | S::UpdateApplying, C::StartAction) => S::ActionInProgress,
        (
            S::ActionInProgress
            | S::PatchInTransit
            | S::PatchReady
            | S::PatchWaitConfirm
            | S::PatchApplying
            | S::UpdateInTransit
            | S::UpdateReady
            | S::UpdateWaitConfirm
            | S::UpdateApplying
            | S::UploadInTransit,
            C::Finish,
        ) => S::Ready,
        (S::Ready, C::Finish) => S::Ready,
        _ => return None,
    };
    Some(next)
}

fn applying(kind: PackageKind) -> DeviceState {
    match kind {
        PackageKind::Patch => S::PatchApplying,
        PackageKind::Update => S::UpdateApplying,
    }
}

fn in_transit(kind: PackageKind) -> DeviceState {
    match kind {
        PackageKind::Patch => S::PatchInTransit,
        PackageKind::Update => S::UpdateInTransit,
    }
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            state: S::Ready,
            resume_to: None,
        }
    }
}

impl Machine {
    /// A machine in `state`.
    pub fn new(state: DeviceState) -> Self {
        Self {
            state,
            resume_to: None,
        }
    }

    /// The state `command` would lead to, without applying it.
    pub fn peek(&self, command: Command) -> Result<DeviceState, IllegalTransition> {
        let illegal = IllegalTransition {
            state: self.state,
            command,
        };
        match (self.state, command) {
            // SetBusy and SetReady are idempotent where they already hold.
            (S::Busy, C::SetBusy) | (S::Ready, C::SetReady) => Ok(self.state),
            (S::Busy, C::SetReady) => Ok(self.resume_to.unwrap_or(S::Ready)),
            (S::Busy, C::InitiateProvisioning) => Err(illegal),
            // While BUSY the engine is paused: only the finish of a recipe (cancel or
            // supersede) is recorded, as the state to come back to.
            (S::Busy, C::Finish) => Ok(S::Busy),
            (S::Busy, _) => Err(illegal),
            (S::Provisioning, C::SetBusy | C::SetReady) => Err(illegal),
            (_, C::SetBusy) => Ok(S::Busy),
            (_, C::SetReady) => Ok(self.state),
            (state, command) => table(state, command).ok_or(illegal),
        }
    }

    /// Applies `command`; an illegal one leaves the machine untouched.
    pub fn apply(&mut self, command: Command) -> Result<DeviceState, IllegalTransition> {
        let next = self.peek(command)?;
        match (self.state, command) {
            (S::Busy, C::SetReady) => self.resume_to = None,
            (S::Busy, C::Finish) => self.resume_to = Some(S::Ready),
            (S::Busy, _) => {}
            (current, C::SetBusy) => self.resume_to = Some(current),
            _ => {}
        }
        self.state = next;
        Ok(next)
    }
}
