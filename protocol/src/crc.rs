//! CRC-32 of transferred ranges (field case F13).
//!
//! The variant is CRC-32/ISO-HDLC, the one zlib, gzip and PNG use (`123456789` gives
//! `cbf43926`), computed over the decoded bytes of a range, never over base64 text. A CRC is
//! written as exactly 8 lowercase hex digits (`0943260c`, never `943260c`) and compared as a
//! `u32`.

/// Why CRC text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("crc {text:?} is not 8 hex digits")]
pub struct ParseCrcError {
    /// The refused text.
    pub text: String,
}

/// CRC-32/ISO-HDLC of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// `crc` as 8 lowercase, zero-padded hex digits.
pub fn format_crc(crc: u32) -> String {
    format!("{crc:08x}")
}

/// Reads a CRC written as exactly 8 hex digits (either case).
pub fn parse_crc(text: &str) -> Result<u32, ParseCrcError> {
    let refused = || ParseCrcError {
        text: text.to_owned(),
    };
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refused());
    }
    u32::from_str_radix(text, 16).map_err(|_| refused())
}

/// Incremental CRC over a range that arrives in pieces of any size, the short last one
/// included.
#[derive(Debug, Clone, Default)]
pub struct RangeCrc {
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl RangeCrc {
    /// An empty range.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next piece of the range, whatever its length.
    pub fn update(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.bytes += piece.len() as u64;
    }

    /// Number of bytes added so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// CRC of everything added so far; more pieces may still be added afterwards.
    pub fn value(&self) -> u32 {
        self.hasher.clone().finalize()
    }

    /// CRC of the whole range.
    pub fn finalize(self) -> u32 {
        self.hasher.finalize()
    }
}

/// Serde helpers writing a `u32` CRC as 8-hex-digit text (`#[serde(with = "crc::hex_text")]`).
pub mod hex_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Writes the CRC as 8 lowercase hex digits.
    pub fn serialize<S: Serializer>(crc: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_crc(*crc))
    }

    /// Reads 8 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_crc(&text).map_err(D::Error::custom)
    }
}
