//! Error texts for reports: an error with its whole source chain on one line.

pub use cloudpillar_protocol::causes::with_causes;
