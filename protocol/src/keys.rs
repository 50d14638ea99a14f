//! Twin key codec (field case F05).
//!
//! IoT Hub refuses twin keys that contain `.`, `$`, a space or a C0/C1 control character, and
//! keys longer than 1024 UTF-8 bytes. Names that come from users (file names, recipe names,
//! step ids) go through [`encode_key`] before they become keys, and back through
//! [`decode_key`] when read.
//!
//! # Encoding
//!
//! Every UTF-8 byte of `.`, `$`, space, `%` and of any control character (`char::is_control`:
//! C0, DEL and C1) is written as `%` followed by two uppercase hex digits; every other
//! character is kept as it is. So `firmware.bin` becomes `firmware%2Ebin` and `100%.txt`
//! becomes `100%25%2Etxt`. The mapping is one to one: [`decode_key`] refuses escapes the
//! encoder would not write (lowercase hex, escaped plain characters).
//!
//! The empty name, which is no valid key, becomes [`EMPTY_NAME_KEY`] (`%E`).
//!
//! # Names too long for a key
//!
//! When the encoded name would exceed [`MAX_KEY_BYTES`], [`encode_key`] returns a hash key
//! instead: [`HASHED_KEY_PREFIX`] (`%H`, which the escape rule never produces) followed by the
//! 64 lowercase hex digits of SHA-256 over the original name's UTF-8 bytes. A hash key cannot
//! be decoded ([`KeyError::HashedKey`]), so a caller that stores something under it must also
//! store the original name as a value inside, for example
//! `{"%H3f…": {"name": "<original name>", "crc": "0943260c"}}`, and read the name from there.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::hex::lower_hex;
use crate::twin::{METADATA_KEY, VERSION_KEY};

/// Largest twin key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Start of a hash key standing for a name too long to encode (see the module docs).
pub const HASHED_KEY_PREFIX: &str = "%H";
/// The key [`encode_key`] writes for the empty name, which IoT Hub does not take as a key.
/// An escape is `%` and two hex digits, so the encoder never writes `%E` otherwise.
pub const EMPTY_NAME_KEY: &str = "%E";

/// Why a key or an encoded name is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The key is the empty string.
    #[error("a key is empty")]
    Empty,
    /// The key holds a character twin keys may not contain.
    #[error(
        "key {:?} contains forbidden character {character:?} at byte {position}",
        preview(key)
    )]
    ForbiddenCharacter {
        /// The offending key.
        key: String,
        /// The forbidden character.
        character: char,
        /// Byte offset of the character in the key.
        position: usize,
    },
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("key {:?} is {bytes} bytes long, more than {max}", preview(key))]
    TooLong {
        /// The offending key.
        key: String,
        /// Its length in UTF-8 bytes.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A `%` is not followed by two hex digits.
    #[error("key {:?} has a malformed escape at byte {position}", preview(key))]
    MalformedEscape {
        /// The offending key.
        key: String,
        /// Byte offset of the `%`.
        position: usize,
    },
    /// An escape the encoder never writes (lowercase hex or a character that needs none).
    #[error("key {:?} has a non-canonical escape at byte {position}", preview(key))]
    NonCanonicalEscape {
        /// The offending key.
        key: String,
        /// Byte offset of the `%`.
        position: usize,
    },
    /// The escapes decode to bytes that are not UTF-8.
    #[error("key {:?} does not decode to UTF-8", preview(key))]
    NotUtf8 {
        /// The offending key.
        key: String,
    },
    /// The key is a hash of a longer name; the name is kept as a value by whoever wrote it.
    #[error(
        "key {:?} is a hash key; read the original name from its value",
        preview(key)
    )]
    HashedKey {
        /// The hash key.
        key: String,
    },
    /// A key somewhere in a document is not acceptable.
    #[error("invalid key at {}", if path.is_empty() { "the top level" } else { path })]
    InDocument {
        /// Dotted path of the object holding the key (empty for the top level).
        path: String,
        /// What is wrong with the key.
        #[source]
        source: Box<KeyError>,
    },
}

/// Turns any name into a valid twin key (see the module docs for the scheme).
pub fn encode_key(name: &str) -> String {
    if name.is_empty() {
        return EMPTY_NAME_KEY.to_owned();
    }
    let mut encoded = String::with_capacity(name.len());
    for character in name.chars() {
        if needs_escape(character) {
            let mut buffer = [0u8; 4];
            for byte in character.encode_utf8(&mut buffer).bytes() {
                encoded.push('%');
                encoded.push_str(&format!("{byte:02X}"));
            }
        } else {
            encoded.push(character);
        }
    }
    if encoded.len() > MAX_KEY_BYTES {
        return hashed_key(name);
    }
    encoded
}

/// The hash key [`encode_key`] uses for `name` when its encoding is too long.
pub fn hashed_key(name: &str) -> String {
    format!(
        "{HASHED_KEY_PREFIX}{}",
        lower_hex(&Sha256::digest(name.as_bytes()))
    )
}

/// True when `key` is a hash key rather than an encoded name.
pub fn is_hashed_key(key: &str) -> bool {
    key.starts_with(HASHED_KEY_PREFIX)
}

/// Recovers the name an [`encode_key`] result stands for.
pub fn decode_key(key: &str) -> Result<String, KeyError> {
    validate_key(key)?;
    if key == EMPTY_NAME_KEY {
        return Ok(String::new());
    }
    if is_hashed_key(key) {
        return Err(KeyError::HashedKey {
            key: key.to_owned(),
        });
    }
    let bytes = key.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] != b'%' {
            decoded.push(bytes[index]);
            index += 1;
            continue;
        }
        let byte = bytes
            .get(index + 1..index + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .filter(|pair| pair.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|pair| u8::from_str_radix(pair, 16).ok().map(|byte| (pair, byte)));
        match byte {
            Some((pair, byte)) if pair == format!("{byte:02X}") => decoded.push(byte),
            Some(_) => return Err(non_canonical(key, index)),
            None => {
                return Err(KeyError::MalformedEscape {
                    key: key.to_owned(),
                    position: index,
                });
            }
        }
        index += 3;
    }
    let name = String::from_utf8(decoded).map_err(|_| KeyError::NotUtf8 {
        key: key.to_owned(),
    })?;
    // One to one: a key the encoder would have written differently is refused.
    if encode_key(&name) != key {
        let position = first_difference(&encode_key(&name), key);
        return Err(non_canonical(key, position));
    }
    Ok(name)
}

/// Checks that `key` may be used as a twin key as it is.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if let Some((position, character)) = key.char_indices().find(|(_, c)| is_forbidden(*c)) {
        return Err(KeyError::ForbiddenCharacter {
            key: key.to_owned(),
            character,
            position,
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong {
            key: key.to_owned(),
            bytes: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

/// Checks every key of a document, at every depth and inside arrays.
///
/// `$version` and `$metadata` are skipped at the top level only, where the hub puts them.
pub fn validate_document_keys(document: &Value) -> Result<(), KeyError> {
    walk(document, "", true)
}

/// Checks every key of a patch. Unlike a stored document, a patch may not name `$version` or
/// `$metadata` at its top level either: the hub writes those itself.
pub fn validate_patch_keys(patch: &Value) -> Result<(), KeyError> {
    walk(patch, "", false)
}

fn walk(value: &Value, path: &str, top: bool) -> Result<(), KeyError> {
    match value {
        Value::Object(members) => {
            for (key, member) in members {
                if top && (key == VERSION_KEY || key == METADATA_KEY) {
                    continue;
                }
                validate_key(key).map_err(|source| KeyError::InDocument {
                    path: path.to_owned(),
                    source: Box::new(source),
                })?;
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                walk(member, &child, false)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{index}]"), false)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn is_forbidden(character: char) -> bool {
    matches!(character, '.' | '$' | ' ') || character.is_control()
}

fn needs_escape(character: char) -> bool {
    is_forbidden(character) || character == '%'
}

fn non_canonical(key: &str, position: usize) -> KeyError {
    KeyError::NonCanonicalEscape {
        key: key.to_owned(),
        position,
    }
}

fn first_difference(left: &str, right: &str) -> usize {
    left.bytes()
        .zip(right.bytes())
        .take_while(|(l, r)| l == r)
        .count()
}

/// The first 64 characters of a key, for error messages.
fn preview(key: &str) -> String {
    match key.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &key[..end]),
        None => key.to_owned(),
    }
}
