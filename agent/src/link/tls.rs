//! TLS client configuration for the hub and DPS (rustls with the ring provider).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// CA bundle used when the configuration names none.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("failed to read PEM file {path}")]
    Pem {
        /// File.
        path: PathBuf,
        /// Cause.
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("no CA certificate accepted from {path}")]
    NoRoots {
        /// File.
        path: PathBuf,
    },
    /// rustls refused the setup.
    #[error("failed to configure TLS")]
    Rustls(#[from] rustls::Error),
    /// The private key file is readable by others.
    #[error(transparent)]
    KeyFile(#[from] crate::config::KeyFileError),
}

/// A client configuration trusting the CAs in `ca_file` (or the system bundle), with an
/// optional client certificate and key for X.509 authentication.
pub fn client_config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let ca_path = ca_file.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let pem_err = |source| TlsError::Pem {
        path: ca_path.to_owned(),
        source,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_path).map_err(pem_err)? {
        let cert = cert.map_err(pem_err)?;
        if let Err(error) = roots.add(cert) {
            tracing::debug!(%error, "skipping a CA certificate");
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots {
            path: ca_path.to_owned(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            crate::config::read_secret_file(key_path)?;
            let cert_err = |source| TlsError::Pem {
                path: cert_path.to_owned(),
                source,
            };
            let chain = CertificateDer::pem_file_iter(cert_path)
                .map_err(cert_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(cert_err)?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Pem {
                path: key_path.to_owned(),
                source,
            })?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    Ok(Arc::new(config))
}
