//! X.509 attestation: which enrollment a device certificate proves membership of, the registry
//! identity it earns, and the CA check for devices registered as `certificateAuthority`.
//!
//! As in DPS, the registration id is the certificate's subject common name. An individual
//! enrollment holds the device certificate itself (matched by thumbprint) and decides alone;
//! otherwise an enabled enrollment group whose signing certificate (root or intermediate)
//! the presented chain leads to covers the device.

use super::{Enrollment, X509, X509Certificates, individual_key};
use crate::core::Core;
use crate::error::{HubError, Refusal};
use crate::registry::{Authentication, SymmetricKey, X509Thumbprint};
use crate::store::ENROLLMENTS;
use crate::x509::{self, AttestationError};

/// Registry authentication type of devices whose certificate a CA signed.
pub const CERTIFICATE_AUTHORITY: &str = "certificateAuthority";

/// DPS answers every failed X.509 attestation with 401.
fn unauthorized(e: &AttestationError) -> HubError {
    Refusal::new(401, "Unauthorized", e.to_string()).into()
}

/// An enrollment group and its signing certificates (DER).
type GroupCas = (Enrollment, Vec<Vec<u8>>);

fn ders(certs: Option<&X509Certificates>) -> Vec<Vec<u8>> {
    certs
        .into_iter()
        .flat_map(X509Certificates::iter)
        .filter_map(|c| c.certificate.as_deref())
        .filter_map(|text| x509::decode_certificate(text).ok())
        .collect()
}

impl Core {
    /// Enabled X.509 enrollment groups with their signing certificates (DER).
    fn x509_groups(&self) -> Result<Vec<GroupCas>, HubError> {
        Ok(self
            .store
            .all::<Enrollment>(ENROLLMENTS)?
            .into_iter()
            .filter(|(key, e)| key.starts_with("group/") && e.is_enabled() && e.attests_with(X509))
            .map(|(_, e)| {
                let cas = ders(
                    e.attestation
                        .x509
                        .as_ref()
                        .and_then(|x| x.signing_certificates.as_ref()),
                );
                (e, cas)
            })
            .collect())
    }

    /// The X.509 enrollment `chain` (end entity first) proves membership of for
    /// `registration_id` at `now` (seconds since 1970), and the authentication the device gets
    /// in the registry: `selfSigned` with the enrolled thumbprints for an individual
    /// enrollment, `certificateAuthority` for a group. Refusals are 401.
    pub fn x509_enrollment_for(
        &self,
        registration_id: &str,
        chain: &[Vec<u8>],
        now: i64,
    ) -> Result<(Enrollment, Authentication), HubError> {
        let presented =
            x509::check_identity(chain, registration_id, now).map_err(|e| unauthorized(&e))?;
        if let Some(e) = self
            .store
            .get::<Enrollment>(ENROLLMENTS, &individual_key(registration_id))?
        {
            let enrolled = e
                .attestation
                .x509
                .as_ref()
                .and_then(|x| x.client_certificates.as_ref());
            let infos: Vec<_> = enrolled
                .into_iter()
                .flat_map(X509Certificates::iter)
                .filter_map(|c| c.info.as_ref())
                .collect();
            let matches = infos.iter().any(|i| {
                presented.thumbprints.iter().any(|t| {
                    t.eq_ignore_ascii_case(&i.sha1_thumbprint)
                        || t.eq_ignore_ascii_case(&i.sha256_thumbprint)
                })
            });
            if !e.is_enabled() || !e.attests_with(X509) || !matches {
                return Err(unauthorized(&AttestationError::NotEnrolledCertificate {
                    registration_id: registration_id.to_string(),
                }));
            }
            let thumbprint = |n: usize| infos.get(n).map(|i| i.sha256_thumbprint.clone());
            let authentication = Authentication {
                kind: "selfSigned".into(),
                symmetric_key: SymmetricKey::default(),
                x509_thumbprint: X509Thumbprint {
                    primary_thumbprint: thumbprint(0),
                    secondary_thumbprint: thumbprint(1),
                },
            };
            return Ok((e, authentication));
        }
        let groups = self.x509_groups()?;
        if groups.is_empty() {
            return Err(unauthorized(&AttestationError::NotEnrolled {
                registration_id: registration_id.to_string(),
            }));
        }
        let mut reason = String::new();
        for (group, cas) in groups {
            match x509::verify_chain(chain, &cas, now) {
                Ok(()) => {
                    let authentication = Authentication {
                        kind: CERTIFICATE_AUTHORITY.into(),
                        ..Authentication::default()
                    };
                    return Ok((group, authentication));
                }
                Err(why) => reason = why,
            }
        }
        Err(unauthorized(&AttestationError::UnknownCa {
            registration_id: registration_id.to_string(),
            reason,
        }))
    }

    /// Registers the holder of `chain` through its X.509 enrollment and assigns it to this
    /// hub. Returns the device id.
    pub async fn assign_x509(
        &self,
        registration_id: &str,
        chain: &[Vec<u8>],
    ) -> Result<String, HubError> {
        let now = chrono::Utc::now().timestamp();
        let (enrollment, authentication) = self.x509_enrollment_for(registration_id, chain, now)?;
        self.assign_as(registration_id, enrollment, authentication)
            .await
    }

    /// Checks the certificate chain of a `certificateAuthority` device connecting to the hub:
    /// its common name is the device id, it is valid now, and it leads to the signing
    /// certificate of an enabled X.509 enrollment group (the CAs this hub trusts).
    pub fn verify_ca_signed(&self, device_id: &str, chain: &[Vec<u8>]) -> Result<(), HubError> {
        let now = chrono::Utc::now().timestamp();
        x509::check_identity(chain, device_id, now).map_err(|e| unauthorized(&e))?;
        let cas: Vec<Vec<u8>> = self
            .x509_groups()?
            .into_iter()
            .flat_map(|(_, c)| c)
            .collect();
        x509::verify_chain(chain, &cas, now).map_err(|reason| {
            unauthorized(&AttestationError::UnknownCa {
                registration_id: device_id.to_string(),
                reason,
            })
        })
    }
}

/// Checks an X.509 enrollment before it is stored and fills in each certificate's `info`:
/// an individual enrollment needs a primary client certificate, a group a primary signing
/// certificate.
pub fn prepare(e: &mut Enrollment, individual: bool) -> Result<(), Refusal> {
    let x = e.attestation.x509.get_or_insert_with(Default::default);
    let (wanted, other, name) = if individual {
        (
            &mut x.client_certificates,
            &mut x.signing_certificates,
            "clientCertificates",
        )
    } else {
        (
            &mut x.signing_certificates,
            &mut x.client_certificates,
            "signingCertificates",
        )
    };
    *other = None;
    let certs = wanted
        .as_mut()
        .filter(|c| c.primary.is_some())
        .ok_or_else(|| Refusal::bad_request(format!("x509 attestation needs {name}.primary")))?;
    for slot in [&mut certs.primary, &mut certs.secondary]
        .into_iter()
        .flatten()
    {
        let text = slot
            .certificate
            .as_deref()
            .ok_or_else(|| Refusal::bad_request(format!("{name}: certificate missing")))?;
        let der = x509::decode_certificate(text)
            .map_err(|e| Refusal::bad_request(format!("{name}: {e}")))?;
        let info = x509::info(&der).map_err(|e| Refusal::bad_request(format!("{name}: {e}")))?;
        slot.info = Some(info);
    }
    e.attestation.symmetric_key = SymmetricKey::default();
    Ok(())
}
