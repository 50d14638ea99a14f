//! Backend throughput figures, printed (not asserted):
//!
//! - one 256 MiB file streamed through the embedded edge hub to one device;
//! - 100 devices downloading at once: aggregate rate and how evenly they progress;
//! - writer records per second into the MongoDB at `CP_MONGODB_URL` (skipped when unset), next
//!   to two ceilings: the same records inserted directly, and small plain documents.
//!
//! The device side takes messages off the hub's durable C2D queue and completes them, as the
//! hub's MQTT endpoint does on a device's acknowledgement; MQTT transport costs are not in
//! these figures. Each figure is measured `CP_BENCH_RUNS` times (default 3) and summarised as
//! min / median / max, with the CPU time the whole process used, which varies much less than
//! wall time on a shared machine.
//!
//! Settings: `CP_BENCH_ONLY` (comma list of `stream`, `many`, `writer`), `CP_BENCH_FILE_MIB`,
//! `CP_BENCH_RECORDS`, and streamer tuning `CP_BENCH_MAX_PENDING`, `CP_BENCH_SEND_AHEAD`.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

// The tests' hub rig; the benchmark uses only part of it.
#[allow(dead_code)]
#[path = "../tests/common/rig.rs"]
mod rig;
#[path = "backend/streaming.rs"]
mod streaming;
#[path = "backend/writing.rs"]
mod writing;

use std::time::Instant;

use cloudpillar_backend::streamer::StreamerOptions;

/// A number from the environment, or `default`.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Streamer options as the services run them, with the tuning overrides applied.
fn streamer_options() -> StreamerOptions {
    let defaults = StreamerOptions::default();
    StreamerOptions {
        max_pending: env_number("CP_BENCH_MAX_PENDING", defaults.max_pending as u64) as usize,
        send_ahead: env_number("CP_BENCH_SEND_AHEAD", defaults.send_ahead as u64) as usize,
        ..defaults
    }
}

/// CPU seconds (user and system) this process has used so far; Linux only.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th,
    // in clock ticks of 1/100 s (USER_HZ).
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// Wall and CPU time of one measured stretch.
struct Meter {
    wall: Instant,
    cpu: f64,
}

impl Meter {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    /// Seconds of wall time and of CPU time since the start.
    fn stop(&self) -> (f64, f64) {
        (self.wall.elapsed().as_secs_f64(), cpu_seconds() - self.cpu)
    }
}

/// Prints `min / median / max` of one figure over the runs.
fn summarise(name: &str, unit: &str, mut values: Vec<f64>) {
    if values.is_empty() {
        return;
    }
    values.sort_by(f64::total_cmp);
    let (min, max) = (values[0], values[values.len() - 1]);
    let median = values[values.len() / 2];
    println!(
        "  {name}: min {min:.1} / median {median:.1} / max {max:.1} {unit} ({} runs)",
        values.len()
    );
}

fn wanted(part: &str) -> bool {
    std::env::var("CP_BENCH_ONLY")
        .map(|only| only.split(',').any(|p| p.trim() == part))
        .unwrap_or(true)
}

#[tokio::main]
async fn main() {
    let runs = env_number("CP_BENCH_RUNS", 3).max(1) as usize;
    if wanted("stream") {
        streaming::one_large_file(runs).await;
    }
    if wanted("many") {
        streaming::many_devices(runs).await;
    }
    if wanted("writer") {
        writing::writer_rate(runs).await;
    }
}
