//! Twin documents, cloud/device messages and signing shared by the operator, hub and agent.
//!
//! Pure types and logic: nothing here does I/O.

pub mod crc;
pub mod encoding;
mod hex;
pub mod keys;
pub mod limits;
pub mod messages;
pub mod recipe;
pub mod reported;
pub mod signing;
pub mod twin;
