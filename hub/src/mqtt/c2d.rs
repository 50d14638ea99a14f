//! Cloud-to-device delivery on one device connection.
//!
//! Queued messages are published in queue order with up to [`C2D_IN_FLIGHT`] of them waiting
//! for their PUBACK, so neither the round trip to the device nor the durable removal of the
//! previous message holds up the next one. Each message leaves the durable queue only after
//! its PUBACK (QoS 1) or after it was written (QoS 0): at-least-once delivery. Removals that
//! come in together commit together. A message is published once per connection; one still
//! queued when the connection drops is published again on the next, until it went out the
//! hub's maximum delivery count: then it is removed unpublished (dead-lettered).

use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use futures::stream::{FuturesUnordered, StreamExt};
use ntex_bytes::Bytes;

use super::session::{Connection, Peer};
use super::topics::{Feed, encode_bag};
use crate::c2d::C2dMessage;
use crate::deliveries::Attempt;

/// Most C2D publishes waiting for their acknowledgement on one connection; the MQTT server's
/// own send window is 16 as well.
const C2D_IN_FLIGHT: usize = 16;

/// One publish until its message is removed from the queue; false when the connection
/// failed under it.
type Delivery = Pin<Box<dyn Future<Output = bool>>>;

/// Delivers queued C2D messages until the connection closes or is replaced.
pub async fn deliver_c2d(conn: Rc<Connection>) {
    let Peer::Device(device) = conn.peer.clone() else {
        return;
    };
    // First queue sequence number not yet published on this connection.
    let mut next_seq = 0;
    let mut in_flight: FuturesUnordered<Delivery> = FuturesUnordered::new();
    loop {
        if let Some(qos) = subscribed_qos(&conn) {
            let pending = match conn.core.c2d_pending_from(&device, next_seq) {
                Ok(pending) => {
                    if next_seq == 0 {
                        // The whole queue: counts of messages no longer in it are dropped.
                        let queued: Vec<u64> = pending.iter().map(|(seq, _)| *seq).collect();
                        conn.core.c2d_prune(&device, &queued);
                    }
                    pending
                }
                Err(error) => {
                    tracing::warn!(device, %error, "C2D queue not readable; retrying at the next wake");
                    Vec::new()
                }
            };
            for (seq, message) in pending {
                while in_flight.len() >= C2D_IN_FLIGHT {
                    if in_flight.next().await == Some(false) {
                        return;
                    }
                }
                if !conn.sink.is_ready() {
                    tracing::debug!(
                        device,
                        seq,
                        credit = conn.sink.credit(),
                        "C2D waits for the connection to take more"
                    );
                    if !conn.sink.ready().await {
                        return;
                    }
                }
                // Counted as a delivery now, just before it goes out.
                let mut delivery = match conn.core.c2d_attempt(&device, seq) {
                    Attempt::Deliver => publish(&conn, &device, qos, seq, message),
                    Attempt::Exhausted(deliveries) => {
                        dead_letter(&conn, &device, seq, message.message_id, deliveries)
                    }
                };
                // Polled once right away, so the packet is written before the next one.
                match futures::poll!(&mut delivery) {
                    Poll::Ready(false) => return,
                    Poll::Ready(true) => {}
                    Poll::Pending => in_flight.push(delivery),
                }
                next_seq = seq + 1;
            }
        }
        if !conn.sink.is_open() {
            return;
        }
        // Wait for more messages while acknowledgements come in.
        let woken = conn.c2d_wake.notified();
        tokio::pin!(woken);
        loop {
            tokio::select! {
                () = &mut woken => break,
                done = in_flight.next(), if !in_flight.is_empty() => {
                    if done == Some(false) {
                        return;
                    }
                }
            }
        }
    }
}

/// The QoS of the device's C2D subscription, if it has one.
fn subscribed_qos(conn: &Connection) -> Option<u8> {
    conn.feeds
        .borrow()
        .values()
        .find(|(feed, _)| *feed == Feed::C2d)
        .map(|(_, qos)| *qos)
}

/// Publishes queued message `seq` and removes it from the queue once delivered.
fn publish(
    conn: &Rc<Connection>,
    device: &str,
    qos: u8,
    seq: u64,
    message: C2dMessage,
) -> Delivery {
    let mut props: Vec<(String, String)> = message.properties.into_iter().collect();
    props.push(("$.mid".into(), message.message_id));
    if let Some(cid) = message.correlation_id {
        props.push(("$.cid".into(), cid));
    }
    props.push((
        "$.to".into(),
        format!("/devices/{device}/messages/deviceBound"),
    ));
    let topic = format!(
        "devices/{device}/messages/devicebound/{}",
        encode_bag(&props)
    );
    let body = Bytes::from(message.body);
    let conn = conn.clone();
    let device = device.to_owned();
    Box::pin(async move {
        tracing::debug!(
            device,
            seq,
            qos,
            bytes = body.len(),
            "C2D message published"
        );
        let publish = conn.sink.publish(topic);
        let sent = if qos == 0 {
            publish.send_at_most_once(body).is_ok()
        } else {
            publish.send_at_least_once(body).await.is_ok()
        };
        if !sent {
            tracing::debug!(device, seq, "C2D publish not acknowledged: connection gone");
            return false;
        }
        tracing::debug!(device, seq, "C2D message acknowledged");
        if let Err(error) = conn.core.c2d_complete(&device, seq).await {
            tracing::warn!(device, %error, "delivered C2D message not removed");
        }
        true
    })
}

/// Removes queued message `seq`, which went out `deliveries` times without being
/// acknowledged, instead of publishing it.
fn dead_letter(
    conn: &Rc<Connection>,
    device: &str,
    seq: u64,
    message_id: String,
    deliveries: u32,
) -> Delivery {
    let conn = conn.clone();
    let device = device.to_owned();
    Box::pin(async move {
        let removed = conn
            .core
            .c2d_dead_letter(&device, seq, &message_id, deliveries)
            .await;
        if let Err(error) = removed {
            tracing::warn!(device, seq, %error, "C2D message past its delivery count not removed");
        }
        true
    })
}
