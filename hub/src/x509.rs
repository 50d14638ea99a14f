//! X.509 device certificates: what they say (common name, validity, thumbprints), how
//! enrollments carry them, and whether a presented chain leads to an enrollment group's CA.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::events::rfc3339;

/// A certificate could not be read.
#[derive(Debug, Error)]
pub enum CertificateError {
    /// The text is neither PEM nor base64 of a DER or PEM certificate.
    #[error("decoding certificate text (PEM, or base64 of DER or PEM)")]
    Decode,
    /// The DER bytes are not an X.509 certificate.
    #[error("parsing X.509 certificate")]
    Parse {
        /// The cause.
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
}

/// Why a presented certificate does not prove a device's identity.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AttestationError {
    /// The TLS client presented no certificate.
    #[error("no client certificate was presented")]
    NoCertificate,
    /// The presented certificate could not be parsed.
    #[error("the client certificate is not a readable X.509 certificate")]
    Unreadable,
    /// The subject common name is not the registration (device) id.
    #[error("certificate common name {found:?} is not {expected}")]
    CommonNameMismatch {
        /// The registration or device id asked for.
        expected: String,
        /// The common name found (empty when the subject has none).
        found: String,
    },
    /// The certificate's validity period is over.
    #[error("certificate expired at {not_after}")]
    Expired {
        /// End of validity, RFC 3339.
        not_after: String,
    },
    /// The certificate's validity period has not begun.
    #[error("certificate is not valid before {not_before}")]
    NotYetValid {
        /// Start of validity, RFC 3339.
        not_before: String,
    },
    /// No enabled X.509 enrollment covers the registration.
    #[error("no enabled X.509 enrollment covers {registration_id}")]
    NotEnrolled {
        /// The registration id.
        registration_id: String,
    },
    /// The individual enrollment holds other certificates.
    #[error("the certificate of {registration_id} is not one its enrollment holds")]
    NotEnrolledCertificate {
        /// The registration id.
        registration_id: String,
    },
    /// The chain does not lead to the signing certificate of any enabled enrollment group.
    #[error("the certificate of {registration_id} is not signed by a known CA: {reason}")]
    UnknownCa {
        /// The registration id.
        registration_id: String,
        /// What the chain check said.
        reason: String,
    },
}

/// Facts about a certificate, as DPS reports them in an enrollment's `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Subject distinguished name.
    pub subject_name: String,
    /// Upper-case hex SHA-1 of the DER certificate.
    pub sha1_thumbprint: String,
    /// Upper-case hex SHA-256 of the DER certificate.
    pub sha256_thumbprint: String,
    /// Issuer distinguished name.
    pub issuer_name: String,
    /// Start of validity, RFC 3339.
    pub not_before_utc: String,
    /// End of validity, RFC 3339.
    pub not_after_utc: String,
    /// Serial number, hex.
    pub serial_number: String,
    /// X.509 version (3 for v3).
    pub version: u32,
}

/// The parts of a device certificate that decide whether it may register or connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// Subject common name.
    pub common_name: Option<String>,
    /// Start of validity, seconds since 1970.
    pub not_before: i64,
    /// End of validity, seconds since 1970.
    pub not_after: i64,
    /// Lower-case hex SHA-1 and SHA-256 thumbprints.
    pub thumbprints: [String; 2],
}

/// Reads certificate text as Azure's enrollment APIs accept it: PEM, or base64 of a DER or
/// PEM certificate. Returns the DER bytes.
pub fn decode_certificate(text: &str) -> Result<Vec<u8>, CertificateError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return CertificateDer::from_pem_slice(text.as_bytes())
            .map(|c| c.to_vec())
            .map_err(|_| CertificateError::Decode);
    }
    let compact: String = text.split_whitespace().collect();
    let bytes = STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| CertificateError::Decode)?;
    if bytes.starts_with(b"-----BEGIN") {
        return CertificateDer::from_pem_slice(&bytes)
            .map(|c| c.to_vec())
            .map_err(|_| CertificateError::Decode);
    }
    Ok(bytes)
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertificateError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|source| CertificateError::Parse { source })
}

fn utc(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0).map_or_else(String::new, rfc3339)
}

/// The `info` DPS reports for a certificate.
pub fn info(der: &[u8]) -> Result<CertificateInfo, CertificateError> {
    let cert = parse(der)?;
    let [sha1, sha256] = crate::tls::thumbprints(der);
    Ok(CertificateInfo {
        subject_name: cert.subject().to_string(),
        sha1_thumbprint: sha1.to_ascii_uppercase(),
        sha256_thumbprint: sha256.to_ascii_uppercase(),
        issuer_name: cert.issuer().to_string(),
        not_before_utc: utc(cert.validity().not_before.timestamp()),
        not_after_utc: utc(cert.validity().not_after.timestamp()),
        serial_number: cert
            .raw_serial_as_string()
            .replace(':', "")
            .to_ascii_uppercase(),
        version: cert.version().0 + 1,
    })
}

/// Reads the identity-relevant parts of a device certificate.
pub fn device_certificate(der: &[u8]) -> Result<DeviceCertificate, CertificateError> {
    let cert = parse(der)?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(DeviceCertificate {
        common_name,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        thumbprints: crate::tls::thumbprints(der),
    })
}

/// Checks that the end-entity certificate of `chain` names `expected` as its common name and
/// is valid at `now` (seconds since 1970).
pub fn check_identity(
    chain: &[Vec<u8>],
    expected: &str,
    now: i64,
) -> Result<DeviceCertificate, AttestationError> {
    let leaf = chain.first().ok_or(AttestationError::NoCertificate)?;
    let cert = device_certificate(leaf).map_err(|_| AttestationError::Unreadable)?;
    if cert.common_name.as_deref() != Some(expected) {
        return Err(AttestationError::CommonNameMismatch {
            expected: expected.to_string(),
            found: cert.common_name.unwrap_or_default(),
        });
    }
    if now > cert.not_after {
        return Err(AttestationError::Expired {
            not_after: utc(cert.not_after),
        });
    }
    if now < cert.not_before {
        return Err(AttestationError::NotYetValid {
            not_before: utc(cert.not_before),
        });
    }
    Ok(cert)
}

/// Checks that `chain` (end entity first, then any intermediates the client sent) leads to
/// one of `anchors` (DER CA certificates) for client authentication at `now`.
pub fn verify_chain(chain: &[Vec<u8>], anchors: &[Vec<u8>], now: i64) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate presented")?;
    let anchor_ders: Vec<CertificateDer<'_>> = anchors
        .iter()
        .map(|a| CertificateDer::from(a.as_slice()))
        .collect();
    let trust: Vec<_> = anchor_ders
        .iter()
        .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
        .collect();
    if trust.is_empty() {
        return Err("no enabled enrollment group holds a signing certificate".into());
    }
    let leaf = CertificateDer::from(leaf.as_slice());
    let end_entity = webpki::EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
    let intermediates: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or(0),
    ));
    end_entity
        .verify_for_usage(
            provider().signature_verification_algorithms.all,
            &trust,
            &intermediates,
            time,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    crate::tls::provider()
}
