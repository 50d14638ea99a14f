//! Shared checks and the size-guarded JSON encoding of message bodies.

use serde::{Deserialize, Serialize};

use super::{MAX_FILE_ID_BYTES, MessageError};

pub(super) fn check_transfer(
    kind: &'static str,
    file_id: &str,
    offset: u64,
    data: &[u8],
    max_chunk: usize,
) -> Result<(), MessageError> {
    check_file_id(kind, file_id)?;
    if data.len() > max_chunk {
        return Err(MessageError::Invalid {
            message_type: kind,
            reason: "chunk over its limit",
        });
    }
    if offset.checked_add(data.len() as u64).is_none() {
        return Err(MessageError::Invalid {
            message_type: kind,
            reason: "chunk ends past 2^64",
        });
    }
    Ok(())
}

pub(super) fn check_file_id(kind: &'static str, file_id: &str) -> Result<(), MessageError> {
    if file_id.is_empty() || file_id.len() > MAX_FILE_ID_BYTES {
        return Err(MessageError::Invalid {
            message_type: kind,
            reason: "fileId must be 1 to 256 bytes",
        });
    }
    Ok(())
}

pub(super) fn encode_body<T: Serialize>(
    message: &T,
    direction: &'static str,
    max: usize,
) -> Result<Vec<u8>, MessageError> {
    let body =
        serde_json::to_vec(message).map_err(|source| MessageError::Encode { direction, source })?;
    if body.len() > max {
        return Err(MessageError::TooLarge {
            direction,
            size: body.len(),
            max,
        });
    }
    Ok(body)
}

pub(super) fn decode_body<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    direction: &'static str,
    max: usize,
) -> Result<T, MessageError> {
    if body.len() > max {
        return Err(MessageError::TooLarge {
            direction,
            size: body.len(),
            max,
        });
    }
    serde_json::from_slice(body).map_err(|source| MessageError::Decode { direction, source })
}
