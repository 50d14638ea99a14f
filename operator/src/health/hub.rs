//! The edge hub's metrics and readiness: committed events by source, device connections,
//! the last sequence number, dead-lettered C2D messages, and whether the store and both
//! endpoints answer.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use cloudpillar_hub::core::Core;
use cloudpillar_hub::events::{SOURCE_CONNECTION, SOURCE_TELEMETRY, SOURCE_TWIN};
use cloudpillar_hub::{HubEvent, HubHandle};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::RoleHealth;

/// Source of a committed event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `telemetry`, `twin_change`, `connection` or `other`.
    pub source: &'static str,
}

/// A device connection change.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `connected` or `disconnected`.
    pub state: &'static str,
}

/// The hub's metrics, fed from its live event stream.
#[derive(Debug, Clone, Default)]
pub struct HubMetrics {
    /// `cloudpillar_hub_events_total{source}`: events committed since this process started.
    pub events: Family<SourceLabel, Counter>,
    /// `cloudpillar_hub_device_connections_total{state}`: connects and disconnects.
    pub connections: Family<StateLabel, Counter>,
    /// `cloudpillar_hub_last_event_sequence`: sequence number of the last committed event.
    pub last_sequence: Gauge,
    /// `cloudpillar_hub_events_uncounted_total`: events the counters missed while behind.
    pub uncounted: Counter,
}

impl HubMetrics {
    fn register(health: &mut RoleHealth) -> Self {
        let metrics = Self::default();
        let registry = health.registry();
        registry.register(
            "hub_events",
            "Events committed by source",
            metrics.events.clone(),
        );
        registry.register(
            "hub_device_connections",
            "Device connects and disconnects",
            metrics.connections.clone(),
        );
        registry.register(
            "hub_last_event_sequence",
            "Sequence number of the last committed event",
            metrics.last_sequence.clone(),
        );
        registry.register(
            "hub_events_uncounted",
            "Events the metrics missed because counting fell behind",
            metrics.uncounted.clone(),
        );
        metrics
    }

    fn count(&self, event: &HubEvent) {
        let source = match event.source.as_str() {
            SOURCE_TELEMETRY => "telemetry",
            SOURCE_TWIN => "twin_change",
            SOURCE_CONNECTION => "connection",
            _ => "other",
        };
        self.events.get_or_create(&SourceLabel { source }).inc();
        if source == "connection" {
            let state = match event.properties.get("opType").map(String::as_str) {
                Some("deviceConnected") => "connected",
                _ => "disconnected",
            };
            self.connections.get_or_create(&StateLabel { state }).inc();
        }
        let sequence = i64::try_from(event.sequence_number).unwrap_or(i64::MAX);
        self.last_sequence.set(sequence);
    }
}

/// `cloudpillar_hub_c2d_dead_lettered_total`: C2D messages the hub removed after its maximum
/// delivery count, read from the hub at each scrape.
#[derive(Debug)]
struct DeadLettered(Arc<Core>);

impl Collector for DeadLettered {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(self.0.c2d_dead_lettered());
        let metric = encoder.encode_descriptor(
            "hub_c2d_dead_lettered",
            "C2D messages dead-lettered after the maximum delivery count",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// Registers the hub's metrics and checks in `health` and starts counting its events until
/// `shutdown`.
pub fn watch(hub: &HubHandle, health: &mut RoleHealth, shutdown: CancellationToken) {
    let metrics = HubMetrics::register(health);
    health
        .registry()
        .register_collector(Box::new(DeadLettered(hub.core().clone())));
    let last = *hub.core().bus.last_sequence().borrow();
    metrics
        .last_sequence
        .set(i64::try_from(last).unwrap_or(i64::MAX));
    let mut events = hub.events();
    let counting = metrics.clone();
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = events.recv() => received,
            };
            match received {
                Ok(event) => counting.count(&event),
                Err(RecvError::Lagged(missed)) => {
                    counting.uncounted.inc_by(missed);
                }
                Err(RecvError::Closed) => return,
            }
        }
    });

    let core = hub.core().clone();
    health.check("store", move || {
        let core = core.clone();
        async move {
            let last = *core.bus.last_sequence().borrow();
            tokio::task::spawn_blocking(move || core.read_events(last.max(1), 1))
                .await
                .context("store read task")?
                .context("reading the event log")?;
            Ok(())
        }
    });
    for (name, addr) in [("mqtt", hub.mqtt_addr()), ("https", hub.http_addr())] {
        health.check(name, move || accepts(addr));
    }
}

/// The listener at `addr` accepts a TCP connection (on loopback when it listens on every
/// address).
async fn accepts(addr: SocketAddr) -> anyhow::Result<()> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        let loopback: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        target.set_ip(loopback);
    }
    tokio::net::TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_show_dead_lettered_c2d_messages() {
        let (_dir, hub) = crate::health::loopback_hub().await;
        let mut health = RoleHealth::new();
        let shutdown = CancellationToken::new();
        watch(&hub, &mut health, shutdown.clone());

        let text = health.encode();
        assert!(
            text.contains("cloudpillar_hub_c2d_dead_lettered_total 0"),
            "{text}"
        );
        shutdown.cancel();
        hub.shutdown().await;
    }
}
