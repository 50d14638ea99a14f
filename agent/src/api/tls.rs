//! A self-generated certificate for the optional HTTPS local API, kept in the state dir.

use std::path::{Path, PathBuf};

use axum_server::tls_rustls::RustlsConfig;

/// Errors preparing the certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generation failed.
    #[error("failed to generate a certificate")]
    Generate(#[from] rcgen::Error),
    /// Files could not be written or read.
    #[error("failed to store or load the certificate in {dir}")]
    Io {
        /// Directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Certificate file name inside the TLS dir (clients pin it).
pub const CERT_FILE: &str = "api-cert.pem";
const KEY_FILE: &str = "api-key.pem";

/// Creates (once) a self-signed certificate for `localhost`, `127.0.0.1` and `::1` in `dir`
/// and returns a rustls server configuration using it.
pub async fn server_config(dir: &Path) -> Result<RustlsConfig, TlsError> {
    let io = |source| TlsError::Io {
        dir: dir.to_owned(),
        source,
    };
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !cert_path.exists() || !key_path.exists() {
        let names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let cert = rcgen::generate_simple_self_signed(names)?;
        crate::state_dir::create_private_dir(dir).map_err(io)?;
        write_private(&key_path, cert.signing_key.serialize_pem().as_bytes()).map_err(io)?;
        crate::durable::write_atomic(&cert_path, cert.cert.pem().as_bytes())
            .map_err(|e| io(std::io::Error::other(e)))?;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    RustlsConfig::from_pem_file(&cert_path, &key_path)
        .await
        .map_err(io)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
