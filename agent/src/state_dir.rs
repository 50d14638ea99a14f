//! The state directory: private to the agent's account, and used by one agent at a time.
//!
//! The directory is created 0700 (an existing one that others can read is tightened and the
//! change logged), and `<state_dir>/agent.lock` holds an exclusive `flock` for as long as the
//! agent runs. A second agent on the same directory would stop the first one's running step
//! and run it again, so it refuses to start and names the pid that holds the lock. The kernel
//! releases the lock when the process ends, `kill -9` included; the file stays.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Mode of the state directory and of every directory the agent makes in it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the agent writes in the state directory.
pub const FILE_MODE: u32 = 0o600;

/// The state directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// Creating, inspecting or locking the directory failed.
    #[error("failed to prepare the state directory {dir}")]
    Io {
        /// The state directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Another agent process holds the lock.
    #[error(
        "the state directory {dir} is in use by another agent (pid {holder}); \
         one agent per state directory"
    )]
    InUse {
        /// The state directory.
        dir: PathBuf,
        /// What the lock file names as its holder (`unknown` when it names nobody).
        holder: String,
    },
}

/// The lock on the state directory, held until dropped.
#[derive(Debug)]
pub struct StateDirLock {
    _file: Flock<File>,
}

/// Creates `dir` (0700) if needed, tightens it when others may read it, and locks it.
pub fn open(dir: &Path) -> Result<StateDirLock, StateDirError> {
    let io = |source| StateDirError::Io {
        dir: dir.to_owned(),
        source,
    };
    create_private_dir(dir).map_err(io)?;
    let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
            Ok(()) => tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"),
                "state directory was open to other accounts; tightened to 0700"),
            Err(error) => tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"),
                %error, "state directory is open to other accounts and could not be tightened"),
        }
    }

    let path = dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)
        .map_err(io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim() {
                "" => "unknown".to_owned(),
                pid => pid.to_owned(),
            };
            return Err(StateDirError::InUse {
                dir: dir.to_owned(),
                holder,
            });
        }
        Err((_, errno)) => return Err(io(errno.into())),
    };
    // The holder's pid, for the message a second agent gives.
    lock.set_len(0).map_err(io)?;
    lock.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(lock, "{}", std::process::id()).map_err(io)?;
    lock.sync_all().map_err(io)?;
    Ok(StateDirLock { _file: lock })
}

/// Creates `dir` and missing parents 0700 (umask permitting); an existing one is left as is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_directory_and_the_holder() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("state");
        let first = open(&dir).expect("first lock");
        let error = open(&dir).expect_err("second lock refused");
        let text = error.to_string();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        open(&dir).expect("free again once the holder is gone");
    }

    #[test]
    fn the_directory_is_created_private_and_a_wide_one_is_tightened() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("state");
        drop(open(&dir).expect("lock"));
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("agent.lock")), 0o600);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        drop(open(&dir).expect("lock"));
        assert_eq!(mode(&dir), 0o700);
    }
}
