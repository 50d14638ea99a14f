//! The Event Hubs-compatible AMQP endpoint read with an AMQP 1.0 client over TLS on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use cloudpillar_hub::amqp::address::{SELECTOR_FILTER, SELECTOR_FILTER_CODE, partition_of};
use common::TestHub;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{Body, Message, Source};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Session};
use rumqttc::QoS;
use rustls::pki_types::ServerName;
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;

async fn open(
    hub: &TestHub,
    profile: SaslProfile,
) -> Result<(ConnectionHandle<()>, SessionHandle<()>), String> {
    let tcp = tokio::net::TcpStream::connect(hub.hub.amqp_addr().unwrap())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(hub.tls.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut connection = Connection::builder()
        .container_id("test-reader")
        .hostname("localhost")
        .sasl_profile(profile)
        .open_with_stream(tls)
        .await
        .map_err(|e| e.to_string())?;
    let session = Session::begin(&mut connection).await.unwrap();
    Ok((connection, session))
}

fn plain(hub: &TestHub, key: &str) -> SaslProfile {
    SaslProfile::Plain {
        username: hub.hub.policy_name().to_owned(),
        password: key.to_owned(),
    }
}

async fn receiver(
    session: &mut SessionHandle<()>,
    name: &str,
    partition: u32,
    selector: &str,
) -> Receiver {
    let address = format!("edgehub/ConsumerGroups/$Default/Partitions/{partition}");
    let filter = Described {
        descriptor: Descriptor::Code(SELECTOR_FILTER_CODE),
        value: Value::String(selector.to_owned()),
    };
    let source = Source::builder()
        .address(address)
        .add_to_filter(SELECTOR_FILTER, filter)
        .build();
    Receiver::builder()
        .name(name)
        .source(source)
        .target("reader")
        .attach(session)
        .await
        .unwrap()
}

async fn next(receiver: &mut Receiver) -> Message<Body<Value>> {
    let delivery = tokio::time::timeout(Duration::from_secs(10), receiver.recv::<Body<Value>>())
        .await
        .expect("an event within 10 s")
        .unwrap();
    receiver.accept(&delivery).await.unwrap();
    delivery.into_message()
}

fn annotation(message: &Message<Body<Value>>, key: &str) -> Value {
    let annotations = &message.message_annotations.as_ref().unwrap().0;
    annotations
        .get(&OwnedKey::from(Symbol::from(key)))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn telemetry_arrives_on_its_partition_in_azure_shape_and_resumes_after_an_offset() {
    let hub = TestHub::start().await;
    let key = hub.add_device("dev-amqp").await;
    let device = hub.connect("dev-amqp", &key, true).await;
    for n in 1..=2 {
        device
            .client
            .publish(
                "devices/dev-amqp/messages/events/kind=log",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"n":{n}}}"#),
            )
            .await
            .unwrap();
    }

    let (_connection, mut session) = open(&hub, plain(&hub, hub.hub.policy_key())).await.unwrap();
    let partition = partition_of("dev-amqp", 4);
    let mut reader = receiver(
        &mut session,
        "first",
        partition,
        "amqp.annotation.x-opt-offset > '-1'",
    )
    .await;

    // Connection event first, then both messages, each with Azure's annotations.
    let mut telemetry = Vec::new();
    while telemetry.len() < 2 {
        let message = next(&mut reader).await;
        let source = annotation(&message, "iothub-message-source");
        assert_eq!(
            annotation(&message, "iothub-connection-device-id"),
            Value::String("dev-amqp".into())
        );
        assert!(matches!(
            annotation(&message, "x-opt-enqueued-time"),
            Value::Timestamp(_)
        ));
        if source == Value::String("Telemetry".into()) {
            telemetry.push(message);
        }
    }
    let Body::Data(data) = &telemetry[0].body else {
        panic!("telemetry body is a data section")
    };
    assert_eq!(data.iter().next().unwrap().0.as_slice(), br#"{"n":1}"#);
    let app = &telemetry[0].application_properties.as_ref().unwrap().0;
    assert_eq!(app.get("kind"), Some(&"log".into()));
    let Value::String(first_offset) = annotation(&telemetry[0], "x-opt-offset") else {
        panic!("offset is a string")
    };

    // A receiver starting after the first message's offset gets the second one next.
    let selector = format!("amqp.annotation.x-opt-offset > '{first_offset}'");
    let mut resumed = receiver(&mut session, "resumed", partition, &selector).await;
    let message = next(&mut resumed).await;
    let Body::Data(data) = &message.body else {
        panic!("telemetry body is a data section")
    };
    assert_eq!(data.iter().next().unwrap().0.as_slice(), br#"{"n":2}"#);

    // Other partitions do not carry this device's events.
    let other = (partition + 1) % 4;
    let mut elsewhere = receiver(
        &mut session,
        "other",
        other,
        "amqp.annotation.x-opt-offset > '-1'",
    )
    .await;
    let nothing =
        tokio::time::timeout(Duration::from_millis(300), elsewhere.recv::<Body<Value>>()).await;
    assert!(
        nothing.is_err(),
        "partition {other} delivered an event of dev-amqp"
    );
}

#[tokio::test]
async fn a_wrong_policy_key_is_refused_at_sign_in() {
    let hub = TestHub::start().await;
    let wrong = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let refused = open(&hub, plain(&hub, wrong)).await;
    let Err(error) = refused else {
        panic!("a wrong key signed in")
    };
    assert!(error.to_lowercase().contains("auth"), "{error}");
}

#[tokio::test]
async fn an_anonymous_reader_without_a_token_is_refused_the_partition() {
    let hub = TestHub::start().await;
    let (_connection, mut session) = open(&hub, SaslProfile::Anonymous).await.unwrap();
    let mut reader = receiver(
        &mut session,
        "anonymous",
        0,
        "amqp.annotation.x-opt-offset > '-1'",
    )
    .await;
    let result = tokio::time::timeout(Duration::from_secs(5), reader.recv::<Body<Value>>())
        .await
        .expect("the link is closed within 5 s");
    let error = result.expect_err("no events without a token").to_string();
    assert!(
        error.contains("unauthorized") || error.contains("token"),
        "{error}"
    );
}
