//! One device's MQTT connection: subscriptions, inbound publishes and outbound pushes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use ntex_bytes::Bytes;
use ntex_mqtt::v3::{self, MqttSink};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, mpsc};

use super::MqttFault;
use super::topics::{Feed, Inbound, classify, device_feed, parse_bag};
use crate::core::{Core, Outbound};
use crate::error::HubError;

/// Who is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A registered device.
    Device(String),
    /// A DPS client registering under this registration id.
    Provisioning(String),
}

/// State of one live connection.
#[derive(Debug)]
pub struct Connection {
    pub(crate) core: Arc<Core>,
    pub(crate) peer: Peer,
    pub(crate) conn_id: u64,
    pub(crate) persistent: bool,
    pub(crate) feeds: RefCell<BTreeMap<String, (Feed, u8)>>,
    pub(crate) sink: MqttSink,
    pub(crate) c2d_wake: Arc<Notify>,
    /// The client certificate chain (end entity first) of a DPS client attesting with X.509.
    pub(crate) x509_chain: Option<Vec<Vec<u8>>>,
    /// Reported patches queued and not yet answered (at most [`TWIN_IN_FLIGHT`]).
    pub(crate) twin_slots: Arc<Semaphore>,
}

/// Reported patches one connection may have queued before the hub stops reading from it.
pub(crate) const TWIN_IN_FLIGHT: usize = 16;

impl Connection {
    fn has(&self, feed: Feed) -> bool {
        self.feeds.borrow().values().any(|(f, _)| *f == feed)
    }

    fn id(&self) -> &str {
        match &self.peer {
            Peer::Device(id) | Peer::Provisioning(id) => id,
        }
    }

    fn send(&self, topic: String, body: Vec<u8>) {
        if !self.sink.is_open() {
            return;
        }
        if let Err(error) = self
            .sink
            .publish(topic)
            .send_at_most_once(Bytes::from(body))
        {
            tracing::debug!(device = self.id(), ?error, "push dropped");
        }
    }

    fn twin_response(&self, status: u16, rid: &str, version: Option<u64>, body: Vec<u8>) {
        let mut topic = format!("$iothub/twin/res/{status}/?$rid={rid}");
        if let Some(v) = version {
            topic.push_str(&format!("&$version={v}"));
        }
        if self.has(Feed::TwinResponses) {
            self.send(topic, body);
        }
    }

    /// Whether the peer subscribed to `feed`.
    pub(crate) fn has_feed(&self, feed: Feed) -> bool {
        self.has(feed)
    }

    /// Publishes at QoS 0.
    pub(crate) fn push_raw(&self, topic: String, body: Vec<u8>) {
        self.send(topic, body);
    }

    fn saved_feeds(&self) -> Vec<(String, u8)> {
        self.feeds
            .borrow()
            .iter()
            .map(|(f, (_, q))| (f.clone(), *q))
            .collect()
    }
}

fn error_body(e: &HubError) -> Vec<u8> {
    let body = json!({ "errorCode": u32::from(e.status()) * 1000, "message": e.to_string() });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Handles a PUBLISH from the peer. An `Err` closes the connection, as IoT Hub does for
/// publishes outside the device's topics and for oversize messages.
pub async fn publish(conn: &Rc<Connection>, publish: v3::Publish) -> Result<(), MqttFault> {
    let topic = publish.publish_topic().to_string();
    let retain = publish.retain();
    let payload = publish
        .read_all()
        .await
        .map_err(|e| MqttFault(format!("payload: {e:?}")))?;
    let core = &conn.core;
    let device = match &conn.peer {
        Peer::Device(id) => id.clone(),
        Peer::Provisioning(reg) => {
            return super::dps_publish(conn, reg, classify(&topic), &payload).await;
        }
    };
    core.touch(&device);
    match classify(&topic) {
        Inbound::Telemetry {
            device: target,
            bag,
        } if target == device => {
            let mut props = BTreeMap::new();
            let mut system = BTreeMap::new();
            for (k, v) in parse_bag(&bag) {
                match k.as_str() {
                    "$.mid" => system.insert("message-id".into(), v),
                    "$.cid" => system.insert("correlation-id".into(), v),
                    "$.ct" => system.insert("content-type".into(), v),
                    "$.ce" => system.insert("content-encoding".into(), v),
                    "$.uid" => system.insert("user-id".into(), v),
                    k if k.starts_with("$.") => None,
                    _ => props.insert(k, v),
                };
            }
            // IoT Hub keeps no retained messages: it passes them on marked as retained.
            if retain {
                props.insert("mqtt-retain".into(), "true".into());
            }
            core.d2c(&device, payload.to_vec(), props, system)
                .await
                .map_err(|e| MqttFault(format!("telemetry from {device} refused: {e}")))?;
        }
        Inbound::TwinGet(rid) => match core.device_twin(&device) {
            Ok(doc) => conn.twin_response(
                200,
                &rid,
                None,
                serde_json::to_vec(&doc).unwrap_or_default(),
            ),
            Err(e) => conn.twin_response(e.status(), &rid, None, error_body(&e)),
        },
        Inbound::TwinReported(rid) => {
            // The connection hands the hub one request at a time (see `mqtt_service!`), so
            // queueing the write here keeps the device's patches in the order it sent them.
            // The answer follows once the write is durable, while further requests are read.
            let Ok(slot) = conn.twin_slots.clone().acquire_owned().await else {
                return Ok(());
            };
            let queued = match serde_json::from_slice::<Value>(&payload) {
                Ok(patch) => core.queue_reported(&device, patch),
                Err(e) => {
                    Err(crate::error::Refusal::bad_request(format!("malformed JSON: {e}")).into())
                }
            };
            let conn = conn.clone();
            ntex_rt::spawn(async move {
                let result = match queued {
                    Ok(pending) => pending.wait().await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(version) => conn.twin_response(204, &rid, Some(version), Vec::new()),
                    Err(e) => {
                        tracing::info!(device, status = e.status(), reason = %e, "reported patch refused");
                        conn.twin_response(e.status(), &rid, None, error_body(&e));
                    }
                }
                drop(slot);
            });
        }
        Inbound::MethodResponse(status, rid) => {
            core.method_response(&rid, status, payload.to_vec());
        }
        other => {
            tracing::warn!(device, topic, ?other, "publish outside the device's topics");
            return Err(MqttFault(format!("{device} may not publish to {topic}")));
        }
    }
    Ok(())
}

/// Handles SUBSCRIBE, UNSUBSCRIBE, PING and DISCONNECT.
pub async fn protocol(
    conn: &Rc<Connection>,
    msg: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, MqttFault> {
    match msg {
        v3::ProtocolMessage::Subscribe(mut sub) => {
            let mut wake_c2d = false;
            for mut s in sub.iter_mut() {
                let filter = s.topic().to_string();
                let feed = match &conn.peer {
                    Peer::Device(id) => device_feed(id, &filter),
                    Peer::Provisioning(_) => {
                        (filter == "$dps/registrations/res/#").then_some(Feed::Dps)
                    }
                };
                match feed {
                    Some(feed) => {
                        // QoS 2 subscriptions are granted QoS 1, as IoT Hub does.
                        let qos = if s.qos() == v3::QoS::AtMostOnce { 0 } else { 1 };
                        s.confirm(if qos == 0 {
                            v3::QoS::AtMostOnce
                        } else {
                            v3::QoS::AtLeastOnce
                        });
                        conn.feeds.borrow_mut().insert(filter, (feed, qos));
                        wake_c2d |= feed == Feed::C2d;
                    }
                    None => {
                        tracing::warn!(
                            peer = conn.id(),
                            filter,
                            "subscription outside own topics refused"
                        );
                        s.fail();
                    }
                }
            }
            persist(conn).await;
            if wake_c2d {
                conn.c2d_wake.notify_one();
            }
            Ok(sub.ack())
        }
        v3::ProtocolMessage::Unsubscribe(unsub) => {
            for filter in unsub.iter() {
                conn.feeds.borrow_mut().remove(filter.as_str());
            }
            persist(conn).await;
            Ok(unsub.ack())
        }
        other => Ok(other.ack()),
    }
}

async fn persist(conn: &Connection) {
    if let (true, Peer::Device(id)) = (conn.persistent, &conn.peer)
        && let Err(error) = conn.core.save_session(id, Some(conn.saved_feeds())).await
    {
        tracing::warn!(device = id, %error, "session subscriptions not saved");
    }
}

/// Pushes hub-side messages to the device until the connection closes or is replaced.
pub async fn outbound(conn: Rc<Connection>, mut rx: mpsc::UnboundedReceiver<Outbound>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Outbound::Desired(version, body) if conn.has(Feed::Desired) => {
                conn.send(
                    format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
                    body,
                );
            }
            Outbound::Method { rid, name, payload } if conn.has(Feed::Methods) => {
                conn.send(format!("$iothub/methods/POST/{name}/?$rid={rid}"), payload);
            }
            Outbound::C2dWake => conn.c2d_wake.notify_one(),
            Outbound::Close => {
                conn.sink.force_close();
                break;
            }
            _ => {}
        }
    }
}
