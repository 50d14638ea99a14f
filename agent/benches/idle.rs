//! Idle footprint of the agent binary connected to an edge hub: resident memory, CPU time
//! over an idle window, and the size of the (release, stripped) binary. Prints figures;
//! targets (RSS under 15 MiB, CPU near zero, binary under 20 MiB) are read, not asserted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::main]
async fn main() {
    let hub = common::TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, hub.agent_config("bench-1", dir.path(), "").await).unwrap();
    let binary = env!("CARGO_BIN_EXE_cloudpillar-agent");
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .env("CP_AGENT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    hub.wait_reported("bench-1", "connected", |r| r["health"] == "connected")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let pid = child.id();
    let idle = Duration::from_secs(10);
    let before = cpu_ticks(pid);
    tokio::time::sleep(idle).await;
    let ticks = cpu_ticks(pid) - before;
    let rss_kib = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
    child.kill().unwrap();
    child.wait().unwrap();

    let size = std::fs::metadata(binary).unwrap().len();
    println!(
        "agent idle RSS: {:.1} MiB (target < 15 MiB)",
        rss_kib as f64 / 1024.0
    );
    println!(
        "agent idle CPU: {ticks} ticks in {} s ({:.2} % of one core at 100 ticks/s; target near 0)",
        idle.as_secs(),
        ticks as f64 / idle.as_secs_f64()
    );
    println!(
        "agent binary: {:.1} MiB at {binary} (target < 20 MiB stripped)",
        size as f64 / 1048576.0
    );
}
