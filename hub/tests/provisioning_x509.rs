//! DPS X.509 attestation over MQTT with real TLS client certificate chains: individual
//! enrollments by certificate, enrollment groups by signing CA, and the refusals DPS answers
//! with 401 / 401002.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Device, TestHub, client_tls};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use reqwest::Method;
use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

type Ca = CertifiedIssuer<'static, KeyPair>;

fn ca(name: &str, parent: Option<&Ca>) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    match parent {
        Some(p) => CertifiedIssuer::signed_by(params, key, p).unwrap(),
        None => CertifiedIssuer::self_signed(params, key).unwrap(),
    }
}

/// A device certificate with common name `cn`, signed by `issuer` (self-signed when `None`),
/// valid in `years` (default: 2020 to 2100). Returns (DER, key).
fn device_cert(cn: &str, issuer: Option<&Ca>, years: Option<(i32, i32)>) -> (Vec<u8>, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let (from, to) = years.unwrap_or((2020, 2100));
    params.not_before = date_time_ymd(from, 1, 1);
    params.not_after = date_time_ymd(to, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = match issuer {
        Some(ca) => params.signed_by(&key, ca).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    (cert.der().to_vec(), key)
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// TLS options presenting `chain` (end entity first) with `key`.
fn tls_with(hub: &TestHub, chain: &[Vec<u8>], key: &KeyPair) -> Transport {
    let chain = chain.iter().cloned().map(CertificateDer::from).collect();
    let pk = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let tls = client_tls(hub.hub.ca_cert_path().unwrap(), Some((chain, pk)));
    Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls)))
}

/// Connects to DPS as `reg` with a certificate and no password, registers, and returns the
/// status and body of the register answer (and of the operation poll when it was 202).
async fn register(hub: &TestHub, reg: &str, chain: &[Vec<u8>], key: &KeyPair) -> (u16, Value) {
    let scope = hub.hub.id_scope().to_string();
    let mut opts = MqttOptions::new(reg, "localhost", hub.hub.mqtt_addr().port());
    opts.set_credentials(
        format!("{scope}/registrations/{reg}/api-version=2019-03-31"),
        "",
    );
    opts.set_transport(tls_with(hub, chain, key));
    let mut dps = Device::connect(opts).await.unwrap();
    dps.client
        .subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let topic = "$dps/registrations/PUT/iotdps-register/?$rid=1";
    let body = json!({ "registrationId": reg }).to_string();
    dps.client
        .publish(topic, QoS::AtLeastOnce, false, body)
        .await
        .unwrap();
    let answer = dps.next("$dps/registrations/res/").await;
    let status = status_of(&answer.topic);
    let body: Value = serde_json::from_slice(&answer.payload).unwrap();
    if status != 202 {
        return (status, body);
    }
    let op = body["operationId"].as_str().unwrap();
    let poll =
        format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={op}");
    dps.client
        .publish(poll, QoS::AtLeastOnce, false, "")
        .await
        .unwrap();
    let done = dps.next("$dps/registrations/res/").await;
    (
        status_of(&done.topic),
        serde_json::from_slice(&done.payload).unwrap(),
    )
}

fn status_of(topic: &str) -> u16 {
    let rest = topic.trim_start_matches("$dps/registrations/res/");
    rest.split('/').next().unwrap().parse().unwrap()
}

/// Connects to the hub as device `id` with a certificate and asks for its twin.
async fn connect_device(
    hub: &TestHub,
    id: &str,
    chain: &[Vec<u8>],
    key: &KeyPair,
) -> Result<Value, String> {
    let mut opts = MqttOptions::new(id, "localhost", hub.hub.mqtt_addr().port());
    let user = format!("{}/{id}/?api-version=2021-04-12", hub.hub.hostname());
    opts.set_credentials(user, "");
    opts.set_transport(tls_with(hub, chain, key));
    let mut dev = Device::connect(opts).await?;
    dev.client
        .subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = dev
        .twin_request("$iothub/twin/GET/?$rid=1", Value::Null)
        .await;
    assert_eq!(common::status_of(&res.topic), 200, "{}", res.topic);
    Ok(serde_json::from_slice(&res.payload).unwrap())
}

/// DPS's refusal shape; `why` must appear in the message, so each case fails for its reason.
fn assert_unauthorized(status: u16, body: &Value, why: &str) {
    let case = why;
    assert_eq!(status, 401, "{case}: {body}");
    assert_eq!(body["errorCode"], 401_002, "{case}: {body}");
    assert!(
        body["trackingId"].as_str().is_some_and(|t| !t.is_empty()),
        "{case}: {body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains(why),
        "{case}: {body}"
    );
    assert!(body["timestampUtc"].is_string(), "{case}: {body}");
}

async fn enroll_group(hub: &TestHub, id: &str, signing: &Ca) {
    let body = json!({"attestation": {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": signing.pem()}}}},
                      "initialTwin": {"tags": {"fleet": "x509"}}});
    let (s, _, answer) = hub
        .call(
            Method::PUT,
            &format!("/enrollmentGroups/{id}"),
            Some(body),
            &[],
        )
        .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(
        answer["attestation"]["x509"]["signingCertificates"]["primary"]["info"]["subjectName"],
        "CN=Fleet Root CA"
    );
}

#[tokio::test]
async fn group_enrollment_assigns_a_ca_signed_device_which_then_connects_with_its_chain() {
    let hub = TestHub::start().await;
    let root = ca("Fleet Root CA", None);
    let intermediate = ca("Fleet Line 3", Some(&root));
    enroll_group(&hub, "x509-fleet", &root).await;

    // The device sends its certificate and the intermediate; the group holds only the root.
    let (leaf, key) = device_cert("pump-17", Some(&intermediate), None);
    let chain = vec![leaf, intermediate.der().to_vec()];
    let (status, op) = register(&hub, "pump-17", &chain, &key).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["status"], "assigned");
    assert_eq!(op["registrationState"]["deviceId"], "pump-17");
    assert_eq!(op["registrationState"]["assignedHub"], hub.hub.hostname());

    let (_, _, device) = hub.call(Method::GET, "/devices/pump-17", None, &[]).await;
    assert_eq!(device["authentication"]["type"], "certificateAuthority");
    let (_, _, twin) = hub.call(Method::GET, "/twins/pump-17", None, &[]).await;
    assert_eq!(twin["tags"]["fleet"], "x509");

    let doc = connect_device(&hub, "pump-17", &chain, &key).await.unwrap();
    assert!(doc["desired"]["$version"].is_number(), "{doc}");

    // A certificate with the same name from another CA does not get in.
    let stranger = ca("Other Root CA", None);
    let (leaf, key) = device_cert("pump-17", Some(&stranger), None);
    assert!(
        connect_device(&hub, "pump-17", &[leaf], &key)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn individual_enrollment_assigns_the_enrolled_certificate_only() {
    let hub = TestHub::start().await;
    let (der, key) = device_cert("valve-2", None, None);
    let body = json!({"attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": pem(&der)}}}}});
    let (s, _, enrollment) = hub
        .call(Method::PUT, "/enrollments/valve-2", Some(body), &[])
        .await;
    assert_eq!(s, 200, "{enrollment}");
    let thumb: String = Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let info = &enrollment["attestation"]["x509"]["clientCertificates"]["primary"]["info"];
    assert_eq!(info["sha256Thumbprint"], thumb);
    assert_eq!(info["subjectName"], "CN=valve-2");

    // Another certificate with the same common name is not the enrolled one.
    let (other, other_key) = device_cert("valve-2", None, None);
    let (status, body) = register(&hub, "valve-2", &[other], &other_key).await;
    assert_unauthorized(status, &body, "not one its enrollment holds");
    let (s, _, _) = hub.call(Method::GET, "/devices/valve-2", None, &[]).await;
    assert_eq!(s, 404);

    let (status, op) = register(&hub, "valve-2", std::slice::from_ref(&der), &key).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["registrationState"]["deviceId"], "valve-2");
    let (_, _, device) = hub.call(Method::GET, "/devices/valve-2", None, &[]).await;
    assert_eq!(device["authentication"]["type"], "selfSigned");
    assert_eq!(
        device["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        thumb
    );
    connect_device(&hub, "valve-2", &[der], &key).await.unwrap();
}

#[tokio::test]
async fn unknown_ca_wrong_common_name_and_expired_certificate_are_refused_with_401002() {
    let hub = TestHub::start().await;
    let root = ca("Fleet Root CA", None);
    enroll_group(&hub, "x509-fleet", &root).await;

    let stranger = ca("Other Root CA", None);
    let (leaf, key) = device_cert("meter-9", Some(&stranger), None);
    let (status, body) = register(&hub, "meter-9", &[leaf], &key).await;
    assert_unauthorized(status, &body, "not signed by a known CA");

    let (leaf, key) = device_cert("meter-10", Some(&root), None);
    let (status, body) = register(&hub, "meter-9", &[leaf], &key).await;
    assert_unauthorized(status, &body, "common name \"meter-10\" is not meter-9");

    let (leaf, key) = device_cert("meter-9", Some(&root), Some((2020, 2021)));
    let (status, body) = register(&hub, "meter-9", &[leaf], &key).await;
    assert_unauthorized(status, &body, "expired at 2021-01-01");

    // None of them created a device; a valid certificate from the enrolled CA does.
    let (s, _, _) = hub.call(Method::GET, "/devices/meter-9", None, &[]).await;
    assert_eq!(s, 404);
    let (leaf, key) = device_cert("meter-9", Some(&root), None);
    let (status, op) = register(&hub, "meter-9", &[leaf], &key).await;
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["registrationState"]["deviceId"], "meter-9");
}
