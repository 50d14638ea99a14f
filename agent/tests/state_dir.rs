//! The state directory with the real binary: one agent at a time, private to its account.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use common::TestHub;
use common::process::{kill9, spawn_agent, wait_exit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_state_dir_exits_naming_the_holder_and_leaves_the_step() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        hub.agent_config("lock-1", dir.path(), "").await,
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    let mut first = spawn_agent(&config_path, &log);
    hub.wait_reported("lock-1", "connected", |r| r["health"] == "connected")
        .await;

    let counter = dir.path().join("count");
    let gate = dir.path().join("gate");
    let spec = json!({"id": "lock-steps", "patch": {"installSteps": [
        {"shell": "bash", "command": format!(
            "echo started >> {c}; while [ ! -e {g} ]; do sleep 0.05; done",
            c = counter.display(), g = gate.display())}]}});
    hub.patch_desired(
        "lock-1",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    wait_for(|| std::fs::read_to_string(&counter).is_ok_and(|t| t.contains("started"))).await;

    let second_log = dir.path().join("second.log");
    let mut second = spawn_agent(&config_path, &second_log);
    let status = wait_exit(&mut second, Duration::from_secs(20)).expect("second agent exits");
    assert!(!status.success(), "{status:?}");
    let said = std::fs::read_to_string(&second_log).unwrap();
    let state = dir.path().join("state");
    assert!(said.contains(&state.display().to_string()), "{said}");
    assert!(said.contains(&format!("pid {}", first.id())), "{said}");

    // The first agent and its step went on untouched.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        first.try_wait().unwrap().is_none(),
        "first agent still runs"
    );
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "started\n");
    std::fs::write(&gate, "").unwrap();
    hub.wait_reported("lock-1", "recipe success", |r| {
        r["changeSpec"]["Status"] == "Success"
    })
    .await;
    kill9(&mut first);

    // The kernel released the lock with the process: a new agent starts.
    let mut third = spawn_agent(&config_path, &log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        third.try_wait().unwrap().is_none(),
        "an agent starts after a kill -9"
    );
    kill9(&mut third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_dir_and_its_files_are_private_and_a_wide_dir_is_tightened() {
    let hub = TestHub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config_path = dir.path().join("agent.toml");
    // The local API secret is generated into the state dir, the TLS key and certificate too.
    let text = hub
        .agent_config("modes-1", dir.path(), "")
        .await
        .replace("secret_key_file", "# secret_key_file")
        .replace("[api]\n", "[api]\ntls = true\n");
    std::fs::write(&config_path, text).unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = spawn_agent(&config_path, &log);
    hub.wait_reported("modes-1", "connected", |r| r["health"] == "connected")
        .await;
    // A recipe makes journal, step records and reported state files.
    let spec = json!({"id": "modes", "patch": {"installSteps": [
        {"shell": "bash", "command": "true"}]}});
    hub.patch_desired(
        "modes-1",
        json!({"changeSpec": spec, "changeSign": hub.sign(&spec)}),
    )
    .await;
    hub.wait_reported("modes-1", "recipe success", |r| {
        r["changeSpec"]["Status"] == "Success"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    kill9(&mut agent);

    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("tightened to 0700"), "{said}");
    let mut seen = vec![];
    check_modes(&state, &state.join("work"), &mut seen);
    for name in ["agent.lock", "api-secret", "journal.json", "reported.json"] {
        assert!(seen.iter().any(|s| s == name), "{name} in {seen:?}");
    }
}

/// Every directory below `dir` (but the recipes' work dir) is 0700, every file 0600.
fn check_modes(dir: &Path, work: &Path, seen: &mut Vec<String>) {
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path == work {
            continue;
        }
        if path.is_dir() {
            check_modes(&path, work, seen);
        } else {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
}

async fn wait_for(check: impl Fn() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out");
}
