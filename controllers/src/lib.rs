//! Reconcilers that mirror CloudPillar resources into IoT Hub device twins.
//!
//! - [`device`]: registers hub identities, keeps twin tags and desired properties in line
//!   with each Device, mirrors reported state into status.
//! - [`recipe`]: validates and signs Recipes.
//! - [`rollout`]: brings signed recipes to devices in waves.
//! - [`twin`]: the [`TwinService`](twin::TwinService) the controllers reach hubs through.
//! - [`run`] starts them all behind leader election, with metrics and health endpoints.
#![forbid(unsafe_code)]

pub mod config;
pub mod device;
mod error;
pub mod hub;
mod hub_events;
pub mod hubs;
pub mod recipe;
pub mod rollout;
pub mod runtime;
pub mod status;
pub mod twin;

pub use config::{Backoff, Config, MANAGER, SecretLocation};
pub use error::{Error, Result};
pub use hubs::{AzureConnector, HubConnector};
pub use runtime::{LeaderElection, RunError, run, run_until};
