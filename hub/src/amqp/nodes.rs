//! The request-response nodes: `$cbs` (put-token) and `$management` (READ of the event hub).
//!
//! A client attaches a sender to the node and a receiver from it; each request it sends is
//! accepted, answered on that receiver with `status-code` and `status-description`, and
//! correlated by the request's message id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, SimpleValue, Timestamp, Value};
use fe2o3_amqp::{Receiver, Sender};
use tokio::sync::Mutex;

use super::auth::ConnectionAuth;
use crate::core::Core;

/// The claims-based security node.
pub const CBS: &str = "$cbs";
/// The management node.
pub const MANAGEMENT: &str = "$management";

/// Reply links of one session, by node.
pub type ReplyLinks = Arc<Mutex<HashMap<String, Sender>>>;

/// An answer: status code, description and body.
struct Answer {
    status: i32,
    description: String,
    body: Value,
}

impl Answer {
    fn status(status: i32, description: impl Into<String>) -> Self {
        Self {
            status,
            description: description.into(),
            body: Value::Null,
        }
    }
}

/// Answers the requests arriving on `receiver` for `node` until the client detaches.
pub async fn serve(
    core: Arc<Core>,
    auth: ConnectionAuth,
    node: String,
    mut receiver: Receiver,
    replies: ReplyLinks,
) {
    loop {
        let delivery = match receiver.recv::<Body<Value>>().await {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::debug!(%node, %error, "request link ended");
                return;
            }
        };
        if let Err(error) = receiver.accept(&delivery).await {
            tracing::debug!(%node, %error, "request not acknowledged");
            return;
        }
        let request = delivery.into_message();
        let answer = match node.as_str() {
            CBS => put_token(&auth, &request),
            _ => read(&core, &auth, &request),
        };
        let properties = Properties {
            correlation_id: request
                .properties
                .as_ref()
                .and_then(|p| p.message_id.clone()),
            to: request.properties.as_ref().and_then(|p| p.reply_to.clone()),
            ..Properties::default()
        };
        let response = Message::builder()
            .properties(properties)
            .application_properties(
                ApplicationProperties::builder()
                    .insert("status-code", SimpleValue::Int(answer.status))
                    .insert("status-description", answer.description)
                    .build(),
            )
            .value(answer.body)
            .build();
        if !reply(&replies, &node, response).await {
            tracing::debug!(%node, "no reply link for a request; answer dropped");
        }
    }
}

/// Sends `response` on the session's reply link for `node`, waiting briefly for the client to
/// attach it.
async fn reply(replies: &ReplyLinks, node: &str, response: Message<AmqpValue<Value>>) -> bool {
    for _ in 0..50 {
        let mut links = replies.lock().await;
        if let Some(sender) = links.get_mut(node) {
            return sender.send(response).await.is_ok();
        }
        drop(links);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn app_string<'a>(request: &'a Message<Body<Value>>, key: &str) -> Option<&'a str> {
    match request.application_properties.as_ref()?.get(key)? {
        SimpleValue::String(s) => Some(s.as_str()),
        SimpleValue::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

fn body_string(request: &Message<Body<Value>>) -> Option<&str> {
    match &request.body {
        Body::Value(v) => match &v.0 {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        },
        _ => None,
    }
}

/// `put-token`: checks the SAS token and records what it grants for this connection.
fn put_token(auth: &ConnectionAuth, request: &Message<Body<Value>>) -> Answer {
    if app_string(request, "operation") != Some("put-token") {
        return Answer::status(400, "the $cbs node takes put-token requests only");
    }
    let (Some(name), Some(token)) = (app_string(request, "name"), body_string(request)) else {
        return Answer::status(400, "put-token needs a name and a token string body");
    };
    match auth.put_token(name, token) {
        Ok(()) => Answer::status(202, "Accepted"),
        Err(reason) => {
            tracing::warn!(audience = name, %reason, "AMQP put-token refused");
            Answer::status(401, format!("token refused: {reason}"))
        }
    }
}

/// `READ` of `com.microsoft:eventhub`: the event hub's name and partitions.
fn read(core: &Core, auth: &ConnectionAuth, request: &Message<Body<Value>>) -> Answer {
    let hub = &core.config.event_hub_name;
    if app_string(request, "operation") != Some("READ") {
        return Answer::status(400, "the $management node takes READ requests only");
    }
    if app_string(request, "name") != Some(hub.as_str()) {
        return Answer::status(
            404,
            format!("no event hub by that name; this hub serves {hub}"),
        );
    }
    let token_ok = app_string(request, "security_token")
        .is_some_and(|token| auth.put_token(hub, token).is_ok());
    if !token_ok && !auth.may_read(hub) {
        return Answer::status(401, "no valid token for the event hub");
    }
    if app_string(request, "type") != Some("com.microsoft:eventhub") {
        return Answer::status(404, "only com.microsoft:eventhub can be read on this hub");
    }
    let ids: Vec<Value> = (0..core.config.partition_count)
        .map(|p| Value::String(p.to_string()))
        .collect();
    let mut map = OrderedMap::new();
    map.insert(Value::from("name"), Value::String(hub.clone()));
    let created = Timestamp::from_milliseconds(0);
    map.insert(Value::from("created_at"), Value::Timestamp(created));
    let count = i32::try_from(core.config.partition_count).unwrap_or(i32::MAX);
    map.insert(Value::from("partition_count"), Value::Int(count));
    map.insert(Value::from("partition_ids"), Value::Array(Array::from(ids)));
    Answer {
        status: 200,
        description: "OK".into(),
        body: Value::Map(map),
    }
}
