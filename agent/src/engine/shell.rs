//! `executeOnce` shell steps: bash and sh everywhere, PowerShell where installed.
//!
//! Every step runs in its own process group so a timeout or a cancel ends the whole
//! tree. Output (stdout and stderr) is kept as a bounded tail for `ResultText`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::groups::{Groups, RUN_ENV};
use super::outcome::{StepOutcome, codes};

/// Bytes of output kept for `ResultText`.
pub const OUTPUT_TAIL_BYTES: usize = 1024;

/// A shell a recipe may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    /// GNU bash.
    Bash,
    /// POSIX sh.
    Sh,
    /// Windows PowerShell (`powershell`), run by whichever PowerShell is installed.
    PowerShell,
    /// PowerShell 7 (`pwsh`).
    Pwsh,
}

impl Shell {
    /// Parses the recipe's `shell` field.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "bash" => Some(Self::Bash),
            "sh" => Some(Self::Sh),
            "powershell" => Some(Self::PowerShell),
            "pwsh" => Some(Self::Pwsh),
            _ => None,
        }
    }

    /// Whether the body is given to the shell with `-c`.
    pub fn is_posix(self) -> bool {
        matches!(self, Self::Bash | Self::Sh)
    }

    /// Executable names to look for, in order of preference.
    pub fn candidates(self) -> &'static [&'static str] {
        match self {
            Self::Bash => &["bash"],
            Self::Sh => &["sh"],
            Self::PowerShell => &["powershell", "pwsh"],
            Self::Pwsh => &["pwsh"],
        }
    }
}

/// What a shell step needs besides its body.
#[derive(Debug, Clone)]
pub struct ShellRun<'a> {
    /// The recipe's `shell` value.
    pub shell: &'a str,
    /// The recipe's `command` body.
    pub body: &'a str,
    /// Working directory.
    pub work_dir: &'a Path,
    /// Extra environment, e.g. zone roots by name.
    pub env: &'a BTreeMap<String, PathBuf>,
    /// Kill after this long.
    pub timeout: Duration,
    /// Exit codes that count as success besides 0.
    pub success_codes: &'a [i64],
    /// Where the step's process group is recorded while it runs (recipe steps and hooks).
    pub group: Option<StepGroup<'a>>,
}

/// The record of a recipe step's process group: which step, and where records live.
#[derive(Debug, Clone, Copy)]
pub struct StepGroup<'a> {
    /// The records.
    pub groups: &'a Groups,
    /// `changeSpec.id`.
    pub recipe: &'a str,
    /// Action path (with a `#hook` suffix for hooks).
    pub step: &'a str,
}

/// Removes the record of a step's group once the agent stopped waiting on it.
struct Recorded<'a>(Option<StepGroup<'a>>);

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            group.groups.clear(group.recipe, group.step);
        }
    }
}

/// Wraps a PowerShell body so the process exits with the code of the failure (F18).
///
/// - A cmdlet error stops the script (`Stop`) and the trap exits with 1, the error on
///   stderr (and so in `ResultText`).
/// - A native program's failure does not throw (PowerShell 7.3+ would with
///   `$PSNativeCommandUseErrorActionPreference`); its code is kept in `$LASTEXITCODE`, reset
///   to 0 before the body, and the wrapper exits with it when it is not 0. That is the code
///   of the last native program the body ran, even when cmdlets ran after it.
/// - An `exit N` in the body ends the script with N before the wrapper's own lines.
/// - Otherwise the script exits with 0.
///
/// On Linux the kernel keeps the low 8 bits of the code (`exit 3010` reports 194).
pub fn powershell_wrapper(body: &str) -> String {
    format!(
        "$ErrorActionPreference = 'Stop'\n\
         $PSNativeCommandUseErrorActionPreference = $false\n\
         trap {{ [Console]::Error.WriteLine($_); exit 1 }}\n\
         $global:LASTEXITCODE = 0\n\
         {body}\n\
         if ($LASTEXITCODE -ne 0) {{ exit $LASTEXITCODE }}\n\
         exit 0\n"
    )
}

/// Runs one shell step to completion, timeout or cancel.
pub async fn run(step: ShellRun<'_>, cancel: &CancellationToken) -> StepOutcome {
    let Some(shell) = Shell::parse(step.shell) else {
        return StepOutcome::failed(
            codes::UNKNOWN_SHELL,
            format!("unknown shell {:?}", step.shell),
        );
    };
    if shell.is_posix() && step.body.contains('\r') {
        return StepOutcome::failed(
            codes::CRLF_IN_BASH,
            "script contains CR characters (CRLF line endings); refused before running",
        );
    }
    let Some(program) = shell
        .candidates()
        .iter()
        .find_map(|name| find_in_path(name))
    else {
        return StepOutcome::failed(
            codes::SHELL_MISSING,
            format!("shell {:?} is not installed on this device", step.shell),
        );
    };

    let (mut command, _script_file) = match prepare(shell, &program, step.body, step.work_dir) {
        Ok(prepared) => prepared,
        Err(e) => return StepOutcome::failed(codes::SPAWN_FAILED, e.to_string()),
    };
    command
        .current_dir(step.work_dir)
        .envs(step.env.iter().map(|(k, v)| (k.as_str(), v.as_os_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);

    // Once the agent is stopping no step starts; a running one holds off its shutdown.
    let running = match step.group {
        Some(group) => match group.groups.enter().await {
            Some(running) => Some(running),
            None => return StepOutcome::failed(codes::CANCELLED, "the agent is stopping"),
        },
        None => None,
    };
    let stopping = async {
        match &running {
            Some(running) => running.stopping().await,
            None => std::future::pending().await,
        }
    };

    // The step is recorded before it starts, under a run name all its processes carry, so a
    // restart after `kill -9` finds them even if the agent died before recording the group.
    let mut recorded = Recorded(step.group);
    let run = match step
        .group
        .map(|g| g.groups.intend(g.recipe, g.step))
        .transpose()
    {
        Ok(run) => run,
        Err(error) => return StepOutcome::failed(codes::IO_ERROR, error.to_string()),
    };
    if let Some(run) = &run {
        command.env(RUN_ENV, run);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return StepOutcome::failed(codes::SPAWN_FAILED, format!("failed to start: {e}"));
        }
    };
    let pid = child.id();
    pause_after_spawn().await;
    if let (Some(group), Some(run), Some(id)) = (step.group, &run, pid)
        && let Err(error) = group.groups.record(group.recipe, group.step, run, id)
    {
        kill_group(pid);
        let _ = child.wait().await;
        return StepOutcome::failed(codes::IO_ERROR, format!("{error}; the step was stopped"));
    }
    let tail = Tail::default();
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
    ];
    let pumps: Vec<_> = readers
        .into_iter()
        .flatten()
        .map(|r| tokio::spawn(pump(r, tail.clone())))
        .collect();

    let status = tokio::select! {
        status = child.wait() => status,
        () = tokio::time::sleep(step.timeout) => {
            kill_group(pid);
            let _ = child.wait().await;
            let text = format!("timed out after {} s", step.timeout.as_secs());
            return StepOutcome::failed(codes::TIMEOUT, text);
        }
        () = cancel.cancelled() => {
            kill_group(pid);
            let _ = child.wait().await;
            return StepOutcome::failed(codes::CANCELLED, "cancelled");
        }
        () = stopping => {
            // The agent stops: the record stays for the next start, which runs the step again.
            if let Some(group) = recorded.0.take() {
                group.groups.stop_for_shutdown(group.recipe, group.step).await;
            }
            kill_group(pid);
            let _ = child.wait().await;
            return StepOutcome::failed(codes::CANCELLED, "the agent stopped");
        }
    };
    drop(recorded);
    // A background grandchild may hold the pipes open: wait briefly, then take the tail.
    let _ = tokio::time::timeout(Duration::from_secs(2), futures_join(pumps)).await;
    let tail = tail.text();
    match status {
        Ok(status) => match status.code() {
            Some(code) => {
                let ok = code == 0 || step.success_codes.contains(&i64::from(code));
                let text = match (tail.is_empty(), ok) {
                    (true, true) => StepOutcome::DONE_TEXT.into(),
                    // Say something a person can act on, not an empty string.
                    (true, false) => format!("exited with code {code} and printed nothing"),
                    (false, _) => tail,
                };
                if ok {
                    StepOutcome::succeeded(code.to_string(), text)
                } else {
                    StepOutcome::failed(code.to_string(), text)
                }
            }
            None => StepOutcome::failed(codes::KILLED, format!("killed by a signal; {tail}")),
        },
        Err(e) => StepOutcome::failed(codes::SPAWN_FAILED, format!("failed to wait: {e}")),
    }
}

/// Environment variable (milliseconds, off when unset) that holds every shell step between
/// starting its process and recording its group: a test hook for a `kill -9` in that window.
pub const PAUSE_AFTER_SPAWN_ENV: &str = "CP_AGENT_TEST_PAUSE_AFTER_SPAWN_MS";

async fn pause_after_spawn() {
    static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        let millis = std::env::var(PAUSE_AFTER_SPAWN_ENV).ok()?.parse().ok()?;
        tracing::warn!(millis, "shell steps pause after they start (test hook)");
        Some(Duration::from_millis(millis))
    });
    if let Some(pause) = pause {
        tokio::time::sleep(*pause).await;
    }
}

/// The command that runs `body` with `program`: bash and sh take it with `-c`; PowerShell
/// runs the wrapped body from a script file in `work_dir`, returned so that it lives as long
/// as the step.
pub fn prepare(
    shell: Shell,
    program: &Path,
    body: &str,
    work_dir: &Path,
) -> std::io::Result<(Command, Option<tempfile::NamedTempFile>)> {
    let mut command = Command::new(program);
    if shell.is_posix() {
        command.arg("-c").arg(body);
        return Ok((command, None));
    }
    let file = write_script(work_dir, &powershell_wrapper(body))?;
    command.args(POWERSHELL_ARGS).arg(file.path());
    Ok((command, Some(file)))
}

/// What PowerShell is started with, before the script path: no profile, no prompts, no
/// execution policy in the way of the agent's own script file.
pub const POWERSHELL_ARGS: [&str; 5] = [
    "-NoProfile",
    "-NonInteractive",
    "-ExecutionPolicy",
    "Bypass",
    "-File",
];

/// A UTF-8 byte order mark: Windows PowerShell 5.1 reads a `.ps1` file without one in the
/// legacy code page, which garbles any non-ASCII text in the body; `pwsh` accepts both.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn write_script(dir: &Path, text: &str) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(".cp-step-")
        .suffix(".ps1")
        .tempfile_in(dir)?;
    file.write_all(UTF8_BOM)?;
    file.write_all(text.as_bytes())?;
    file.flush()?;
    Ok(file)
}

/// Finds an executable by name in `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    let group = nix::unistd::Pid::from_raw(pid);
    if let Err(error) = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
        tracing::debug!(%error, pid, "process group already gone");
    }
}

/// The last output bytes of a step, shared by the stdout and stderr readers.
#[derive(Debug, Clone, Default)]
struct Tail(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Tail {
    fn push(&self, piece: &[u8]) {
        let Ok(mut buf) = self.0.lock() else { return };
        buf.extend_from_slice(piece);
        if buf.len() > 4 * OUTPUT_TAIL_BYTES {
            let excess = buf.len() - OUTPUT_TAIL_BYTES;
            buf.drain(..excess);
        }
    }

    fn text(&self) -> String {
        self.0.lock().map(|buf| tail_text(&buf)).unwrap_or_default()
    }
}

async fn pump<R: AsyncRead + Unpin>(mut reader: R, tail: Tail) {
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.push(&buf[..n]);
    }
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        let _ = handle.await;
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of `bytes` as trimmed text, cut on a character boundary.
pub fn tail_text(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]);
    text.trim_start_matches('\u{fffd}').trim().to_owned()
}
