//! The UpgradeProvisioning C2D flow.
//!
//! The message must agree with `desired.provisioning` in every field but the key (which
//! never travels through the twin). Then the new key is stored (0600), the device
//! provisions again through DPS when configured, switches hub when told, and only then
//! reports `provisioning`.

use cloudpillar_protocol::messages::{AuthMethod, UpgradeProvisioning};
use serde_json::{Value, json};

use super::Link;
use crate::causes::with_causes;
use crate::keystore::{DeviceKey, KeyStore};

/// The fields of `upgrade` as `desired.provisioning` spells them.
fn public_fields(upgrade: &UpgradeProvisioning) -> Value {
    let mut value = serde_json::to_value(upgrade).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.remove("key");
    }
    value
}

/// Handles one UpgradeProvisioning message.
pub async fn handle(link: &Link, upgrade: UpgradeProvisioning) {
    let desired = link
        .desired
        .lock()
        .await
        .document()
        .get("provisioning")
        .cloned();
    let offered = public_fields(&upgrade);
    if desired.as_ref() != Some(&offered) {
        tracing::warn!("UpgradeProvisioning does not match desired.provisioning; ignored");
        link.reported.set(
            "provisioning",
            json!({ "status": "refused", "reason": "message does not match desired.provisioning" }),
        );
        return;
    }
    if upgrade.auth_method != AuthMethod::Sas {
        link.reported.set(
            "provisioning",
            json!({ "status": "refused", "reason": "only SAS upgrades are supported" }),
        );
        return;
    }
    let Some(mut identity) = link.identity() else {
        return;
    };
    let keys = KeyStore::new(&link.config);
    let (credential, key) = match keys.keep(DeviceKey::Plain(upgrade.key.clone())).await {
        Ok(kept) => kept,
        Err(error) => {
            tracing::error!(error = %with_causes(&error), "failed to store the upgraded key");
            return;
        }
    };
    if link.config.dps.is_some() {
        match super::dps::provision(&link.config, &identity.device_id, Some(key)).await {
            Ok(assigned) => identity = assigned,
            Err(error) => {
                link.reported.set(
                    "provisioning",
                    json!({ "status": "failed", "reason": error.to_string() }),
                );
                return;
            }
        }
    }
    if identity.host != upgrade.hub {
        identity.host = upgrade.hub.clone();
    }
    identity.credential = credential;
    if let Err(error) = identity.save_provisioned(&link.config.state_dir) {
        tracing::error!(%error, "failed to store the upgraded identity");
        return;
    }
    if let Err(error) = crate::mode::save(&link.config.state_dir, upgrade.mode) {
        tracing::error!(%error, "failed to store the upgraded mode");
        return;
    }
    link.set_identity(identity);
    let mut reported = offered;
    if let Some(map) = reported.as_object_mut() {
        map.insert("status".into(), json!("applied"));
    }
    link.reported.set("provisioning", reported);
    tracing::info!(hub = %upgrade.hub, "provisioning upgraded");
}
