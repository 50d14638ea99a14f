//! Process groups of running shell steps, recorded before the agent waits on them.
//!
//! A step runs in its own process group, which outlives an agent killed with `kill -9`.
//! Each group is written to `<state_dir>/steps/` (leader pid, its start time from
//! `/proc/<pid>/stat`, the boot id) before the agent waits, and removed once the step ends.
//! A restarted agent ends every group a previous agent process left (SIGTERM, a grace
//! period, SIGKILL) before it runs a step again. The start time rules out a reused pid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::durable::{self, DurableError};

/// How often a stopping group is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How long SIGKILL may take to empty a group.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A running step's process group as written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// `changeSpec.id`.
    pub recipe: String,
    /// Action path of the step (with `#onPause`/`#onResume` for hooks).
    pub step: String,
    /// Process group id, the pid of its leader.
    pub pgid: i32,
    /// Start time of the leader in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id` when the step started.
    pub boot_id: String,
    /// The agent process that started the step (random, once per process).
    pub owner: u64,
}

/// A group a previous agent process left behind, after the attempt to end it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// `changeSpec.id` of its step.
    pub recipe: String,
    /// Action path of its step.
    pub step: String,
    /// What happened to it, for the step's `ResultText`.
    pub text: String,
}

/// The records of running step groups below the state directory.
#[derive(Debug, Clone)]
pub struct Groups {
    dir: PathBuf,
}

impl Groups {
    /// Records live in `<state_dir>/steps/`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("steps"),
        }
    }

    fn path(&self, recipe: &str, step: &str) -> PathBuf {
        let digest = Sha256::digest(format!("{recipe}|{step}").as_bytes());
        let name: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.json"))
    }

    /// Writes the group led by `pid` durably; the step must not be waited on without it.
    pub fn record(&self, recipe: &str, step: &str, pid: u32) -> Result<(), GroupError> {
        let pgid = i32::try_from(pid).map_err(|_| GroupError::Stat { pid })?;
        let start_ticks = stat(pgid).ok_or(GroupError::Stat { pid })?.start_ticks;
        let record = GroupRecord {
            recipe: recipe.to_owned(),
            step: step.to_owned(),
            pgid,
            start_ticks,
            boot_id: boot_id(),
            owner: owner(),
        };
        durable::write_json(&self.path(recipe, step), &record)?;
        Ok(())
    }

    /// Forgets the group of a step that ended.
    pub fn clear(&self, recipe: &str, step: &str) {
        remove_record(&self.path(recipe, step));
    }

    /// Ends every group recorded by another agent process; returns what was found.
    pub async fn end_leftovers(&self, grace: Duration) -> Vec<Leftover> {
        let mut found = Vec::new();
        for (path, record) in self.records() {
            if record.owner == owner() {
                continue;
            }
            let text = end_group(&record, grace).await;
            tracing::warn!(recipe = %record.recipe, step = %record.step, pgid = record.pgid,
                %text, "process group left by a previous agent");
            // The record goes only once the group is gone or known not to be ours.
            remove_record(&path);
            found.push(Leftover {
                recipe: record.recipe,
                step: record.step,
                text,
            });
        }
        found
    }

    fn records(&self) -> BTreeMap<PathBuf, GroupRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return BTreeMap::new();
        };
        let mut records = BTreeMap::new();
        for path in entries.filter_map(Result::ok).map(|e| e.path()) {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match durable::read_json::<GroupRecord>(&path) {
                Ok(Some(record)) => {
                    records.insert(path, record);
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "unreadable step group record kept"),
            }
        }
        records
    }
}

fn remove_record(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        let path = path.display();
        tracing::warn!(%error, %path, "failed to remove a step group record");
    }
}

/// A step's process group could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// `/proc/<pid>/stat` could not be read (the process ended at once, or no procfs).
    #[error("failed to read the start time of process {pid}")]
    Stat {
        /// The leader.
        pid: u32,
    },
    /// The record could not be written.
    #[error("failed to record the step's process group")]
    Write(#[from] DurableError),
}

/// Stops `record`'s group if it is still the one the step started; says what happened.
async fn end_group(record: &GroupRecord, grace: Duration) -> String {
    let pgid = record.pgid;
    if record.boot_id != boot_id() {
        return format!("process group {pgid} of a run before the last reboot is gone");
    }
    if let Some(leader) = stat(pgid)
        && leader.start_ticks != record.start_ticks
    {
        return format!("process group {pgid} is gone (its pid now belongs to another process)");
    }
    // Without its leader, the members that started after it are the step's children.
    if members(record).is_empty() {
        return format!("process group {pgid} of the interrupted run had already ended");
    }
    signal(pgid, Signal::SIGTERM);
    if wait_empty(record, grace).await {
        return format!("process group {pgid} of the interrupted run was stopped with SIGTERM");
    }
    signal(pgid, Signal::SIGKILL);
    let gone = wait_empty(record, KILL_WAIT).await;
    if gone {
        format!("process group {pgid} of the interrupted run was killed {grace:?} after SIGTERM")
    } else {
        format!("process group {pgid} of the interrupted run survived SIGKILL")
    }
}

async fn wait_empty(record: &GroupRecord, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if members(record).is_empty() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn signal(pgid: i32, signal: Signal) {
    if let Err(error) = killpg(Pid::from_raw(pgid), signal) {
        tracing::debug!(%error, pgid, ?signal, "process group already gone");
    }
}

/// Live (not zombie) processes of the recorded group started no earlier than its leader.
fn members(record: &GroupRecord) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            stat(*pid).is_some_and(|s| {
                s.pgrp == record.pgid && s.start_ticks >= record.start_ticks && s.alive()
            })
        })
        .collect()
}

/// The fields of `/proc/<pid>/stat` the agent reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// One-letter state (`R`, `S`, `Z`...).
    pub state: char,
    /// Process group id.
    pub pgrp: i32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

impl ProcStat {
    fn alive(self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses a `stat` line; the command name may hold spaces and parentheses.
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// A random id of this agent process: records with another owner were left by a
/// previous process (a pid could repeat across restarts, this does not).
fn owner() -> u64 {
    static OWNER: OnceLock<u64> = OnceLock::new();
    *OWNER.get_or_init(rand::random)
}
