//! `kill -9` of the agent binary during a shell step: the restarted agent ends the step's
//! process group before it runs the step again, and says so in the step's `ResultText`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use serde_json::json;

use common::TestHub;
use common::process::{kill9, spawn_agent, spawn_agent_with};

/// Live (not zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .collect();
        if fields[2] == pgid.to_string() && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}

/// Kills what a failed run of this test would leave behind: the agent and every step group
/// the marker names.
struct Cleanup {
    agent: Option<Child>,
    marker: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.as_mut() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        for pgid in starts(&self.marker) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn starts(marker: &Path) -> Vec<i32> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("start ")?.parse().ok())
        .collect()
}

async fn wait_for_starts(marker: &Path, count: usize) -> Vec<i32> {
    for _ in 0..400 {
        let found = starts(marker);
        if found.len() >= count {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the step did not start {count} times: {:?}",
        std::fs::read_to_string(marker)
    );
}

/// The records in `<state>/steps/`, as JSON.
fn step_records(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(state.join("steps"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_shell_step_ends_the_old_group_before_the_step_runs_again() {
    kill_9_during_a_step_then_restart("k9-5", &[], |records| {
        assert_eq!(
            records.len(),
            1,
            "the running step is recorded: {records:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_spawning_a_step_before_recording_its_group_ends_it_before_a_rerun() {
    let pause = [(
        cloudpillar_agent::engine::shell::PAUSE_AFTER_SPAWN_ENV,
        "120000",
    )];
    kill_9_during_a_step_then_restart("k9-6", &pause, |records| {
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(
            records[0]["pgid"].is_null(),
            "killed before the group was recorded: {records:?}"
        );
    })
    .await;
}

/// Starts a step under an agent started with `env`, checks the step records with
/// `at_kill` and kills the agent with SIGKILL, restarts it, and checks that the step ran
/// again only once its first run's group was gone.
async fn kill_9_during_a_step_then_restart(
    device: &str,
    env: &[(&str, &str)],
    at_kill: impl FnOnce(&[serde_json::Value]),
) {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("agent.toml");
    let extra = "[shell]\nstop_grace_secs = 3\n";
    let text = hub.agent_config(device, dir.path(), "").await;
    std::fs::write(&config_path, format!("{text}{extra}")).unwrap();
    let log = dir.path().join("agent.log");
    let (marker, gate) = (dir.path().join("marker"), dir.path().join("gate"));
    let mut cleanup = Cleanup {
        agent: Some(spawn_agent_with(&config_path, &log, env)),
        marker: marker.clone(),
    };
    hub.wait_reported(device, "connected", |r| r["health"] == "connected")
        .await;
    // Each run notes how many processes of the previous run's group are still alive, then
    // its own group id, then waits for the gate with a child process.
    let command = format!(
        r#"old=$(sed -n 's/^start //p' {m} 2>/dev/null | tail -n 1)
if [ -n "$old" ]; then
  n=$(cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$old" '$5 == g && $3 != "Z"' | wc -l)
  echo "old group $old had $n live processes" >> {m}
fi
echo "start $$" >> {m}
while [ ! -e {g} ]; do sleep 0.1; done"#,
        m = marker.display(),
        g = gate.display()
    );
    let spec = json!({"id": "k9-shell", "patch": {"installSteps": [
        {"shell": "bash", "command": command}]}});
    hub.patch_desired(
        device,
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    let first = wait_for_starts(&marker, 1).await[0];
    at_kill(&step_records(&dir.path().join("state")));
    kill9(cleanup.agent.as_mut().unwrap());
    assert!(
        !group_members(first).is_empty(),
        "the step's group outlives the killed agent"
    );

    cleanup.agent = Some(spawn_agent(&config_path, &log));
    let second = wait_for_starts(&marker, 2).await[1];
    let lines = std::fs::read_to_string(&marker).unwrap();
    assert!(
        lines.contains(&format!("old group {first} had 0 live processes")),
        "the step ran again only once the old group was gone: {lines}"
    );
    assert_eq!(starts(&marker), [first, second], "{lines}");
    assert!(group_members(first).is_empty());

    std::fs::write(&gate, "").unwrap();
    let reported = hub
        .wait_reported(device, "recipe success", |r| {
            r["changeSpec"]["Status"] == "Success"
        })
        .await;
    kill9(cleanup.agent.as_mut().unwrap());
    let step = &reported["changeSpec"]["patch"]["installSteps"][0];
    assert_eq!(step["ResultCode"], "0");
    let text = step["ResultText"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "process group {first} of the interrupted run was stopped with SIGTERM"
        )),
        "{text}"
    );
    assert_eq!(starts(&marker).len(), 2, "no third run");
}
