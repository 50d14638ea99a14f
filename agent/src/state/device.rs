//! The live device state: persisted machine, `reported.deviceState` and the pause signal.

use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::watch;

use super::{Command, DeviceState, StateError, StateStore};
use crate::reported::Reported;

/// Shared handle on the state machine.
#[derive(Debug)]
pub struct Device {
    store: Mutex<StateStore>,
    reported: Arc<Reported>,
    state_tx: watch::Sender<DeviceState>,
}

impl Device {
    /// Wraps an opened store and publishes its state into `reported`.
    pub fn new(store: StateStore, reported: Arc<Reported>) -> Self {
        let state = store.state();
        reported.set("deviceState", json!(state.as_str()));
        let (state_tx, _) = watch::channel(state);
        Self {
            store: Mutex::new(store),
            reported,
            state_tx,
        }
    }

    /// The current state.
    pub fn state(&self) -> DeviceState {
        *self.state_tx.borrow()
    }

    /// Whether the device is BUSY.
    pub fn is_busy(&self) -> bool {
        self.state() == DeviceState::Busy
    }

    /// Follows state changes.
    pub fn subscribe(&self) -> watch::Receiver<DeviceState> {
        self.state_tx.subscribe()
    }

    /// Applies `command`: persisted first, then reported, then announced.
    pub fn apply(&self, command: Command) -> Result<DeviceState, StateError> {
        let mut store = self.store.lock().map_err(|_| StateError::Poisoned)?;
        let changed = store.apply(command)?;
        let state = store.state();
        drop(store);
        if let Some(state) = changed {
            tracing::info!(state = %state, ?command, "device state changed");
            self.reported.set("deviceState", json!(state.as_str()));
            self.state_tx.send_replace(state);
        }
        Ok(state)
    }

    /// Applies `command` when legal; an illegal one is logged at debug and ignored.
    pub fn try_apply(&self, command: Command) {
        if let Err(error) = self.apply(command) {
            tracing::debug!(%error, "state command ignored");
        }
    }

    /// Waits until the device is not BUSY.
    pub async fn wait_not_busy(&self) {
        let mut rx = self.subscribe();
        let _ = rx.wait_for(|s| *s != DeviceState::Busy).await;
    }
}
