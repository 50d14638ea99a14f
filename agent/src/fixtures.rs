//! The field recipe fixtures unit tests read.

/// The bytes of fixture `name`.
pub fn read(name: &str) -> Vec<u8> {
    let path = cloudpillar_protocol::fixtures::path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
