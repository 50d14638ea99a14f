//! SIGTERM of the agent binary during a shell step: the step's process group is stopped,
//! the agent exits 0, and the next start runs the step again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use common::TestHub;
use common::process::{kill9, spawn_agent, wait_exit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_step_group_exits_0_and_the_next_start_runs_the_step_again() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        hub.agent_config("term-1", dir.path(), "").await,
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = spawn_agent(&config_path, &log);
    hub.wait_reported("term-1", "connected", |r| r["health"] == "connected")
        .await;

    // The first run leaves a background sleep and waits on another; the second ends at once.
    let runs = dir.path().join("runs");
    let spec = json!({"id": "term-steps", "patch": {"installSteps": [
        {"shell": "bash", "command": format!(
            "echo $$ >> {r}; if [ $(wc -l < {r}) -lt 2 ]; then sleep 300 & sleep 300; fi",
            r = runs.display())}]}});
    hub.patch_desired(
        "term-1",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    let leader = wait_for(|| {
        let text = std::fs::read_to_string(&runs).ok()?;
        text.lines().next()?.trim().parse::<i32>().ok()
    })
    .await;
    wait_for(|| (group_members(leader).len() >= 3).then_some(())).await;

    kill(
        Pid::from_raw(i32::try_from(agent.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut agent, Duration::from_secs(30)).expect("agent exits");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(
        group_members(leader),
        Vec::<i32>::new(),
        "step processes left"
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("agent stopped"), "{said}");

    let mut agent = spawn_agent(&config_path, &log);
    let reported = hub
        .wait_reported("term-1", "recipe success", |r| {
            r["changeSpec"]["Status"] == "Success"
        })
        .await;
    kill9(&mut agent);
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 2);
    let text = reported["changeSpec"]["patch"]["installSteps"][0]["ResultText"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        text.starts_with(&format!(
            "process group {leader} was stopped with SIGTERM when the agent stopped; "
        )),
        "{text}"
    );
}

/// Live processes of process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            cloudpillar_agent::engine::groups::stat(*pid)
                .is_some_and(|s| s.pgrp == pgid && !matches!(s.state, 'Z' | 'X'))
        })
        .collect()
}

async fn wait_for<T>(check: impl Fn() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(value) = check() {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out");
}
