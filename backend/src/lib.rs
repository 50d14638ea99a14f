//! CloudPillar backend services, run as roles of the `cloudpillar` binary.
//!
//! - [`blob`]: blob containers for patch files, uploads and service state (filesystem or Azure).

pub mod blob;
