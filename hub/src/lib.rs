//! An IoT-Hub-compatible edge hub: MQTT device endpoint, REST service API, DPS and a durable
//! store, for development, tests and offline sites.
#![forbid(unsafe_code)]

pub mod amqp;
pub mod c2d;
pub mod config;
pub mod core;
mod deliveries;
pub mod dps;
pub mod error;
pub mod events;
mod hub;
pub mod mqtt;
pub mod query;
pub mod registry;
pub mod rest;
pub mod sas;
mod service;
pub mod standalone;
pub mod store;
pub mod tls;
pub mod twins;
pub mod validate;
pub mod x509;

pub use config::{HubConfig, MaxDeliveryCount};
pub use error::{ConfigError, HubError, Refusal, StartError, StoreError};
pub use events::HubEvent;
pub use hub::{Hub, HubHandle};
