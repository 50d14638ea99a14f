//! The UpgradeProvisioning message that moves an agent to a new `spec.mode`.
//!
//! The agent takes a new mode only from an UpgradeProvisioning message that agrees with
//! `desired.provisioning`, so the message is sent after the twin shows the new section. It is
//! sent once per change: the section a message carried is kept in `status.provisioningUpgrade`,
//! which survives operator restarts, and nothing is sent again for the same section. An agent
//! that never applied an upgrade runs FULL with the hub and method it was given.

use cloudpillar_crds::{Device, ProvisioningUpgrade};
use cloudpillar_protocol::messages::{C2dMessage, UpgradeProvisioning};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use crate::runtime::{Context, ErrorChain};
use crate::twin::{Twin, TwinError, TwinService};

/// State of a message queued in the hub.
pub const SENT: &str = "Sent";
/// State once the agent reports the provisioning the message carried.
pub const APPLIED: &str = "Applied";
/// State when the hub did not take the message.
pub const FAILED: &str = "Failed";

/// What to do about the provisioning section `wanted` (as in `desired.provisioning`).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing changes in the record.
    Keep,
    /// The record changes without a message (for example the agent applied it).
    Record(ProvisioningUpgrade),
    /// A message for `wanted` is due.
    Send,
}

/// Decides from the twin and the last record, without I/O. The message is due when the twin
/// shows `wanted`, the agent took that desired version, runs something else, and no message
/// for `wanted` was sent (or the last send failed).
pub fn next_step(wanted: &Value, twin: &Twin, last: Option<&ProvisioningUpgrade>) -> Step {
    let desired = twin.properties.desired.get(super::mode::PROVISIONING_KEY);
    if desired != Some(wanted) {
        // The agent would refuse a message the twin does not show yet.
        return Step::Keep;
    }
    let running = running_section(wanted, twin);
    let recorded = last.filter(|r| section_of(r) == *wanted);
    match recorded {
        Some(record) if running == *wanted && record.state != APPLIED => Step::Record({
            let mut applied = record.clone();
            applied.state = APPLIED.into();
            applied.message = None;
            applied
        }),
        Some(record) if record.state != FAILED => Step::Keep,
        _ if running == *wanted => Step::Keep,
        // The agent compares the message with the desired section it holds: wait until it
        // reports having taken the twin's current desired version.
        _ if !desired_taken(twin) => Step::Keep,
        _ => Step::Send,
    }
}

/// Whether the agent reports the twin's current desired version as applied.
fn desired_taken(twin: &Twin) -> bool {
    let desired = twin
        .properties
        .desired
        .get("$version")
        .and_then(Value::as_i64);
    let applied = twin
        .properties
        .reported
        .get("desiredVersionApplied")
        .and_then(Value::as_i64);
    matches!((desired, applied), (Some(d), Some(a)) if a >= d)
}

/// Sends the message for `wanted` with the device's current key; the record to keep.
pub async fn send(
    hub: &dyn TwinService,
    device: &Device,
    device_id: &str,
    wanted: &Value,
) -> ProvisioningUpgrade {
    let mut record = ProvisioningUpgrade {
        mode: text(wanted, "mode"),
        hub: text(wanted, "hub"),
        auth_method: text(wanted, "authMethod"),
        sent_time: Some(Time(crate::status::now())),
        ..ProvisioningUpgrade::default()
    };
    let generation = device.metadata.generation.unwrap_or_default();
    let message_id = format!("provisioning-{device_id}-{}-{generation}", record.mode);
    match queue(hub, device_id, wanted, &message_id).await {
        Ok(()) => {
            record.state = SENT.into();
            record.message_id = Some(message_id);
        }
        Err(error) => {
            record.state = FAILED.into();
            record.message = Some(error);
        }
    }
    record
}

async fn queue(
    hub: &dyn TwinService,
    device_id: &str,
    wanted: &Value,
    message_id: &str,
) -> Result<(), String> {
    let mut fields = wanted.clone();
    let key = match hub.device_key(device_id).await {
        Ok(Some(key)) => key,
        Ok(None) => return Err("the hub holds no symmetric key for the device".into()),
        Err(error) => return Err(ErrorChain(&error).to_string()),
    };
    fields["key"] = json!(key);
    let upgrade: UpgradeProvisioning = serde_json::from_value(fields)
        .map_err(|e| format!("desired.provisioning is not an upgrade: {e}"))?;
    let message = C2dMessage::UpgradeProvisioning(upgrade);
    hub.send_c2d(device_id, &message, message_id)
        .await
        .map_err(|error: TwinError| ErrorChain(&error).to_string())
}

/// An Event when the record changes: message queued, applied, or not taken by the hub.
pub async fn announce(
    device: &Device,
    before: Option<&ProvisioningUpgrade>,
    after: Option<&ProvisioningUpgrade>,
    ctx: &Context,
) {
    let Some(after) = after else { return };
    let same = |b: &ProvisioningUpgrade| {
        (&b.mode, &b.state, &b.message) == (&after.mode, &after.state, &after.message)
    };
    if before.is_some_and(same) {
        return;
    }
    let mode = &after.mode;
    let (warning, reason, note) = match after.state.as_str() {
        SENT => (
            false,
            "ProvisioningUpgradeSent",
            format!(
                "UpgradeProvisioning to {mode} queued in the hub (message {})",
                after.message_id.as_deref().unwrap_or("-")
            ),
        ),
        APPLIED => (
            false,
            "ProvisioningUpgradeApplied",
            format!("the agent runs in mode {mode}"),
        ),
        _ => (
            true,
            "ProvisioningUpgradeFailed",
            format!(
                "UpgradeProvisioning to {mode} not sent: {}",
                after.message.as_deref().unwrap_or("unknown reason")
            ),
        ),
    };
    ctx.publish(device, warning, reason, note).await;
}

/// The provisioning the agent runs with: what it last reported applied, else FULL.
fn running_section(wanted: &Value, twin: &Twin) -> Value {
    let reported = twin.properties.reported.get(super::mode::PROVISIONING_KEY);
    match reported {
        Some(section) if section["status"] == "applied" => {
            let mut running = section.clone();
            running.as_object_mut().map(|m| m.remove("status"));
            running
        }
        _ => {
            let mut running = wanted.clone();
            running["mode"] = json!("FULL");
            running
        }
    }
}

fn section_of(record: &ProvisioningUpgrade) -> Value {
    json!({"authMethod": record.auth_method, "hub": record.hub, "mode": record.mode})
}

fn text(section: &Value, key: &str) -> String {
    section[key].as_str().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twin(desired: Value, reported: Value) -> Twin {
        let mut twin = Twin::new("dev-1", "etag");
        twin.properties.desired["provisioning"] = desired;
        twin.properties.desired["$version"] = json!(4);
        twin.properties.reported["desiredVersionApplied"] = json!(4);
        if !reported.is_null() {
            twin.properties.reported["provisioning"] = reported;
        }
        twin
    }

    fn section(mode: &str) -> Value {
        json!({"authMethod": "SAS", "hub": "h", "mode": mode})
    }

    fn record(mode: &str, state: &str) -> ProvisioningUpgrade {
        ProvisioningUpgrade {
            mode: mode.into(),
            hub: "h".into(),
            auth_method: "SAS".into(),
            state: state.into(),
            ..ProvisioningUpgrade::default()
        }
    }

    #[test]
    fn a_full_device_that_never_upgraded_needs_no_message() {
        let wanted = section("FULL");
        assert_eq!(
            next_step(&wanted, &twin(wanted.clone(), Value::Null), None),
            Step::Keep
        );
    }

    #[test]
    fn a_new_mode_is_sent_once_the_twin_shows_it_and_only_once() {
        let wanted = section("STRICT");
        let before = twin(section("FULL"), Value::Null);
        assert_eq!(next_step(&wanted, &before, None), Step::Keep);
        let mut shown = twin(wanted.clone(), Value::Null);
        shown.properties.reported["desiredVersionApplied"] = json!(3);
        assert_eq!(
            next_step(&wanted, &shown, None),
            Step::Keep,
            "agent not caught up"
        );
        shown.properties.reported["desiredVersionApplied"] = json!(4);
        assert_eq!(next_step(&wanted, &shown, None), Step::Send);
        let sent = record("STRICT", SENT);
        assert_eq!(next_step(&wanted, &shown, Some(&sent)), Step::Keep);
        // A failed send is tried again, and a different earlier record does not count.
        assert_eq!(
            next_step(&wanted, &shown, Some(&record("STRICT", FAILED))),
            Step::Send
        );
        assert_eq!(
            next_step(&wanted, &shown, Some(&record("COMM", APPLIED))),
            Step::Send
        );
    }

    #[test]
    fn the_record_turns_applied_when_the_agent_reports_the_section() {
        let wanted = section("STRICT");
        let mut reported = wanted.clone();
        reported["status"] = json!("applied");
        let applied = twin(wanted.clone(), reported);
        match next_step(&wanted, &applied, Some(&record("STRICT", SENT))) {
            Step::Record(record) => assert_eq!(record.state, APPLIED),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            next_step(&wanted, &applied, Some(&record("STRICT", APPLIED))),
            Step::Keep
        );
        // Back to a mode the agent already runs: nothing to send.
        let full = section("FULL");
        let mut reported = full.clone();
        reported["status"] = json!("applied");
        let back = twin(full.clone(), reported);
        assert_eq!(
            next_step(&full, &back, Some(&record("STRICT", APPLIED))),
            Step::Keep
        );
    }
}
