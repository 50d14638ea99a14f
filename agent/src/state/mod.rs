//! Device state: the machine, its persistence and the reported `deviceState`.

mod device;
mod machine;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use cloudpillar_protocol::reported::DeviceState;
pub use device::Device;
pub use machine::{Command, IllegalTransition, Machine, PackageKind};

use crate::durable::{self, DurableError};

/// The machine persisted in `<state_dir>/state.json`.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    machine: Machine,
}

impl StateStore {
    /// Opens the store; a device never seen before starts in READY.
    pub fn open(state_dir: &Path) -> Result<Self, DurableError> {
        let path = state_dir.join("state.json");
        let machine = durable::read_json(&path)?.unwrap_or_default();
        Ok(Self { path, machine })
    }

    /// The current machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The current state.
    pub fn state(&self) -> DeviceState {
        self.machine.state
    }

    /// Applies `command` and persists the result before returning it. `Ok(None)` means
    /// the command was legal but changed nothing.
    pub fn apply(&mut self, command: Command) -> Result<Option<DeviceState>, StateError> {
        let mut next = self.machine.clone();
        next.apply(command)?;
        if next == self.machine {
            return Ok(None);
        }
        durable::write_json(&self.path, &next)?;
        let changed = next.state != self.machine.state;
        self.machine = next;
        Ok(changed.then_some(self.machine.state))
    }
}

/// Errors changing state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The command is not allowed now.
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// The new state could not be persisted.
    #[error("failed to persist device state")]
    Persist(#[from] DurableError),
    /// A thread panicked while holding the state lock.
    #[error("device state lock poisoned")]
    Poisoned,
}
