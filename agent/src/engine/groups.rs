//! Process groups of running shell steps, recorded before the agent starts them.
//!
//! A step runs in its own process group, which outlives an agent killed with `kill -9`.
//! Each step is written to `<state_dir>/steps/` twice: before it is started, with a random
//! run name that every process of the step carries in its environment ([`RUN_ENV`]), and
//! right after, with its group (leader pid, its start time from `/proc/<pid>/stat`, the
//! boot id). The record is removed once the step ends. A restarted agent ends every step a
//! previous agent process left (SIGTERM, a grace period, SIGKILL) before it runs a step
//! again: by its group, or by the run name in `/proc/<pid>/environ` when the agent was
//! killed before the group was written. The start time rules out a reused pid. A step whose
//! processes survive SIGKILL keeps its record, and is tried again at the next start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;

use crate::durable::{self, DurableError};

/// How often a stopping group is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How long SIGKILL may take to empty a group.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The environment variable naming the run of a step in all of its processes.
pub const RUN_ENV: &str = "CLOUDPILLAR_STEP_RUN";

/// A running step's process group as written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// `changeSpec.id`.
    pub recipe: String,
    /// Action path of the step (with `#onPause`/`#onResume` for hooks).
    pub step: String,
    /// Random name of this run of the step, the value of [`RUN_ENV`] in its processes (empty
    /// in records of agents that did not name runs).
    #[serde(default)]
    pub run: String,
    /// Process group id, the pid of its leader; `None` until the step is started.
    pub pgid: Option<i32>,
    /// Start time of the leader in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id` when the step started.
    pub boot_id: String,
    /// The agent process that started the step (random, once per process).
    pub owner: u64,
    /// How the agent stopped the step when it was itself stopped (SIGTERM or SIGINT); the
    /// next start reports this and runs the step again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
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
    /// Some of its processes survived SIGKILL: the record stays for the next start.
    pub survived: bool,
}

/// The records of running step groups below the state directory.
#[derive(Debug, Clone)]
pub struct Groups {
    dir: PathBuf,
    shutdown: Arc<Shutdown>,
}

/// The agent's own shutdown: steps hold `gate` for reading while they run, so the shutdown
/// waits for every running step to be stopped; none starts once `token` is cancelled.
#[derive(Debug)]
struct Shutdown {
    token: CancellationToken,
    gate: Arc<RwLock<()>>,
    grace: Duration,
}

/// Held by a running step: the agent's shutdown waits for it.
#[derive(Debug)]
pub struct Running {
    _gate: OwnedRwLockReadGuard<()>,
    token: CancellationToken,
}

impl Running {
    /// Resolves when the agent begins to stop.
    pub async fn stopping(&self) {
        self.token.cancelled().await;
    }
}

impl Groups {
    /// Records live in `<state_dir>/steps/`; an agent shutdown stops a step with SIGTERM and
    /// `grace` later SIGKILL.
    pub fn new(state_dir: &Path, grace: Duration) -> Self {
        Self {
            dir: state_dir.join("steps"),
            shutdown: Arc::new(Shutdown {
                token: CancellationToken::new(),
                gate: Arc::new(RwLock::new(())),
                grace,
            }),
        }
    }

    /// Admits a step to start; `None` once the agent is stopping.
    pub async fn enter(&self) -> Option<Running> {
        let gate = Arc::clone(&self.shutdown.gate).read_owned().await;
        let token = self.shutdown.token.clone();
        (!token.is_cancelled()).then_some(Running { _gate: gate, token })
    }

    /// Whether the agent is stopping: a step that ends now is not journaled, it runs again
    /// at the next start.
    pub fn stopping(&self) -> bool {
        self.shutdown.token.is_cancelled()
    }

    /// Begins the agent's shutdown and waits until every running step was stopped.
    pub async fn shut_down(&self) {
        self.shutdown.token.cancel();
        drop(self.shutdown.gate.write().await);
    }

    /// Stops the step's group for the agent's shutdown (SIGTERM, the grace period, SIGKILL)
    /// and keeps its record, noting how it was stopped, so the next start runs it again as
    /// after a `kill -9`.
    pub async fn stop_for_shutdown(&self, recipe: &str, step: &str) {
        let path = self.path(recipe, step);
        let record = match durable::read_json::<GroupRecord>(&path) {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "step group record unreadable at shutdown");
                return;
            }
        };
        let (text, survived) = end_group(&record, self.shutdown.grace).await;
        let text = format!(
            "{} when the agent stopped",
            text.replace(" of the interrupted run", "")
        );
        tracing::info!(recipe, step, %text, survived, "step stopped for the agent's shutdown");
        let record = GroupRecord {
            stopped: Some(text),
            ..record
        };
        if let Err(error) = durable::write_json(&path, &record) {
            tracing::warn!(%error, "failed to note the stopped step; the next start finds it");
        }
    }

    fn path(&self, recipe: &str, step: &str) -> PathBuf {
        let digest = Sha256::digest(format!("{recipe}|{step}").as_bytes());
        let name: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{name}.json"))
    }

    /// Writes, before the step is started, that it is about to be; returns the run name its
    /// processes must carry in [`RUN_ENV`].
    pub fn intend(&self, recipe: &str, step: &str) -> Result<String, GroupError> {
        let run = format!("{:032x}", rand::random::<u128>());
        let record = GroupRecord {
            recipe: recipe.to_owned(),
            step: step.to_owned(),
            run: run.clone(),
            pgid: None,
            start_ticks: None,
            boot_id: boot_id(),
            owner: owner(),
            stopped: None,
        };
        durable::write_json(&self.path(recipe, step), &record)?;
        Ok(run)
    }

    /// Writes the group led by `pid` of the step's `run` durably; the step must not be waited
    /// on without it.
    pub fn record(&self, recipe: &str, step: &str, run: &str, pid: u32) -> Result<(), GroupError> {
        let pgid = i32::try_from(pid).map_err(|_| GroupError::Stat { pid })?;
        let start_ticks = stat(pgid).ok_or(GroupError::Stat { pid })?.start_ticks;
        let record = GroupRecord {
            recipe: recipe.to_owned(),
            step: step.to_owned(),
            run: run.to_owned(),
            pgid: Some(pgid),
            start_ticks: Some(start_ticks),
            boot_id: boot_id(),
            owner: owner(),
            stopped: None,
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
            let (mut text, survived) = end_group(&record, grace).await;
            if let (Some(stopped), false) = (&record.stopped, survived) {
                text.clone_from(stopped);
            }
            tracing::warn!(recipe = %record.recipe, step = %record.step, pgid = ?record.pgid,
                %text, "step processes left by a previous agent");
            // The record goes only once the group is gone or known not to be ours.
            if !survived {
                remove_record(&path);
            }
            found.push(Leftover {
                recipe: record.recipe,
                step: record.step,
                text,
                survived,
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

/// The processes of a step an earlier agent started: its group, when known, and every
/// process carrying its run name.
#[derive(Debug, Clone)]
struct Target {
    pgid: Option<i32>,
    start_ticks: u64,
    run: String,
}

impl Target {
    /// What `record` names, its group found by the run name when the agent was killed before
    /// writing it; `Err` with the reason when nothing of the step can be left.
    fn of(record: &GroupRecord) -> Result<Self, String> {
        if record.boot_id != boot_id() {
            return Err(match record.pgid {
                Some(pgid) => {
                    format!("process group {pgid} of a run before the last reboot is gone")
                }
                None => "the step's processes of a run before the last reboot are gone".to_owned(),
            });
        }
        if let (Some(pgid), Some(start_ticks)) = (record.pgid, record.start_ticks) {
            if let Some(leader) = stat(pgid)
                && leader.start_ticks != start_ticks
            {
                return Err(format!(
                    "process group {pgid} is gone (its pid now belongs to another process)"
                ));
            }
            return Ok(Self {
                pgid: Some(pgid),
                start_ticks,
                run: record.run.clone(),
            });
        }
        // Killed between starting the step and recording its group: its leader is the
        // oldest process of the run that leads a group (a child may have made its own).
        let carriers = carriers(&record.run);
        let leader = (carriers.iter())
            .filter(|(pid, s)| s.pgrp == *pid)
            .min_by_key(|(pid, s)| (s.start_ticks, *pid));
        Ok(Self {
            pgid: leader.map(|(pid, _)| *pid),
            start_ticks: leader.map_or(0, |(_, s)| s.start_ticks),
            run: record.run.clone(),
        })
    }

    /// How `ResultText` names what is left, with the verb that goes with it.
    fn name(&self) -> (String, &'static str) {
        match self.pgid {
            Some(pgid) => (format!("process group {pgid}"), "was"),
            None => ("the step's processes".to_owned(), "were"),
        }
    }

    /// Live (not zombie) processes of the step: members of its group started no earlier
    /// than its leader (without its leader, those are the step's children), and every
    /// process carrying its run name.
    fn members(&self) -> Vec<(i32, ProcStat)> {
        let own = i32::try_from(std::process::id()).unwrap_or_default();
        processes()
            .filter(|(pid, s)| {
                *pid != own
                    && s.alive()
                    && (self.pgid == Some(s.pgrp) && s.start_ticks >= self.start_ticks
                        || carries(*pid, &self.run))
            })
            .collect()
    }

    /// Signals the group, and every process of the run that left it.
    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            send(killpg(Pid::from_raw(pgid), signal), pgid, signal);
        }
        for (pid, stat) in self.members() {
            if self.pgid != Some(stat.pgrp) {
                send(kill(Pid::from_raw(pid), signal), pid, signal);
            }
        }
    }

    async fn wait_empty(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.members().is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Stops what is left of `record`'s step if it is still the one the step started; says
/// what happened, and whether some of it survived SIGKILL.
async fn end_group(record: &GroupRecord, grace: Duration) -> (String, bool) {
    let target = match Target::of(record) {
        Ok(target) => target,
        Err(text) => return (text, false),
    };
    let (name, was) = target.name();
    if target.members().is_empty() {
        return (
            format!("{name} of the interrupted run had already ended"),
            false,
        );
    }
    target.signal(Signal::SIGTERM);
    if target.wait_empty(grace).await {
        return (
            format!("{name} of the interrupted run {was} stopped with SIGTERM"),
            false,
        );
    }
    target.signal(Signal::SIGKILL);
    if target.wait_empty(KILL_WAIT).await {
        let text = format!("{name} of the interrupted run {was} killed {grace:?} after SIGTERM");
        (text, false)
    } else {
        (
            format!("{name} of the interrupted run survived SIGKILL"),
            true,
        )
    }
}

fn send(result: nix::Result<()>, id: i32, signal: Signal) {
    if let Err(error) = result {
        tracing::debug!(%error, id, ?signal, "step process already gone");
    }
}

/// Every process that can be read, with its `stat` fields.
fn processes() -> impl Iterator<Item = (i32, ProcStat)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
}

/// Live processes carrying `run` in [`RUN_ENV`].
fn carriers(run: &str) -> Vec<(i32, ProcStat)> {
    processes()
        .filter(|(pid, s)| s.alive() && carries(*pid, run))
        .collect()
}

/// Whether `pid`'s environment names the step run `run` (an empty name matches nothing).
fn carries(pid: i32, run: &str) -> bool {
    if run.is_empty() {
        return false;
    }
    let entry = format!("{RUN_ENV}={run}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
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
