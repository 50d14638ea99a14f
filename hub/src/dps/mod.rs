//! Device provisioning in DPS's dialect: enrollments, registration and assignment to this hub.

pub mod attest;
pub mod mqtt;
pub mod rest;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::Core;
use crate::error::{HubError, Refusal};
use crate::registry::{Authentication, DeviceRecord, SymmetricKey, X509Thumbprint};
use crate::sas::derive_device_key;
use crate::store::ENROLLMENTS;

/// How an enrollment's devices prove who they are: `symmetricKey` or `x509`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    /// `symmetricKey` or `x509` (TPM is not implemented).
    #[serde(rename = "type")]
    pub kind: String,
    /// Keys for `symmetricKey`, generated when omitted.
    #[serde(default, skip_serializing_if = "SymmetricKey::is_unset")]
    pub symmetric_key: SymmetricKey,
    /// Certificates for `x509`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Attestation>,
}

/// Attestation type of symmetric-key enrollments.
pub const SYMMETRIC_KEY: &str = "symmetricKey";
/// Attestation type of X.509 enrollments.
pub const X509: &str = "x509";

/// X.509 attestation: the device certificates themselves (individual enrollments) or the CA
/// certificates that sign them (enrollment groups).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Attestation {
    /// Device certificates of an individual enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificates: Option<X509Certificates>,
    /// CA (root or intermediate) certificates of an enrollment group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_certificates: Option<X509Certificates>,
}

/// A primary and an optional secondary certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Certificates {
    /// Primary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<X509CertificateWithInfo>,
    /// Secondary certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<X509CertificateWithInfo>,
}

impl X509Certificates {
    /// The certificates present, primary first.
    pub fn iter(&self) -> impl Iterator<Item = &X509CertificateWithInfo> {
        self.primary.iter().chain(self.secondary.iter())
    }
}

/// A certificate as written (PEM, or base64 of DER or PEM) and the facts read from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509CertificateWithInfo {
    /// The certificate text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Filled in by the hub when the enrollment is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<crate::x509::CertificateInfo>,
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

impl Enrollment {
    /// Whether devices may register through this enrollment.
    pub fn is_enabled(&self) -> bool {
        self.provisioning_status == "enabled"
    }

    /// Whether this enrollment attests with `kind` (`symmetricKey` or `x509`).
    pub fn attests_with(&self, kind: &str) -> bool {
        self.attestation.kind == kind
    }
}

impl Core {
    /// The symmetric-key enrollment that covers `registration_id` and the device keys it
    /// implies: its own individual enrollment first, else the first enabled symmetric-key
    /// group (key derived per device).
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
            // An individual enrollment decides alone, as in DPS.
            if !e.attests_with(SYMMETRIC_KEY) {
                return Ok(None);
            }
            let keys = keys_of(&e.attestation.symmetric_key);
            return Ok(Some((e, keys)));
        }
        for (key, group) in self.store.all::<Enrollment>(ENROLLMENTS)? {
            if key.starts_with("group/") && group.is_enabled() && group.attests_with(SYMMETRIC_KEY)
            {
                let keys = keys_of(&group.attestation.symmetric_key)
                    .iter()
                    .filter_map(|k| derive_device_key(k, registration_id).ok())
                    .collect();
                return Ok(Some((group, keys)));
            }
        }
        Ok(None)
    }

    /// Assigns a symmetric-key registration to this hub; see [`Core::assign_as`].
    pub async fn assign(&self, registration_id: &str) -> Result<String, HubError> {
        let (enrollment, keys) = self
            .enrollment_for(registration_id)?
            .ok_or_else(|| Refusal::new(404, "EnrollmentNotFound", registration_id.to_string()))?;
        let authentication = Authentication {
            kind: "sas".into(),
            symmetric_key: SymmetricKey {
                primary_key: keys.first().cloned(),
                secondary_key: keys.get(1).cloned(),
            },
            x509_thumbprint: X509Thumbprint::default(),
        };
        self.assign_as(registration_id, enrollment, authentication)
            .await
    }

    /// Assigns a registration to this hub: creates (or refreshes the credentials of) the
    /// device with `authentication` and applies the enrollment's initial twin to a new
    /// device. Returns the device id.
    pub async fn assign_as(
        &self,
        registration_id: &str,
        enrollment: Enrollment,
        authentication: Authentication,
    ) -> Result<String, HubError> {
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
            authentication,
            connection_state: "Disconnected".into(),
            status_updated_time: String::new(),
            connection_state_updated_time: String::new(),
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
