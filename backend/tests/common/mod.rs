//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset of these helpers

pub mod rig;

use cloudpillar_backend::blob::{AzureBlobConfig, BlobConfig};

/// URL of the running Azurite blob service; the test fails when it is not configured.
pub fn azurite_url() -> String {
    std::env::var("CP_AZURITE_BLOB_URL").unwrap_or_else(|_| {
        panic!(
            "CP_AZURITE_BLOB_URL is not set: start Azurite with `k3s-dev/services/azurite start` \
             and export its last output line (k3s-dev/test does both)"
        )
    })
}

/// URL of the running MongoDB-compatible server; the test fails when it is not configured.
pub fn mongodb_url() -> String {
    std::env::var("CP_MONGODB_URL").unwrap_or_else(|_| {
        panic!(
            "CP_MONGODB_URL is not set: start FerretDB with `k3s-dev/services/ferretdb start` \
             and export its last output line (k3s-dev/test does both)"
        )
    })
}

/// Azure config for Azurite's development account.
pub fn azurite_config() -> BlobConfig {
    BlobConfig::Azure(AzureBlobConfig::azurite(azurite_url()))
}

/// Containers of their own on Azurite for one test (a unique name prefix), so checkpoints and
/// files of other tests and earlier runs stay out of the way.
pub async fn azurite_stores() -> cloudpillar_backend::blob::BlobStores {
    cloudpillar_backend::blob::BlobStores::open_prefixed(&azurite_config(), &unique("t"))
        .await
        .expect("azurite containers open")
}

/// A name unique to this test run, for containers, databases and device ids.
pub fn unique(prefix: &str) -> String {
    use rand::RngExt;
    let n: u32 = rand::rng().random();
    format!("{prefix}{n:08x}")
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Logs to the test output when `RUST_LOG` asks for it.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
