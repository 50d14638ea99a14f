//! Where the field recipe fixtures live, for the workspace's tests.
//!
//! The fixtures (`shared/fixtures/recipes`, beside the repository) are real recipes and
//! reports in the field format; tests across the workspace read them, never edit them. A
//! checkout that is not beside `shared/` names the folder in `CLOUDPILLAR_FIXTURES`.

use std::path::PathBuf;

/// The environment variable that names the fixtures folder.
pub const ENV: &str = "CLOUDPILLAR_FIXTURES";

/// `CLOUDPILLAR_FIXTURES`, or `shared/fixtures/recipes` next to the repository.
pub fn dir() -> PathBuf {
    std::env::var_os(ENV).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/recipes"),
        PathBuf::from,
    )
}

/// The path of fixture `name`.
pub fn path(name: &str) -> PathBuf {
    dir().join(name)
}
