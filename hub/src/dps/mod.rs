//! Device provisioning in DPS's dialect: enrollments, registration and assignment to this hub.

pub mod mqtt;
pub mod rest;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::Core;
use crate::error::{HubError, Refusal};
use crate::registry::{Authentication, DeviceRecord, SymmetricKey, X509Thumbprint};
use crate::sas::derive_device_key;
use crate::store::ENROLLMENTS;

/// Symmetric-key attestation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    /// `symmetricKey` (others are not implemented).
    #[serde(rename = "type")]
    pub kind: String,
    /// Keys, generated when omitted.
    #[serde(default)]
    pub symmetric_key: SymmetricKey,
}

/// An individual enrollment (`registrationId` set) or an enrollment group
/// (`enrollmentGroupId` set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    /// Individual enrollment id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_id: Option<String>,
    /// Group enrollment id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_group_id: Option<String>,
    /// How devices prove who they are.
    pub attestation: Attestation,
    /// Device id to assign (individual only; defaults to the registration id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `{"tags":{..},"properties":{"desired":{..}}}` applied to a new device's twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_twin: Option<Value>,
    /// `enabled` or `disabled`.
    #[serde(default = "enabled")]
    pub provisioning_status: String,
}

fn enabled() -> String {
    "enabled".into()
}

/// Store key of an individual enrollment.
pub fn individual_key(id: &str) -> String {
    format!("individual/{id}")
}

/// Store key of an enrollment group.
pub fn group_key(id: &str) -> String {
    format!("group/{id}")
}

impl Core {
    /// The enrollment that covers `registration_id` and the device key it implies: its own
    /// individual enrollment first, else the first enabled group (key derived per device).
    pub fn enrollment_for(
        &self,
        registration_id: &str,
    ) -> Result<Option<(Enrollment, Vec<String>)>, HubError> {
        let keys_of = |k: &SymmetricKey| -> Vec<String> {
            [&k.primary_key, &k.secondary_key]
                .into_iter()
                .flatten()
                .cloned()
                .collect()
        };
        if let Some(e) = self
            .store
            .get::<Enrollment>(ENROLLMENTS, &individual_key(registration_id))?
        {
            let keys = keys_of(&e.attestation.symmetric_key);
            return Ok(Some((e, keys)));
        }
        for (key, group) in self.store.all::<Enrollment>(ENROLLMENTS)? {
            if key.starts_with("group/") && group.provisioning_status == "enabled" {
                let keys = keys_of(&group.attestation.symmetric_key)
                    .iter()
                    .filter_map(|k| derive_device_key(k, registration_id).ok())
                    .collect();
                return Ok(Some((group, keys)));
            }
        }
        Ok(None)
    }

    /// Assigns a registration to this hub: creates (or refreshes the keys of) the device and
    /// applies the enrollment's initial twin to a new device. Returns the device id.
    pub async fn assign(&self, registration_id: &str) -> Result<String, HubError> {
        let (enrollment, keys) = self
            .enrollment_for(registration_id)?
            .ok_or_else(|| Refusal::new(404, "EnrollmentNotFound", registration_id.to_string()))?;
        let device_id = enrollment
            .device_id
            .clone()
            .unwrap_or_else(|| registration_id.to_string());
        let existing = self.get_device(&device_id).ok();
        let wanted = DeviceRecord {
            device_id: device_id.clone(),
            generation_id: String::new(),
            etag: String::new(),
            status: "enabled".into(),
            status_reason: None,
            authentication: Authentication {
                kind: "sas".into(),
                symmetric_key: SymmetricKey {
                    primary_key: keys.first().cloned(),
                    secondary_key: keys.get(1).cloned(),
                },
                x509_thumbprint: X509Thumbprint::default(),
            },
            connection_state: "Disconnected".into(),
            status_updated_time: String::new(),
            last_activity_time: String::new(),
            cloud_to_device_message_count: 0,
            revision: 0,
        };
        let if_match = existing.as_ref().map(|_| "*".to_string());
        self.put_device(&device_id, wanted, if_match).await?;
        if existing.is_none()
            && let Some(initial) = enrollment.initial_twin
        {
            self.write_twin(&device_id, initial, None, false).await?;
        }
        tracing::info!(registration_id, device_id, "provisioned via DPS");
        Ok(device_id)
    }
}
