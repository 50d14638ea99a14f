//! Hub configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
            event_hub_name: "edgehub".into(),
            partition_count: 4,
        }
    }
}
