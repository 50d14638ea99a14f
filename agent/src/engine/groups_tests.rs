use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use super::groups::*;

const GRACE: Duration = Duration::from_secs(10);

fn spawn_group(script: &str) -> Child {
    Command::new("bash")
        .args(["-c", script])
        .process_group(0)
        .spawn()
        .expect("spawn")
}

/// Writes a record as a previous agent process (another owner) would have.
fn left_by_a_previous_agent(groups_dir: &std::path::Path, child: &Child, start_ticks: u64) {
    let pgid = i32::try_from(child.id()).expect("pid");
    write_left(groups_dir, "", Some((pgid, start_ticks)));
}

/// Writes `steps/left.json` of run `run` and `group` (pgid, leader start) for another owner.
fn write_left(dir: &std::path::Path, run: &str, group: Option<(i32, u64)>) {
    let record = GroupRecord {
        recipe: "r1".into(),
        step: "changeSpec.patch.installSteps[0]".into(),
        run: run.into(),
        pgid: group.map(|g| g.0),
        start_ticks: group.map(|g| g.1),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .expect("boot id")
            .trim()
            .to_owned(),
        owner: 0,
        stopped: None,
    };
    crate::durable::write_json(&dir.join("steps/left.json"), &record).expect("record");
}

fn running(child: &Child) -> bool {
    let pid = i32::try_from(child.id()).expect("pid");
    stat(pid).is_some_and(|s| s.state != 'Z')
}

#[test]
fn stat_lines_parse_with_spaces_and_parentheses_in_the_name() {
    let line = "4242 (my (odd) name) S 1 4240 4240 0 -1 4194560 90 0 0 0 1 2 0 0 20 0 1 0 \
                987654 2359296 200 18446744073709551615";
    let parsed = parse_stat(line).expect("parses");
    assert_eq!(
        parsed,
        ProcStat {
            state: 'S',
            pgrp: 4240,
            start_ticks: 987_654
        }
    );
    assert_eq!(parse_stat("4242 (truncated) S 1"), None);
}

#[tokio::test]
async fn a_leftover_group_is_stopped_with_sigterm_and_its_record_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_group("sleep 30 & sleep 30; wait");
    let pid = i32::try_from(child.id()).expect("pid");
    let start = stat(pid).expect("stat").start_ticks;
    left_by_a_previous_agent(dir.path(), &child, start);

    let groups = Groups::new(dir.path(), GRACE);
    let found = groups.end_leftovers(Duration::from_secs(5)).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].recipe, "r1");
    assert_eq!(found[0].step, "changeSpec.patch.installSteps[0]");
    assert!(found[0].text.contains("stopped with SIGTERM"), "{found:?}");
    assert!(!running(&child));
    let _ = child.wait();
    assert!(!dir.path().join("steps/left.json").exists());
}

#[tokio::test]
async fn a_group_that_ignores_sigterm_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_group("trap '' TERM; sleep 30");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = i32::try_from(child.id()).expect("pid");
    left_by_a_previous_agent(dir.path(), &child, stat(pid).expect("stat").start_ticks);

    let found = Groups::new(dir.path(), GRACE)
        .end_leftovers(Duration::from_millis(300))
        .await;
    assert!(
        found[0].text.contains("was killed 300ms after SIGTERM"),
        "{found:?}"
    );
    assert!(!running(&child));
    let _ = child.wait();
}

#[tokio::test]
async fn a_pid_with_another_start_time_is_never_signalled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_group("sleep 30");
    let pid = i32::try_from(child.id()).expect("pid");
    // The recorded leader started earlier: this pid now belongs to another process.
    let start = stat(pid).expect("stat").start_ticks;
    left_by_a_previous_agent(dir.path(), &child, start.saturating_sub(1));

    let found = Groups::new(dir.path(), GRACE)
        .end_leftovers(Duration::from_millis(300))
        .await;
    assert!(found[0].text.contains("another process"), "{found:?}");
    assert!(running(&child), "a stranger's process is left alone");
    child.kill().expect("kill");
    let _ = child.wait();
}

#[tokio::test]
async fn records_of_this_agent_process_are_left_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_group("sleep 30");
    let groups = Groups::new(dir.path(), GRACE);
    let run = groups
        .intend("r1", "changeSpec.patch.installSteps[0]")
        .expect("intend");
    groups
        .record("r1", "changeSpec.patch.installSteps[0]", &run, child.id())
        .expect("record");
    assert!(
        groups
            .end_leftovers(Duration::from_millis(300))
            .await
            .is_empty()
    );
    assert!(running(&child));
    groups.clear("r1", "changeSpec.patch.installSteps[0]");
    assert!(
        std::fs::read_dir(dir.path().join("steps"))
            .expect("dir")
            .next()
            .is_none()
    );
    child.kill().expect("kill");
    let _ = child.wait();
}

/// A previous agent process recorded the step's intent, started it with its run name and was
/// killed before it recorded the group.
fn started_but_unrecorded(dir: &std::path::Path, run: &str, script: &str) -> Child {
    write_left(dir, run, None);
    Command::new("bash")
        .args(["-c", script])
        .env(RUN_ENV, run)
        .process_group(0)
        .spawn()
        .expect("spawn")
}

/// Group leaders other than `pgid` that carry `run`.
fn escaped_children(pgid: i32, run: &str) -> Vec<i32> {
    (std::fs::read_dir("/proc").expect("proc"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| stat(*pid).is_some_and(|s| s.pgrp == *pid && *pid != pgid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|e| e.windows(run.len()).any(|w| w == run.as_bytes()))
        })
        .collect()
}

#[tokio::test]
async fn a_step_started_but_not_recorded_is_found_by_its_run_name_and_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A child that leaves the step's group still carries the run name.
    let run = "0123456789abcdef0123456789abcdef";
    let mut child = started_but_unrecorded(dir.path(), run, "setsid sleep 30 & sleep 30; wait");
    let pgid = i32::try_from(child.id()).expect("pid");
    let mut escaped = Vec::new();
    for _ in 0..100 {
        escaped = escaped_children(pgid, run);
        if !escaped.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        escaped.len(),
        1,
        "the setsid child runs in a group of its own"
    );

    let found = Groups::new(dir.path(), GRACE)
        .end_leftovers(Duration::from_secs(5))
        .await;
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].text,
        format!("process group {pgid} of the interrupted run was stopped with SIGTERM")
    );
    assert!(!found[0].survived);
    assert!(!running(&child));
    let _ = child.wait();
    assert!(
        stat(escaped[0]).is_none_or(|s| s.state == 'Z'),
        "the escaped child is stopped too"
    );
    assert!(!dir.path().join("steps/left.json").exists());
}

#[tokio::test]
async fn an_unrecorded_step_that_already_ended_is_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = "fedcba9876543210fedcba9876543210";
    let mut child = started_but_unrecorded(dir.path(), run, "exit 0");
    let _ = child.wait();
    let found = Groups::new(dir.path(), GRACE)
        .end_leftovers(Duration::from_secs(5))
        .await;
    assert_eq!(
        found[0].text,
        "the step's processes of the interrupted run had already ended"
    );
    assert!(!dir.path().join("steps/left.json").exists());
}
