//! The restriction mode set by a provisioning upgrade, on top of local configuration.
//!
//! FULL allows what the local configuration allows; STRICT adds strict mode (no shell,
//! zones enforced); COMM keeps the device to communication: no recipe step runs. A local
//! `strict_mode = true` is never loosened by the cloud.

use std::path::Path;

use cloudpillar_protocol::messages::ProvisioningMode;

use crate::config::Config;
use crate::durable::{self, DurableError};

fn path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("mode.json")
}

/// The mode last set by an upgrade (FULL when none was).
pub fn load(state_dir: &Path) -> ProvisioningMode {
    durable::read_json(&path(state_dir))
        .ok()
        .flatten()
        .unwrap_or(ProvisioningMode::Full)
}

/// Persists the mode of an applied upgrade.
pub fn save(state_dir: &Path, mode: ProvisioningMode) -> Result<(), DurableError> {
    durable::write_json(&path(state_dir), &mode)
}

/// Whether strict mode applies now.
pub fn strict(config: &Config) -> bool {
    config.strict_mode || load(&config.state_dir) != ProvisioningMode::Full
}

/// Whether only communication is allowed now.
pub fn communication_only(config: &Config) -> bool {
    load(&config.state_dir) == ProvisioningMode::Comm
}
