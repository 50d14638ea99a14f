//! Recipe paths: `${Zone}` expansion, separator normalisation and containment.
//!
//! A recipe path may come from Windows (`.\x.zip`, `I:\data`) or carry `..`. The result
//! is always an absolute path inside the work directory or inside a zone root, checked
//! both lexically and after resolving symbolic links of the parts that exist.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use cloudpillar_protocol::recipe::{ZoneExpandError, ZoneSyntaxError, expand_zone_variables};

/// Why a recipe path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `${Name}` names no configured zone.
    #[error("path \"{path}\" uses unknown zone variable \"{name}\"")]
    UnknownZone {
        /// The recipe path.
        path: String,
        /// The unknown name.
        name: String,
    },
    /// A `${` without its closing brace.
    #[error("path \"{path}\" has an unterminated zone variable")]
    Unterminated {
        /// The recipe path.
        path: String,
    },
    /// A `${...}` whose name is not a zone name (letters, digits and `_`).
    #[error("path \"{path}\" has a zone variable with an invalid name")]
    BadZoneName {
        /// The recipe path.
        path: String,
    },
    /// A drive-letter or UNC path on a system without drives.
    #[error("path \"{path}\" is a Windows drive or network path, not available on this system")]
    ForeignDrive {
        /// The recipe path.
        path: String,
    },
    /// The path leaves every directory it may use.
    #[error("path \"{path}\" escapes the work directory and every zone")]
    Escapes {
        /// The recipe path.
        path: String,
    },
    /// The path is empty.
    #[error("empty path")]
    Empty,
}

/// Replaces every `${Name}` with the root of zone `Name`.
pub fn expand_variables(raw: &str, roots: &BTreeMap<String, PathBuf>) -> Result<String, PathError> {
    let root = |name: &str| {
        roots
            .get(name)
            .map(|root| root.to_string_lossy().into_owned())
    };
    expand_zone_variables(raw, root).map_err(|error| {
        let path = raw.to_owned();
        match error {
            ZoneExpandError::UnknownZone { name } => PathError::UnknownZone { path, name },
            ZoneExpandError::Syntax(ZoneSyntaxError::Unclosed { .. }) => {
                PathError::Unterminated { path }
            }
            ZoneExpandError::Syntax(ZoneSyntaxError::BadName { .. }) => {
                PathError::BadZoneName { path }
            }
        }
    })
}

/// Resolves a recipe path to an absolute path inside `work_dir` or one of `roots`.
pub fn resolve(
    raw: &str,
    work_dir: &Path,
    roots: &BTreeMap<String, PathBuf>,
) -> Result<PathBuf, PathError> {
    let expanded = expand_variables(raw, roots)?;
    let unified = expanded.replace('\\', "/");
    if unified.trim().is_empty() {
        return Err(PathError::Empty);
    }
    if is_foreign_drive(&unified) {
        return Err(PathError::ForeignDrive { path: raw.into() });
    }
    let candidate = Path::new(&unified);
    let joined = if candidate.is_absolute() {
        candidate.to_path_buf()
    } else {
        work_dir.join(candidate)
    };
    let normal = normalize(&joined).ok_or_else(|| PathError::Escapes { path: raw.into() })?;

    let bases = std::iter::once(work_dir).chain(roots.values().map(PathBuf::as_path));
    for base in bases {
        let Some(base) = normalize(base) else {
            continue;
        };
        if normal.starts_with(&base) && stays_inside_after_links(&normal, &base) {
            return Ok(normal);
        }
    }
    Err(PathError::Escapes { path: raw.into() })
}

fn is_foreign_drive(path: &str) -> bool {
    let bytes = path.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    drive || path.starts_with("//")
}

/// Removes `.` and folds `..` lexically; `None` if `..` climbs above the root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Prefix(_) => return None,
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            Component::Normal(name) => out.push(name),
        }
    }
    Some(out)
}

/// Follows symbolic links of the deepest existing ancestor and checks it stays in `base`.
fn stays_inside_after_links(path: &Path, base: &Path) -> bool {
    let Ok(real_base) = base.canonicalize() else {
        // The base does not exist yet, so nothing below it can be a link.
        return true;
    };
    let mut probe = path.to_path_buf();
    loop {
        if let Ok(real) = probe.canonicalize() {
            return real.starts_with(&real_base);
        }
        if !probe.pop() || !probe.starts_with(base) {
            return true;
        }
    }
}
