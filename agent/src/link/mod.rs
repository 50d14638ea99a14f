//! The link to the hub: MQTT over TLS in IoT Hub's device dialect, SAS tokens, DPS.

pub mod backoff;
pub mod desired;
pub mod sas;
pub mod topics;
