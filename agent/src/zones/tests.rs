use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ignore::gitignore::GitignoreBuilder;

use super::*;
use crate::config::{ZoneAction, ZoneConfig, ZoneKind};

fn matches(pattern: &str, path: &str) -> bool {
    let mut builder = GitignoreBuilder::new("/zone");
    builder.add_line(None, pattern).expect("pattern");
    pattern_matches(&builder.build().expect("build"), Path::new(path))
}

#[test]
fn f17_double_star_prefix_matches_at_root_and_any_depth() {
    for path in ["foo", "a/foo", "a/b/foo"] {
        assert!(matches("**/**/foo", path), "{path}");
    }
}

#[test]
fn f17_leading_slash_anchors_to_the_root() {
    assert!(matches("/target", "target"));
    assert!(!matches("/target", "a/target"));
}

#[test]
fn f17_middle_slash_anchors_to_the_root() {
    assert!(matches("sub/skip.ts", "sub/skip.ts"));
    assert!(!matches("sub/skip.ts", "other/sub/skip.ts"));
}

#[test]
fn f17_inner_double_star_matches_zero_or_more_directories() {
    for path in ["a/b", "a/x/b", "a/x/y/b"] {
        assert!(matches("a/**/b", path), "{path}");
    }
    assert!(!matches("a/**/b", "xa/b"));
}

#[test]
fn f17_trailing_slash_selects_files_below_the_directory_at_any_depth() {
    assert!(matches("logs/", "logs/a.txt"));
    assert!(matches("logs/", "x/logs/a.txt"));
    assert!(
        !matches("logs/", "logs"),
        "a file named logs is not a directory"
    );
}

fn zone(action: ZoneAction, kind: ZoneKind, root: &str, patterns: &[&str]) -> ZoneConfig {
    ZoneConfig {
        action,
        kind,
        root: PathBuf::from(root),
        patterns: patterns.iter().map(|p| p.to_string()).collect(),
        max_size: None,
    }
}

fn sample_zones() -> Zones {
    let mut config = BTreeMap::new();
    let mut logs = zone(
        ZoneAction::Upload,
        ZoneKind::Allow,
        "/var/log/app",
        &["*.log"],
    );
    logs.max_size = Some(1000);
    config.insert("LogUploadAllow".to_string(), logs);
    config.insert(
        "SecretsDeny".to_string(),
        zone(
            ZoneAction::Upload,
            ZoneKind::Deny,
            "/var/log/app",
            &["secret/"],
        ),
    );
    config.insert(
        "PackagesAllow".to_string(),
        zone(ZoneAction::Download, ZoneKind::Allow, "/opt/packages", &[]),
    );
    Zones::build(&config).expect("zones")
}

#[test]
fn zone_rejections_use_the_exact_contract_texts() {
    let zones = sample_zones();
    let up = ZoneAction::Upload;
    assert_eq!(zones.check(up, Path::new("/var/log/app/x.log"), 10), Ok(()));
    let denied = zones
        .check(up, Path::new("/var/log/app/secret/x.log"), 10)
        .expect_err("deny");
    assert_eq!(
        denied.to_string(),
        "Denied by local a restriction \"SecretsDeny\""
    );
    let too_big = zones
        .check(up, Path::new("/var/log/app/x.log"), 1001)
        .expect_err("size");
    assert_eq!(
        too_big.to_string(),
        "Denied by local a restriction \"LogUploadAllow\""
    );
    let outside = zones
        .check(up, Path::new("/etc/passwd"), 10)
        .expect_err("no allowance");
    assert_eq!(outside.to_string(), "Denied by the lack of local allowance");
    let wrong_ext = zones
        .check(up, Path::new("/var/log/app/x.bin"), 10)
        .expect_err("pattern");
    assert_eq!(wrong_ext, ZoneDenial::NoAllowance);
    assert_eq!(
        restriction_text("A"),
        ZoneDenial::Restriction("A".into()).to_string()
    );
    assert_eq!(NO_ALLOWANCE_TEXT, ZoneDenial::NoAllowance.to_string());
}

#[test]
fn zones_only_govern_their_own_action() {
    let zones = sample_zones();
    assert_eq!(
        zones.check(ZoneAction::Download, Path::new("/var/log/app/x.log"), 1),
        Err(ZoneDenial::NoAllowance)
    );
    assert_eq!(
        zones.check(ZoneAction::Download, Path::new("/opt/packages/a/b.zip"), 1),
        Ok(())
    );
}

fn roots() -> BTreeMap<String, PathBuf> {
    BTreeMap::from([("LogUploadAllow".to_string(), PathBuf::from("/var/log/app"))])
}

#[test]
fn zone_variables_expand_in_paths() {
    let work = Path::new("/srv/work");
    assert_eq!(
        resolve("${LogUploadAllow}/app/x.log", work, &roots()),
        Ok(PathBuf::from("/var/log/app/app/x.log"))
    );
    assert!(matches!(
        resolve("${Nope}/x", work, &roots()),
        Err(PathError::UnknownZone { .. })
    ));
    assert!(matches!(
        resolve("${Log/x", work, &roots()),
        Err(PathError::Unterminated { .. })
    ));
}

#[test]
fn relative_and_windows_style_paths_land_in_the_work_dir() {
    let work = Path::new("/srv/work");
    assert_eq!(
        resolve("./SPU.zip", work, &roots()),
        Ok(PathBuf::from("/srv/work/SPU.zip"))
    );
    assert_eq!(
        resolve(".\\a\\b.zip", work, &roots()),
        Ok(PathBuf::from("/srv/work/a/b.zip"))
    );
    assert_eq!(
        resolve("a/../b.zip", work, &roots()),
        Ok(PathBuf::from("/srv/work/b.zip"))
    );
}

#[test]
fn no_path_escapes_the_work_dir_or_its_zone() {
    let work = Path::new("/srv/work");
    for raw in [
        "../etc/passwd",
        "..\\..\\etc\\passwd",
        "a/../../x",
        "/etc/passwd",
        "${LogUploadAllow}/../../etc/shadow",
        "${LogUploadAllow}\\..\\x",
        "/srv/workshop/x",
    ] {
        assert!(
            matches!(resolve(raw, work, &roots()), Err(PathError::Escapes { .. })),
            "{raw} must be refused"
        );
    }
    for raw in ["I:\\ExportedData_2023.05.*", "c:/x", "\\\\server\\share\\x"] {
        assert!(
            matches!(
                resolve(raw, work, &roots()),
                Err(PathError::ForeignDrive { .. })
            ),
            "{raw} must be refused"
        );
    }
    assert_eq!(resolve("", work, &roots()), Err(PathError::Empty));
}

#[test]
fn symlinks_out_of_the_work_dir_are_refused() {
    let work = tempfile::tempdir().expect("work");
    let outside = tempfile::tempdir().expect("outside");
    std::os::unix::fs::symlink(outside.path(), work.path().join("link")).expect("symlink");
    let err = resolve("link/x.bin", work.path(), &BTreeMap::new()).expect_err("escapes");
    assert!(matches!(err, PathError::Escapes { .. }));
}
