//! CloudPillar backend services, run as roles of the `cloudpillar` binary.
//!
//! - [`blob`]: blob containers for patch files, uploads and service state (filesystem or Azure).
//! - [`hub_link`]: the hub's event stream and C2D sends, as the services use them.
//! - [`checkpoint`] and [`partition`]: durable consumer positions and the device split
//!   between replicas.
//! - [`keys`]: the key holder (`SignRecipe`, `SignBlob`, published keys, rotation).
//! - [`streamer`]: file range requests to C2D chunks, uploads into the upload container.
//! - [`writer`]: twin changes, state transitions and D2C records into MongoDB.
//! - [`roles`]: settings and entry points the `cloudpillar` binary runs.

pub mod backoff;
pub mod blob;
pub mod checkpoint;
pub mod hub_link;
pub mod keys;
pub mod messages;
pub mod partition;
pub mod roles;
pub mod streamer;
pub mod writer;

/// Installs ring as the process's rustls provider when none is installed yet (TLS for Azure,
/// Key Vault and the hub's REST API uses rustls without a bundled provider).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for the services' outgoing calls, with the ring TLS provider installed.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    install_tls_provider();
    reqwest::Client::builder().build()
}
