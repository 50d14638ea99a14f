//! The record of dropped upload chunks: a snapshot (`holes.json`) and a journal of changes
//! since it (`holes.journal`, one JSON line per drop or refill).
//!
//! Each drop or refill appends one short line and syncs it, so its cost does not grow with
//! the number of open holes; a long outage leaves thousands of them. The snapshot is
//! rewritten, and the journal emptied, only when the journal holds more lines than twice the
//! open holes (plus a floor), which keeps the rewriting cost per change constant on average.
//!
//! Replaying the journal over the snapshot is idempotent: a hole is named by its file, place
//! and drop number, opening a present hole or filling an absent one changes nothing, and the
//! drop count only grows. A crash between writing the snapshot and emptying the journal
//! therefore replays lines the snapshot already holds, and a line torn by a crash is the last
//! one and is skipped. Opening compacts at once, so nothing is ever appended after a torn line.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::{self, DurableError};

/// Journal lines allowed beyond twice the open holes before the snapshot is rewritten.
const JOURNAL_FLOOR: usize = 64;

/// An upload chunk the full queue dropped: the uploader must send these bytes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hole {
    /// Offset of the chunk in its file.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Whether it was the upload's final chunk.
    pub last: bool,
    /// Which drop made it: a hole dropped again after it was taken is a new one.
    pub drop: u64,
}

/// What the snapshot keeps: log chunks dropped so far, and the holes still open.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Drops {
    dropped: u64,
    /// Upload file id → its open holes.
    holes: BTreeMap<String, BTreeSet<Hole>>,
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Change {
    /// Drop number `dropped` happened; it left `hole` in `file` when the chunk was an upload's.
    Dropped {
        dropped: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hole: Option<Hole>,
    },
    /// `hole` of `file` was queued again, or no longer matters.
    Filled { file: String, hole: Hole },
}

/// The dropped-chunk record of one outbox directory.
#[derive(Debug)]
pub struct HoleBook {
    snapshot: PathBuf,
    journal_path: PathBuf,
    journal: File,
    lines: usize,
    drops: Drops,
}

impl HoleBook {
    /// Reads the record in `dir` (an unreadable snapshot starts empty, with a warning) and
    /// compacts it.
    pub fn open(dir: &Path) -> Result<Self, DurableError> {
        let snapshot = dir.join("holes.json");
        let journal_path = dir.join("holes.journal");
        let mut drops: Drops = durable::read_json(&snapshot)
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "dropped-chunk record unreadable; starting empty");
                None
            })
            .unwrap_or_default();
        let replayed = replay(&journal_path, &mut drops);
        let journal = open_journal(&journal_path)?;
        let mut book = Self {
            snapshot,
            journal_path,
            journal,
            lines: replayed,
            drops,
        };
        if book.lines > 0 {
            book.compact()?;
        }
        Ok(book)
    }

    /// Counts one dropped log chunk; `hole` names the upload bytes it carried, if any.
    pub fn dropped(&mut self, hole: Option<(String, Hole)>) -> Result<u64, DurableError> {
        let dropped = self.drops.dropped + 1;
        let (file, hole) = hole.unzip();
        self.append(&Change::Dropped {
            dropped,
            file,
            hole,
        })?;
        Ok(self.drops.dropped)
    }

    /// Closes `hole` of `file`; a hole not open changes nothing.
    pub fn fill(&mut self, file: &str, hole: Hole) -> Result<(), DurableError> {
        let open = self
            .drops
            .holes
            .get(file)
            .is_some_and(|h| h.contains(&hole));
        if !open {
            return Ok(());
        }
        self.append(&Change::Filled {
            file: file.to_owned(),
            hole,
        })
    }

    /// The open holes of upload `file`, lowest offset first.
    pub fn holes(&self, file: &str) -> Vec<Hole> {
        self.drops
            .holes
            .get(file)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Log chunks dropped so far.
    pub fn count(&self) -> u64 {
        self.drops.dropped
    }

    /// Open holes over all uploads.
    fn open_holes(&self) -> usize {
        self.drops.holes.values().map(BTreeSet::len).sum()
    }

    /// Appends and syncs `change`, then applies it; compacts when the journal is long.
    fn append(&mut self, change: &Change) -> Result<(), DurableError> {
        let err = |source| DurableError::Write {
            path: self.journal_path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(change).map_err(|source| DurableError::Decode {
            path: self.journal_path.clone(),
            source,
        })?;
        line.push(b'\n');
        self.journal.write_all(&line).map_err(err)?;
        self.journal.sync_data().map_err(err)?;
        apply(&mut self.drops, change);
        self.lines += 1;
        if self.lines > JOURNAL_FLOOR + 2 * self.open_holes() {
            self.compact()?;
        }
        Ok(())
    }

    /// Writes the snapshot, then empties the journal.
    fn compact(&mut self) -> Result<(), DurableError> {
        durable::write_json(&self.snapshot, &self.drops)?;
        self.journal
            .set_len(0)
            .map_err(|source| DurableError::Write {
                path: self.journal_path.clone(),
                source,
            })?;
        self.lines = 0;
        Ok(())
    }
}

fn apply(drops: &mut Drops, change: &Change) {
    match change {
        Change::Dropped {
            dropped,
            file,
            hole,
        } => {
            drops.dropped = drops.dropped.max(*dropped);
            if let (Some(file), Some(hole)) = (file, hole) {
                drops.holes.entry(file.clone()).or_default().insert(*hole);
            }
        }
        Change::Filled { file, hole } => {
            if let Some(holes) = drops.holes.get_mut(file) {
                holes.remove(hole);
                if holes.is_empty() {
                    drops.holes.remove(file);
                }
            }
        }
    }
}

/// Applies the journal's lines to `drops`; returns how many there were. A line that does not
/// parse (torn by a crash) ends the replay.
fn replay(path: &Path, drops: &mut Drops) -> usize {
    let Ok(file) = File::open(path) else {
        return 0;
    };
    let mut lines = 0;
    for line in BufReader::new(file).lines() {
        let Ok(change) = line.map_err(drop).and_then(|l| {
            serde_json::from_str::<Change>(&l).map_err(|error| {
                tracing::warn!(%error, "dropped-chunk journal ends in a torn line; skipped");
            })
        }) else {
            break;
        };
        apply(drops, &change);
        lines += 1;
    }
    lines
}

fn open_journal(path: &Path) -> Result<File, DurableError> {
    let err = |source| DurableError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(err)?;
    if let Some(dir) = path.parent() {
        durable::sync_dir(dir).map_err(err)?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hole(offset: u64, drop: u64) -> Hole {
        Hole {
            offset,
            len: 10,
            last: false,
            drop,
        }
    }

    fn journal_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join("holes.journal")).map_or(0, |m| m.len())
    }

    #[test]
    fn drops_and_fills_survive_a_reopen_through_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut book = HoleBook::open(dir.path()).expect("open");
            book.dropped(Some(("a".into(), hole(0, 1)))).expect("drop");
            book.dropped(None).expect("drop a message that is no chunk");
            book.dropped(Some(("a".into(), hole(10, 3)))).expect("drop");
            book.fill("a", hole(0, 1)).expect("fill");
            assert!(journal_len(dir.path()) > 0, "changes went to the journal");
            assert!(!dir.path().join("holes.json").exists(), "no snapshot yet");
        }
        let book = HoleBook::open(dir.path()).expect("reopen");
        assert_eq!(book.count(), 3);
        assert_eq!(book.holes("a"), [hole(10, 3)]);
        assert_eq!(journal_len(dir.path()), 0, "opening compacts");
        let book = HoleBook::open(dir.path()).expect("reopen from the snapshot");
        assert_eq!(book.holes("a"), [hole(10, 3)]);
    }

    #[test]
    fn each_change_appends_a_line_whatever_the_number_of_open_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot = |dir: &Path| std::fs::read(dir.join("holes.json")).ok();
        let mut book = HoleBook::open(dir.path()).expect("open");
        for n in 0..5_000 {
            book.dropped(Some(("a".into(), hole(n * 10, n + 1))))
                .expect("drop");
        }
        // Rewriting the whole record per drop wrote about 600 KB at 5,000 open holes.
        let (journal, before) = (journal_len(dir.path()), snapshot(dir.path()));
        book.dropped(Some(("a".into(), hole(99_990, 9_999))))
            .expect("drop");
        assert!(journal_len(dir.path()) - journal < 200, "one short line");
        assert_eq!(
            snapshot(dir.path()),
            before,
            "the snapshot is not rewritten"
        );
        assert_eq!(book.holes("a").len(), 5_001);
    }

    #[test]
    fn the_journal_is_folded_into_the_snapshot_once_it_outgrows_the_open_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut book = HoleBook::open(dir.path()).expect("open");
        for n in 0..1_000 {
            book.dropped(Some(("a".into(), hole(n * 10, n + 1))))
                .expect("drop");
            book.fill("a", hole(n * 10, n + 1)).expect("fill");
        }
        let lines = std::fs::read_to_string(dir.path().join("holes.journal"))
            .expect("journal")
            .lines()
            .count();
        assert!(lines <= JOURNAL_FLOOR, "{lines} lines left in the journal");
        drop(book);
        let book = HoleBook::open(dir.path()).expect("reopen");
        assert_eq!(book.count(), 1_000);
        assert!(book.holes("a").is_empty());
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_earlier_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut book = HoleBook::open(dir.path()).expect("open");
            book.dropped(Some(("a".into(), hole(0, 1)))).expect("drop");
        }
        let mut journal = OpenOptions::new()
            .append(true)
            .open(dir.path().join("holes.journal"))
            .expect("journal");
        journal
            .write_all(br#"{"dropped":{"dropped":2,"file":"a","ho"#)
            .expect("torn line");
        drop(journal);
        let book = HoleBook::open(dir.path()).expect("reopen");
        assert_eq!(book.count(), 1);
        assert_eq!(book.holes("a"), [hole(0, 1)]);
    }

    #[test]
    fn replaying_lines_the_snapshot_already_holds_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut book = HoleBook::open(dir.path()).expect("open");
            book.dropped(Some(("a".into(), hole(0, 1)))).expect("drop");
            book.dropped(Some(("a".into(), hole(10, 2)))).expect("drop");
            book.fill("a", hole(0, 1)).expect("fill");
        }
        // A crash after the snapshot was written but before the journal was emptied.
        let journal = std::fs::read(dir.path().join("holes.journal")).expect("journal");
        let book = HoleBook::open(dir.path()).expect("reopen");
        drop(book);
        std::fs::write(dir.path().join("holes.journal"), journal).expect("restore journal");
        let book = HoleBook::open(dir.path()).expect("reopen");
        assert_eq!(book.count(), 2);
        assert_eq!(book.holes("a"), [hole(10, 2)]);
    }
}
