//! Running the hub as a standalone process (`cloudpillar hub`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Hub, HubConfig, HubHandle, MaxDeliveryCount, StartError};

/// Command-line options of the standalone hub.
#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// Directory for the database, TLS material and policy key.
    #[arg(long, env = "CLOUDPILLAR_HUB_DATA_DIR")]
    pub data_dir: PathBuf,
    /// MQTT device endpoint address.
    #[arg(long, default_value = "127.0.0.1:8883")]
    pub mqtt: SocketAddr,
    /// Service REST API address.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub http: SocketAddr,
    /// Event Hubs-compatible AMQP endpoint address (for example 127.0.0.1:5671); none is
    /// served without it.
    #[arg(long)]
    pub amqp: Option<SocketAddr>,
    /// Event Hubs-compatible name of the event stream.
    #[arg(long, default_value = "edgehub")]
    pub event_hub_name: String,
    /// Partitions of the event stream (devices are spread over them by id hash).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub partitions: u32,
    /// Plain TCP and HTTP instead of TLS (loopback addresses only).
    #[arg(long)]
    pub insecure_loopback: bool,
    /// Host name in SAS resource URIs and device user names.
    #[arg(long, default_value = "edgehub.local")]
    pub hostname: String,
    /// PEM certificate chain for both endpoints (with --tls-key); generated when omitted.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Shared access policy name for the service API.
    #[arg(long, default_value = "iothubowner")]
    pub policy_name: String,
    /// Times a C2D message is published without being acknowledged before the hub
    /// dead-letters it (IoT Hub's maxDeliveryCount), 1 to 100.
    #[arg(long, value_name = "COUNT", default_value_t = MaxDeliveryCount::default())]
    pub c2d_max_delivery_count: MaxDeliveryCount,
}

impl HubArgs {
    /// The hub configuration these options describe.
    pub fn config(&self) -> HubConfig {
        let mut config = HubConfig::new(&self.data_dir);
        config.mqtt_addr = self.mqtt;
        config.http_addr = self.http;
        config.amqp_addr = self.amqp;
        config.event_hub_name = self.event_hub_name.clone();
        config.partition_count = self.partitions;
        config.insecure_loopback = self.insecure_loopback;
        config.hostname = self.hostname.clone();
        config.policy_name = self.policy_name.clone();
        config.tls_cert = self.tls_cert.clone().zip(self.tls_key.clone());
        config.c2d_max_delivery_count = self.c2d_max_delivery_count;
        config
    }
}

/// Starts the hub for a standalone process.
pub async fn start(args: &HubArgs) -> Result<HubHandle, StartError> {
    Hub::start(args.config()).await
}

/// Lines telling an operator where the hub listens and where its secrets are.
pub fn summary(hub: &HubHandle) -> String {
    let mut out = format!(
        "edge hub listening\n  mqtt: {}\n  http: {}\n  hostname: {}\n  DPS id scope: {}\n",
        hub.mqtt_addr(),
        hub.http_addr(),
        hub.hostname(),
        hub.id_scope(),
    );
    if let Some(amqp) = hub.amqp_addr() {
        out.push_str(&format!(
            "  amqp (Event Hubs-compatible name {:?}): {amqp}\n",
            hub.event_hub_name()
        ));
    }
    match hub.ca_cert_path() {
        Some(ca) => out.push_str(&format!("  development CA certificate: {}\n", ca.display())),
        None => out.push_str("  TLS: supplied certificate or plain loopback\n"),
    }
    out.push_str(&format!(
        "  service policy {:?} key file: {}\n  service connection string: HostName={};SharedAccessKeyName={};SharedAccessKey=<key in file>\n  sample service token (1 h): {}\n",
        hub.policy_name(),
        hub.policy_key_file().display(),
        hub.hostname(),
        hub.policy_name(),
        hub.service_token(Duration::from_secs(3600)),
    ));
    out
}

/// Waits for Ctrl-C or, on Unix, SIGTERM.
pub async fn wait_for_shutdown() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: HubArgs,
    }

    fn parse(extra: &[&str]) -> Result<HubConfig, clap::Error> {
        let line = ["cloudpillar-hub", "--data-dir", "/tmp/hub"]
            .iter()
            .chain(extra);
        Cli::try_parse_from(line).map(|cli| cli.args.config())
    }

    #[test]
    fn c2d_max_delivery_count_flag_defaults_to_10_and_refuses_0() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(config.c2d_max_delivery_count.get(), 10);
        let config = parse(&["--c2d-max-delivery-count", "100"]).expect("at the maximum");
        assert_eq!(config.c2d_max_delivery_count.get(), 100);

        let refused = parse(&["--c2d-max-delivery-count", "0"]).expect_err("0 refused");
        let text = refused.to_string();
        assert!(text.contains("--c2d-max-delivery-count"), "{text}");
        assert!(
            text.contains("c2d max delivery count 0 is outside 1..=100"),
            "{text}"
        );
    }
}
