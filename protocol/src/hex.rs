//! Lowercase hex text for digests and key ids.

use std::fmt::Write;

/// `bytes` as lowercase hex, two digits per byte.
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            // Writing into a String cannot fail.
            let _ = write!(text, "{byte:02x}");
            text
        })
}
