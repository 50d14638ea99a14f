//! TLS for both endpoints: a supplied certificate, or a development CA and server certificate
//! generated once under the data directory. Client certificates are requested but optional;
//! the MQTT endpoint matches their thumbprint against the registry, as IoT Hub does for
//! self-signed device certificates.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::error::StartError;

/// File name of the generated development CA certificate under the data directory.
pub const DEV_CA_FILE: &str = "dev-ca.pem";

fn tls_err(what: impl std::fmt::Display) -> StartError {
    StartError::Tls {
        what: what.to_string(),
    }
}

fn write(path: &Path, text: &str) -> Result<(), StartError> {
    std::fs::write(path, text).map_err(|source| StartError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Loads `(cert chain PEM, key PEM)` files, or generates (once) a development CA and a server
/// certificate for `localhost`, `127.0.0.1`, `::1` and `hostname` under `dir`.
pub fn server_material(
    dir: &Path,
    supplied: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), StartError> {
    let (cert_path, key_path) = match supplied {
        Some((c, k)) => (c.clone(), k.clone()),
        None => {
            let (c, k) = (dir.join("dev-server.pem"), dir.join("dev-server.key"));
            if !c.exists() || !k.exists() {
                generate_dev(dir, hostname)?;
            }
            (c, k)
        }
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .map_err(tls_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_err)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(tls_err)?;
    Ok((chain, key))
}

fn generate_dev(dir: &Path, hostname: &str) -> Result<(), StartError> {
    let ca_key = KeyPair::generate().map_err(tls_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "CloudPillar edge hub development CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls_err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let names = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        hostname.into(),
    ];
    let mut params = CertificateParams::new(names).map_err(tls_err)?;
    params.distinguished_name.push(DnType::CommonName, hostname);
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(tls_err)?;

    write(&dir.join(DEV_CA_FILE), &ca_cert.pem())?;
    write(&dir.join("dev-server.pem"), &cert.pem())?;
    let key_path = dir.join("dev-server.key");
    write(&key_path, &key.serialize_pem())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| StartError::Write {
                path: key_path.display().to_string(),
                source,
            },
        )?;
    }
    tracing::info!(ca = %dir.join(DEV_CA_FILE).display(), "generated development TLS CA");
    Ok(())
}

/// A rustls server configuration (ring provider) that asks for, but does not require, a
/// client certificate.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: bool,
) -> Result<Arc<ServerConfig>, StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = if client_auth {
        builder.with_client_cert_verifier(Arc::new(AnyClientCert {
            algorithms: provider.signature_verification_algorithms,
        }))
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(chain, key).map_err(tls_err)?;
    Ok(Arc::new(config))
}

/// Accepts any client certificate whose holder proves possession of its key; the registry
/// thumbprint check decides who it is.
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Lower-case hex SHA-1 and SHA-256 thumbprints of a DER certificate.
pub fn thumbprints(der: &[u8]) -> [String; 2] {
    [hex(&Sha1::digest(der)), hex(&Sha256::digest(der))]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ring crypto provider, for callers building their own configurations.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
