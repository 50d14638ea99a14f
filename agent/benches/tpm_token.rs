//! SAS token signing with the device key in a TPM (`swtpm` on loopback) against the key in
//! memory: import time, then per-token latency over a number of tokens. Prints figures; no
//! target is asserted. Exits with a note when `swtpm` is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use cloudpillar_agent::keystore::{DeviceKey, TpmKey};

const TOKENS: usize = 200;
const RESOURCE: &str = "myhub.azure-devices.net/devices/bench-1";

/// Minimum, median and maximum of `samples`, in milliseconds.
fn spread(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:.3} ms, median {:.3} ms, max {:.3} ms",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    )
}

async fn sign_many(key: &DeviceKey) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(TOKENS);
    for expiry in 0..TOKENS as u64 {
        let started = Instant::now();
        key.token(RESOURCE, 1_900_000_000 + expiry, None)
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    samples
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let Some(swtpm) = common::swtpm::Swtpm::start(dir.path()) else {
        return;
    };
    let mut bytes = [0u8; 64];
    rand::fill(&mut bytes);
    let tpm = TpmKey {
        tcti: swtpm.tcti(),
        handle: 0x8100_0C01,
    };

    let started = Instant::now();
    let importing = tpm.clone();
    tokio::task::spawn_blocking(move || importing.import(&bytes))
        .await
        .unwrap()
        .unwrap();
    println!(
        "import of a 64-byte key: {:.1} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );

    let plain = DeviceKey::Plain(cloudpillar_protocol::encoding::encode_base64(&bytes));
    println!(
        "{TOKENS} tokens, key in memory: {}",
        spread(sign_many(&plain).await)
    );
    let held = DeviceKey::Tpm(tpm);
    println!(
        "{TOKENS} tokens, key in swtpm: {}",
        spread(sign_many(&held).await)
    );
}
