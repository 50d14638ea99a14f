//! The field recipe fixtures unit tests read.

use std::path::PathBuf;

/// `CLOUDPILLAR_FIXTURES`, or `shared/fixtures/recipes` next to the repository.
pub fn dir() -> PathBuf {
    std::env::var_os("CLOUDPILLAR_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/recipes"),
        PathBuf::from,
    )
}

/// The bytes of fixture `name`.
pub fn read(name: &str) -> Vec<u8> {
    let path = dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
