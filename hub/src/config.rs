//! Hub configuration.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ConfigError;

/// How the hub is started.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Directory for the database, generated TLS material and the policy key file.
    pub data_dir: PathBuf,
    /// Host name devices and services put in SAS resource URIs (`sr`) and MQTT user names.
    pub hostname: String,
    /// MQTT device endpoint address (port 0 picks a free port).
    pub mqtt_addr: SocketAddr,
    /// Service REST endpoint address (port 0 picks a free port).
    pub http_addr: SocketAddr,
    /// Event Hubs-compatible AMQP endpoint address (port 0 picks a free port); `None` serves
    /// no AMQP endpoint.
    pub amqp_addr: Option<SocketAddr>,
    /// Serve plain TCP, HTTP and AMQP instead of TLS; refused unless every address is loopback.
    pub insecure_loopback: bool,
    /// PEM certificate chain and key for both endpoints; generated under `data_dir` when unset.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    /// Shared access policy name for the service API.
    pub policy_name: String,
    /// Base64 policy key; generated once and kept in `data_dir/policy.key` when unset.
    pub policy_key: Option<String>,
    /// DPS ID scope devices use in their provisioning user name.
    pub id_scope: String,
    /// Events older than this are dropped from the event log.
    pub event_retention: Duration,
    /// At most this many events are kept in the log.
    pub event_retention_count: u64,
    /// Default C2D time to live when the sender sets none.
    pub c2d_default_ttl: Duration,
    /// Publishes of a C2D message without an acknowledgement before the hub dead-letters it.
    pub c2d_max_delivery_count: MaxDeliveryCount,
    /// Event Hubs-compatible name receivers put first in their address.
    pub event_hub_name: String,
    /// Partitions of the Event Hubs-compatible endpoint (devices spread by id hash).
    pub partition_count: u32,
}

impl HubConfig {
    /// A configuration for tests and development: loopback, free ports, plain transports off.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            hostname: "edgehub.local".into(),
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            amqp_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            insecure_loopback: false,
            tls_cert: None,
            policy_name: "iothubowner".into(),
            policy_key: None,
            id_scope: "0ne00EDGE01".into(),
            event_retention: Duration::from_secs(24 * 3600),
            event_retention_count: 1_000_000,
            c2d_default_ttl: Duration::from_secs(3600),
            c2d_max_delivery_count: MaxDeliveryCount::default(),
            event_hub_name: "edgehub".into(),
            partition_count: 4,
        }
    }
}

/// How many times a C2D message is published to its device before the hub dead-letters it:
/// Azure IoT Hub's `maxDeliveryCount`, 1 to 100, 10 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxDeliveryCount(u32);

impl MaxDeliveryCount {
    /// The values IoT Hub accepts.
    pub const RANGE: std::ops::RangeInclusive<u32> = 1..=100;

    /// The count, refused outside [`Self::RANGE`].
    pub fn new(count: u64) -> Result<Self, ConfigError> {
        u32::try_from(count)
            .ok()
            .filter(|count| Self::RANGE.contains(count))
            .map(Self)
            .ok_or(ConfigError::MaxDeliveryCountOutOfRange { count })
    }

    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for MaxDeliveryCount {
    fn default() -> Self {
        Self(10)
    }
}

impl fmt::Display for MaxDeliveryCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MaxDeliveryCount {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let count =
            text.trim()
                .parse()
                .map_err(|source| ConfigError::MaxDeliveryCountNotANumber {
                    text: text.to_owned(),
                    source,
                })?;
        Self::new(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_delivery_count_takes_1_to_100_and_names_itself_when_refused() {
        assert_eq!(MaxDeliveryCount::default().get(), 10);
        for count in [1, 2, 100] {
            assert_eq!(
                MaxDeliveryCount::new(count).map(MaxDeliveryCount::get),
                Ok(count as u32)
            );
        }
        for count in [0, 101, u64::from(u32::MAX) + 1] {
            let refused = MaxDeliveryCount::new(count).expect_err("out of range");
            assert_eq!(
                refused.to_string(),
                format!("c2d max delivery count {count} is outside 1..=100")
            );
        }
        assert_eq!(
            "7".parse::<MaxDeliveryCount>().map(MaxDeliveryCount::get),
            Ok(7)
        );
        let refused = "-1".parse::<MaxDeliveryCount>().expect_err("not a count");
        assert_eq!(
            refused.to_string(),
            "c2d max delivery count \"-1\" is not a number"
        );
    }
}
