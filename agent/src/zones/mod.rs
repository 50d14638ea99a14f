//! StrictMode zones: which files uploads and downloads may touch.
//!
//! A zone has a root, gitignore-style patterns relative to it (matched exactly as git
//! matches them, through the `ignore` crate) and an optional size limit. In strict mode
//! a file must match an allow zone of its action and no deny zone; outside strict mode
//! zones only provide their `${Name}` variables.

mod paths;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

pub use paths::{PathError, expand_variables, resolve};

use crate::config::{ZoneAction, ZoneConfig, ZoneKind};

/// Reject text when a deny zone matches or an allow zone's limit is exceeded.
pub fn restriction_text(name: &str) -> String {
    format!("Denied by local a restriction \"{name}\"")
}

/// Reject text when no allow zone covers the file.
pub const NO_ALLOWANCE_TEXT: &str = "Denied by the lack of local allowance";

/// Errors building the zone matchers.
#[derive(Debug, thiserror::Error)]
pub enum ZoneBuildError {
    /// A pattern is not valid gitignore syntax.
    #[error("failed to compile pattern {pattern:?} of zone {zone}")]
    Pattern {
        /// Zone name.
        zone: String,
        /// Offending pattern.
        pattern: String,
        /// Matcher error.
        source: ignore::Error,
    },
}

/// A transfer refused by the zones; `Display` is the exact reported text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneDenial {
    /// A deny zone matched, or the allow zone's size limit was exceeded.
    #[error("Denied by local a restriction \"{0}\"")]
    Restriction(String),
    /// No allow zone matched.
    #[error("Denied by the lack of local allowance")]
    NoAllowance,
}

#[derive(Debug)]
struct Zone {
    name: String,
    action: ZoneAction,
    kind: ZoneKind,
    root: PathBuf,
    matcher: Gitignore,
    match_all: bool,
    max_size: Option<u64>,
}

/// Every configured zone, compiled.
#[derive(Debug, Default)]
pub struct Zones {
    zones: Vec<Zone>,
    roots: BTreeMap<String, PathBuf>,
}

impl Zones {
    /// Compiles the zones of the configuration.
    pub fn build(config: &BTreeMap<String, ZoneConfig>) -> Result<Self, ZoneBuildError> {
        let mut zones = Vec::with_capacity(config.len());
        for (name, zone) in config {
            let mut builder = GitignoreBuilder::new(&zone.root);
            for pattern in &zone.patterns {
                builder
                    .add_line(None, pattern)
                    .map_err(|source| ZoneBuildError::Pattern {
                        zone: name.clone(),
                        pattern: pattern.clone(),
                        source,
                    })?;
            }
            let matcher = builder.build().map_err(|source| ZoneBuildError::Pattern {
                zone: name.clone(),
                pattern: zone.patterns.join(", "),
                source,
            })?;
            zones.push(Zone {
                name: name.clone(),
                action: zone.action,
                kind: zone.kind,
                root: zone.root.clone(),
                matcher,
                match_all: zone.patterns.is_empty(),
                max_size: zone.max_size,
            });
        }
        let roots = config
            .iter()
            .map(|(n, z)| (n.clone(), z.root.clone()))
            .collect();
        Ok(Self { zones, roots })
    }

    /// Zone roots by name, for `${Name}` expansion.
    pub fn roots(&self) -> &BTreeMap<String, PathBuf> {
        &self.roots
    }

    /// Checks a resolved absolute `path` of `size` bytes for `action` under strict mode.
    pub fn check(&self, action: ZoneAction, path: &Path, size: u64) -> Result<(), ZoneDenial> {
        let relevant = || self.zones.iter().filter(move |z| z.action == action);
        if let Some(deny) = relevant()
            .filter(|z| z.kind == ZoneKind::Deny)
            .find(|z| z.covers(path))
        {
            return Err(ZoneDenial::Restriction(deny.name.clone()));
        }
        let mut allowing = relevant().filter(|z| z.kind == ZoneKind::Allow && z.covers(path));
        let first = allowing.next().ok_or(ZoneDenial::NoAllowance)?;
        let fits = |z: &Zone| z.max_size.is_none_or(|max| size <= max);
        if fits(first) || allowing.any(fits) {
            Ok(())
        } else {
            Err(ZoneDenial::Restriction(first.name.clone()))
        }
    }
}

impl Zone {
    fn covers(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.root) else {
            return false;
        };
        if relative.as_os_str().is_empty() {
            return false;
        }
        self.match_all || pattern_matches(&self.matcher, relative)
    }
}

/// Whether gitignore `matcher` selects the file at `relative` (a parent directory
/// matching, as with `logs/`, selects everything below it, as in git).
pub fn pattern_matches(matcher: &Gitignore, relative: &Path) -> bool {
    matcher
        .matched_path_or_any_parents(relative, false)
        .is_ignore()
}
