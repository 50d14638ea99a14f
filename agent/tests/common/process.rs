//! The agent binary as a separate process, for tests that kill it with SIGKILL.

use std::path::Path;
use std::process::{Child, Command, ExitStatus};

/// Starts the agent binary with `config`, appending its log and errors to `log`.
pub fn spawn_agent(config: &Path, log: &Path) -> Child {
    spawn_agent_with(config, log, &[])
}

/// Starts the agent binary with `config` and the extra environment `env`, appending its log
/// to `log`.
pub fn spawn_agent_with(config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_cloudpillar-agent"))
        .arg("--config")
        .arg(config)
        .env("CP_AGENT_LOG", "info")
        .envs(env.iter().copied())
        // The agent logs to stdout; errors at start go to stderr.
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `kill -9` of the agent, then reaps it.
pub fn kill9(child: &mut Child) {
    // std's kill sends SIGKILL on Unix.
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Waits up to `within` for the agent to exit by itself.
pub fn wait_exit(child: &mut Child, within: std::time::Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}
