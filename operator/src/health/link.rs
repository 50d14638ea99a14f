//! Counts what the streamer and writer do with the hub: events read, C2D messages and bytes
//! sent, requests by outcome, and how far into the event stream the role has read.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudpillar_backend::hub_link::{C2dSend, EventPage, HubLink, HubLinkError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A hub request by kind and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `read_events`, `send_c2d` or `c2d_pending`.
    pub action: &'static str,
    /// `ok`, `queue_full`, `not_found` or `failed`.
    pub outcome: &'static str,
}

/// The hub link metrics of one role.
#[derive(Debug, Clone, Default)]
pub struct LinkMetrics {
    /// `cloudpillar_hub_events_read_total`: events received from the hub's stream.
    pub events_read: Counter,
    /// `cloudpillar_hub_requests_total{action,outcome}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `cloudpillar_c2d_bytes_total`: body bytes of the C2D messages the hub accepted.
    pub c2d_bytes: Counter,
    /// `cloudpillar_hub_event_position`: the sequence number this role reads from next.
    pub position: Gauge,
}

impl LinkMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "hub_events_read",
            "Events received from the hub's event stream",
            metrics.events_read.clone(),
        );
        registry.register(
            "hub_requests",
            "Requests to the hub by action and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "c2d_bytes",
            "Body bytes of C2D messages the hub accepted",
            metrics.c2d_bytes.clone(),
        );
        registry.register(
            "hub_event_position",
            "Sequence number of the next event this role reads",
            metrics.position.clone(),
        );
        metrics
    }

    fn count<T>(&self, action: &'static str, result: &Result<T, HubLinkError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(HubLinkError::QueueFull { .. }) => "queue_full",
            Err(HubLinkError::DeviceNotFound { .. }) => "not_found",
            Err(HubLinkError::Request { .. }) => "failed",
        };
        self.requests
            .get_or_create(&RequestLabels { action, outcome })
            .inc();
    }
}

/// A [`HubLink`] that counts every call into [`LinkMetrics`] and passes it on.
#[derive(Debug, Clone)]
pub struct CountedLink {
    inner: Arc<dyn HubLink>,
    metrics: LinkMetrics,
}

impl CountedLink {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn HubLink>, metrics: LinkMetrics) -> Self {
        Self { inner, metrics }
    }

    /// Readiness: the hub answers a read at the role's position without waiting (not
    /// counted, so probes do not show up as work).
    pub async fn probe(&self) -> Result<(), HubLinkError> {
        let from = u64::try_from(self.metrics.position.get()).unwrap_or(0);
        self.inner
            .read_events(from, 1, Duration::ZERO)
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl HubLink for CountedLink {
    async fn read_events(
        &self,
        from: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<EventPage, HubLinkError> {
        let result = self.inner.read_events(from, limit, wait).await;
        self.metrics.count("read_events", &result);
        if let Ok(page) = &result {
            self.metrics.events_read.inc_by(page.events.len() as u64);
            let next = i64::try_from(page.next_sequence_number).unwrap_or(i64::MAX);
            self.metrics.position.set(next);
        }
        result
    }

    async fn send_c2d(&self, device: &str, message: C2dSend) -> Result<(), HubLinkError> {
        let size = message.body.len() as u64;
        let result = self.inner.send_c2d(device, message).await;
        self.metrics.count("send_c2d", &result);
        if result.is_ok() {
            self.metrics.c2d_bytes.inc_by(size);
        }
        result
    }

    async fn c2d_pending(&self, device: &str) -> Result<Option<usize>, HubLinkError> {
        let result = self.inner.c2d_pending(device).await;
        self.metrics.count("c2d_pending", &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cloudpillar_backend::hub_link::EmbeddedHub;

    use super::*;

    #[tokio::test]
    async fn counts_events_sends_and_refusals_of_a_real_hub() {
        let (_dir, hub) = crate::health::loopback_hub().await;
        let mut registry = Registry::default();
        let metrics = LinkMetrics::register(&mut registry);
        let link = CountedLink::new(
            Arc::new(EmbeddedHub::new(hub.core().clone())),
            metrics.clone(),
        );

        link.probe().await.expect("the hub answers the probe");
        let page = link.read_events(1, 10, Duration::ZERO).await.expect("read");
        assert_eq!(metrics.events_read.get(), page.events.len() as u64);
        assert_eq!(
            metrics.position.get(),
            i64::try_from(page.next_sequence_number).expect("small")
        );
        let message = C2dSend {
            body: vec![7; 100],
            properties: BTreeMap::new(),
            message_id: "m1".into(),
        };
        let refused = link.send_c2d("no-such-device", message).await;
        assert!(refused.is_err(), "{refused:?}");
        assert_eq!(metrics.c2d_bytes.get(), 0, "refused bytes are not counted");

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.contains("hub_requests_total{action=\"read_events\",outcome=\"ok\"} 1"),
            "the probe is not counted, the read is:\n{text}"
        );
        assert!(
            text.contains("hub_requests_total{action=\"send_c2d\",outcome=\"not_found\"} 1"),
            "{text}"
        );
        hub.shutdown().await;
    }
}
