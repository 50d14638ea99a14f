//! `desired.provisioning`: the agent mode, authentication method and hub a device should run
//! with (pure; no I/O).
//!
//! The agent takes a new mode from an UpgradeProvisioning message only when the message
//! agrees with `desired.provisioning` in every field but the key, which never travels through
//! the twin. So the operator keeps that section equal to what the Device asks for, spelled as
//! the message spells it.

use cloudpillar_crds::{AuthMethod, Device, DeviceMode};
use cloudpillar_protocol::messages::{AuthMethod as WireAuth, ProvisioningMode};
use serde::Serialize;
use serde_json::Value;

/// Desired-property key of the provisioning section.
pub const PROVISIONING_KEY: &str = "provisioning";

/// The provisioning section as the agent compares it with an UpgradeProvisioning message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct Provisioning {
    auth_method: WireAuth,
    hub: String,
    mode: ProvisioningMode,
}

/// `desired.provisioning` for `device`, whose hub devices reach at `device_host` (the Hub's
/// `endpoint.deviceHost`). The message names the hub by host name only, so a port is left out.
pub fn provisioning(device: &Device, device_host: &str) -> Value {
    let host = device_host.split(':').next().unwrap_or(device_host);
    let section = Provisioning {
        auth_method: match device.spec.authentication.permanent.method {
            AuthMethod::Sas => WireAuth::Sas,
            AuthMethod::X509 => WireAuth::X509,
        },
        hub: host.to_owned(),
        mode: match device.spec.mode {
            DeviceMode::Full => ProvisioningMode::Full,
            DeviceMode::Strict => ProvisioningMode::Strict,
            DeviceMode::Comm => ProvisioningMode::Comm,
        },
    };
    serde_json::to_value(section).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use cloudpillar_crds::DeviceSpec;
    use cloudpillar_protocol::messages::UpgradeProvisioning;

    use super::*;

    #[test]
    fn the_section_equals_an_upgrade_message_without_its_key() {
        let mut device = Device::new("dev-1", DeviceSpec::default());
        device.spec.mode = DeviceMode::Strict;
        let upgrade = UpgradeProvisioning {
            auth_method: WireAuth::Sas,
            hub: "hub.example".into(),
            mode: ProvisioningMode::Strict,
            key: "c2VjcmV0".into(),
        };
        let mut offered = serde_json::to_value(&upgrade).expect("message as JSON");
        offered.as_object_mut().map(|m| m.remove("key"));
        assert_eq!(provisioning(&device, "hub.example:8883"), offered);
        assert_eq!(provisioning(&device, "hub.example"), offered);
    }

    #[test]
    fn every_mode_is_spelled_as_the_agent_reads_it() {
        let mut device = Device::new("dev-1", DeviceSpec::default());
        for (mode, text) in [
            (DeviceMode::Full, "FULL"),
            (DeviceMode::Strict, "STRICT"),
            (DeviceMode::Comm, "COMM"),
        ] {
            device.spec.mode = mode;
            assert_eq!(provisioning(&device, "h")["mode"], text);
        }
    }
}
