//! The CloudPillar device agent: follows its twin, runs signed recipes without disturbing
//! clinical work, and reports every step.

pub mod api;
pub mod causes;
pub mod config;
pub mod daemon;
pub mod durable;
pub mod engine;
#[cfg(test)]
mod fixtures;
pub mod keystore;
pub mod link;
pub mod mode;
pub mod reported;
pub mod state;
pub mod state_dir;
pub mod transfer;
pub mod zones;
