//! Twin synchronisation over one connection: subscriptions, full read, desired changes,
//! one reported patch in flight at a time, C2D dispatch with acks after durability.

use std::sync::Arc;

use cloudpillar_protocol::recipe::section_order;
use cloudpillar_protocol::twin::{CANCEL_KEY, cancelled_id};
use rumqttc::{AsyncClient, ClientError, Publish, QoS, SubscribeFilter};
use serde_json::{Value, json};

use super::desired::DesiredChange;
use super::session::QOS;
use super::topics::{self, Incoming};
use super::{Link, Outgoing};
use crate::engine::Delivery;
use crate::engine::journal::RecipeSource;

/// Per-connection synchronisation state.
pub(super) struct Sync {
    link: Arc<Link>,
    client: AsyncClient,
    device_id: String,
    next_rid: u64,
    get_rid: Option<u64>,
    synced: bool,
    in_flight: Option<(u64, Value)>,
    in_flight_since: tokio::time::Instant,
    /// Publishes handed to the client that its event loop has not taken yet.
    waiting: usize,
}

/// A reported patch without an answer for this long is sent again.
const PATCH_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Most device-to-cloud messages handed to the client and not yet taken by its event loop.
///
/// The client's request channel is bounded and only drains while the session polls the event
/// loop, which it does not while it awaits a publish or an ack: a queue of many D2C messages
/// handed over as fast as the outbox yields them fills that channel and the session hangs for
/// good. Keeping D2C messages well below the channel's capacity leaves room for reported
/// patches and acks, and keeps what a `kill -9` can lose after the hand-off small.
const D2C_HANDOFF: usize = 32;

impl Sync {
    pub(super) fn new(link: Arc<Link>, client: AsyncClient, device_id: String) -> Self {
        Self {
            link,
            client,
            device_id,
            next_rid: 1,
            get_rid: None,
            synced: false,
            in_flight: None,
            in_flight_since: tokio::time::Instant::now(),
            waiting: 0,
        }
    }

    /// Hands a publish to the client; counted until the event loop takes it.
    async fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), ClientError> {
        self.client.publish(topic, QOS, false, payload).await?;
        self.waiting += 1;
        Ok(())
    }

    /// The event loop took a publish (sent it, or holds it until its packet id is free).
    pub(super) fn on_publish_taken(&mut self) {
        // Publishes carried over from the last connection were not counted here.
        self.waiting = self.waiting.saturating_sub(1);
    }

    /// Whether another device-to-cloud message may be handed to the client (see
    /// [`D2C_HANDOFF`]).
    pub(super) fn can_hand_over(&self) -> bool {
        self.waiting < D2C_HANDOFF
    }

    fn rid(&mut self) -> u64 {
        self.next_rid += 1;
        self.next_rid
    }

    pub(super) fn is_synced(&self) -> bool {
        self.synced
    }

    pub(super) fn can_report(&self) -> bool {
        self.synced && self.in_flight.is_none()
    }

    /// Subscribes every filter again, whatever the broker says about the session (F09).
    pub(super) async fn on_connack(&mut self) {
        self.synced = false;
        self.in_flight = None;
        let filters = topics::hub_filters(&self.device_id)
            .into_iter()
            .map(|path| SubscribeFilter::new(path, QoS::AtLeastOnce));
        if let Err(error) = self.client.subscribe_many(filters).await {
            tracing::warn!(%error, "failed to queue subscriptions");
        }
    }

    /// After the subscriptions: read the full twin (F04).
    pub(super) async fn on_suback(&mut self) {
        if self.get_rid.is_none() && !self.synced {
            self.request_full_twin().await;
        }
    }

    async fn request_full_twin(&mut self) {
        let rid = self.rid();
        self.get_rid = Some(rid);
        if let Err(error) = self.publish(topics::twin_get(rid), Vec::new()).await {
            tracing::warn!(%error, "failed to queue the twin read");
        }
    }

    pub(super) async fn on_publish(&mut self, publish: Publish) {
        match topics::classify(&publish.topic, &self.device_id) {
            Incoming::TwinResponse { status, rid, .. } => {
                if rid.is_some() && rid == self.get_rid {
                    self.on_full_twin(status, &publish.payload).await;
                } else if let Some((sent_rid, patch)) = self.in_flight.take() {
                    if Some(sent_rid) == rid {
                        self.on_patch_answer(status, patch).await;
                    } else {
                        self.in_flight = Some((sent_rid, patch));
                    }
                }
            }
            Incoming::DesiredPatch { version } => {
                self.on_desired_patch(version, &publish.payload).await;
            }
            Incoming::C2d { properties } => {
                tracing::debug!(
                    pkid = publish.pkid,
                    bytes = publish.payload.len(),
                    "C2D message received"
                );
                if let Some(handler) = self.link.c2d.get() {
                    handler.handle(&properties, &publish.payload).await;
                } else {
                    tracing::warn!("C2D message without a handler; acknowledged and dropped");
                }
            }
            Incoming::Dps { .. } | Incoming::Other => {
                tracing::debug!(topic = %publish.topic, "unexpected publish");
            }
        }
        if let Err(error) = self.client.ack(&publish).await {
            tracing::warn!(%error, "failed to acknowledge a publish");
        }
    }

    async fn on_full_twin(&mut self, status: u16, payload: &[u8]) {
        self.get_rid = None;
        if status != 200 {
            tracing::warn!(status, "twin read refused; retrying");
            self.request_full_twin().await;
            return;
        }
        let Ok(twin) = serde_json::from_slice::<Value>(payload) else {
            tracing::warn!("twin read answer is not JSON");
            return;
        };
        self.link
            .reported
            .set_acknowledged(twin.get("reported").cloned().unwrap_or(json!({})));
        let desired = twin.get("desired").cloned().unwrap_or(json!({}));
        let change = self.link.desired.lock().await.offer_full(&desired);
        let order = section_order(payload, &["desired", "changeSpec"]);
        self.apply(change, order).await;
        self.synced = true;
        tracing::info!("twin in sync");
        self.send_reported().await;
    }

    async fn on_desired_patch(&mut self, version: Option<u64>, payload: &[u8]) {
        let Ok(patch) = serde_json::from_slice::<Value>(payload) else {
            tracing::warn!("desired patch is not JSON");
            return;
        };
        let change = self.link.desired.lock().await.offer_patch(&patch, version);
        if matches!(change, Ok(DesiredChange::Gap)) {
            tracing::info!(?version, "desired versions skipped; reading the full twin");
            self.request_full_twin().await;
            return;
        }
        self.apply(change, section_order(payload, &["changeSpec"]))
            .await;
    }

    async fn apply(
        &mut self,
        change: Result<DesiredChange, crate::durable::DurableError>,
        order: Option<Vec<String>>,
    ) {
        let (version, changes) = match change {
            Ok(DesiredChange::Apply { version, changes }) => (version, changes),
            Ok(_) => return,
            Err(error) => {
                tracing::error!(%error, "failed to persist desired properties");
                return;
            }
        };
        let desired = self.link.desired.lock().await.document().clone();
        if let Ok(mut view) = self.link.desired_view.write() {
            *view = desired.clone();
        }
        if let Some(engine) = self.link.engine.get() {
            let touches = |k: &str| changes.get(k).is_some();
            // A recipe the desired section also cancels (its Rollout was deleted or gave up
            // on this device while it was away) is never started.
            let cancelled = desired.get(CANCEL_KEY).and_then(cancelled_id);
            let delivered = desired
                .get("changeSpec")
                .filter(|_| touches("changeSpec") || touches("changeSign"));
            match delivered {
                Some(spec)
                    if cancelled.is_some()
                        && spec.get("id").and_then(Value::as_str) == cancelled =>
                {
                    tracing::info!(
                        recipe = cancelled,
                        "desired recipe is cancelled; not started"
                    );
                }
                Some(spec) => {
                    let delivery = Delivery {
                        spec: spec.clone(),
                        order: order.unwrap_or_default(),
                        sign: desired
                            .get("changeSign")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        source: RecipeSource::Twin,
                    };
                    let outcome = engine.submit(delivery).await;
                    tracing::info!(?outcome, "desired recipe delivered");
                }
                None => {}
            }
            if let Some(id) = changes.get(CANCEL_KEY).and_then(cancelled_id) {
                let answer = engine.cancel(id).await;
                self.link.reported.set(CANCEL_KEY, answer);
            }
        }
        self.link
            .reported
            .set("desiredVersionApplied", json!(version));
    }

    async fn on_patch_answer(&mut self, status: u16, patch: Value) {
        if (200..300).contains(&status) {
            self.link.reported.acknowledge(&patch);
        } else if status == 429 || status >= 500 {
            tracing::warn!(status, "reported patch throttled or failed; will resend");
        } else {
            // The hub will never take this patch: keep going with later changes.
            tracing::error!(status, "reported patch refused");
            self.link.reported.acknowledge(&patch);
        }
        self.send_reported().await;
    }

    /// Sends the pending reported difference, if none is in flight.
    pub(super) async fn send_reported(&mut self) {
        if !self.synced || self.in_flight.is_some() {
            return;
        }
        let Some(patch) = self.link.reported.pending_patch() else {
            return;
        };
        let rid = self.rid();
        let Ok(body) = serde_json::to_vec(&patch) else {
            return;
        };
        match self.publish(topics::reported_patch(rid), body).await {
            Ok(()) => {
                self.in_flight = Some((rid, patch));
                self.in_flight_since = tokio::time::Instant::now();
            }
            Err(error) => tracing::warn!(%error, "failed to queue a reported patch"),
        }
    }

    /// When the patch in flight counts as lost, if one is in flight.
    pub(super) fn patch_deadline(&self) -> Option<tokio::time::Instant> {
        self.in_flight
            .as_ref()
            .map(|_| self.in_flight_since + PATCH_ANSWER_TIMEOUT)
    }

    /// Gives up waiting for the patch in flight and sends the current difference again.
    pub(super) async fn resend_reported(&mut self) {
        tracing::warn!("reported patch unanswered; sending again");
        self.in_flight = None;
        self.send_reported().await;
    }

    pub(super) async fn send_d2c(&mut self, message: Outgoing) {
        let props: Vec<(&str, &str)> = message
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let topic = topics::d2c_event(&self.device_id, &props);
        if let Err(error) = self.publish(topic, message.payload).await {
            tracing::warn!(%error, "failed to queue a device-to-cloud message");
        }
    }
}
