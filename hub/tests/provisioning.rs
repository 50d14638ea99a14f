//! DPS group enrollment over MQTT, and X.509 thumbprint authentication.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Device, TestHub, client_tls, now};
use reqwest::Method;
use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[tokio::test]
async fn dps_group_enrollment_registers_and_device_connects_with_derived_key() {
    let hub = TestHub::start().await;
    let group_key = cloudpillar_hub::sas::random_key();
    let body = json!({"attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": group_key, "secondaryKey": group_key}},
                      "initialTwin": {"tags": {"fleet": "lab"}}});
    let (s, _, _) = hub
        .call(Method::PUT, "/enrollmentGroups/g1", Some(body), &[])
        .await;
    assert_eq!(s, 200);

    let reg = "pc-0042";
    let device_key = cloudpillar_hub::sas::derive_device_key(&group_key, reg).unwrap();
    let scope = hub.hub.id_scope().to_string();
    let token = cloudpillar_hub::sas::generate(
        &device_key,
        &format!("{scope}/registrations/{reg}"),
        now() + 3600,
        Some("registration"),
    )
    .unwrap();
    let mut opts = MqttOptions::new(reg, "localhost", hub.hub.mqtt_addr().port());
    opts.set_credentials(
        format!("{scope}/registrations/{reg}/api-version=2019-03-31"),
        token,
    );
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        hub.tls.clone(),
    )));
    let mut dps = Device::connect(opts).await.unwrap();
    dps.client
        .subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Register, then poll the operation.
    dps.client
        .publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=1",
            QoS::AtLeastOnce,
            false,
            json!({"registrationId": reg}).to_string(),
        )
        .await
        .unwrap();
    let accepted = dps.next("$dps/registrations/res/").await;
    assert!(
        accepted
            .topic
            .starts_with("$dps/registrations/res/202/?$rid=1"),
        "{}",
        accepted.topic
    );
    let op: Value = serde_json::from_slice(&accepted.payload).unwrap();
    assert_eq!(op["status"], "assigning");
    let op_id = op["operationId"].as_str().unwrap();
    dps.client
        .publish(
            format!(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={op_id}"
            ),
            QoS::AtLeastOnce,
            false,
            "",
        )
        .await
        .unwrap();
    let done = dps.next("$dps/registrations/res/").await;
    assert!(done.topic.starts_with("$dps/registrations/res/200/?$rid=2"));
    let state: Value = serde_json::from_slice(&done.payload).unwrap();
    assert_eq!(state["status"], "assigned");
    assert_eq!(state["registrationState"]["deviceId"], reg);
    assert_eq!(
        state["registrationState"]["assignedHub"],
        hub.hub.hostname()
    );

    // Until it connects, the registry shows the new device as disconnected.
    let (_, _, device) = hub
        .call(Method::GET, &format!("/devices/{reg}"), None, &[])
        .await;
    assert_eq!(device["connectionState"], "Disconnected");

    // The assigned device connects to the hub with the derived key and has its initial twin.
    hub.connect(reg, &device_key, true).await;
    let (_, _, twin) = hub
        .call(Method::GET, &format!("/twins/{reg}"), None, &[])
        .await;
    assert_eq!(twin["tags"]["fleet"], "lab");

    // A registration signed with another key is refused.
    let bad = cloudpillar_hub::sas::generate(
        &group_key,
        &format!("{scope}/registrations/{reg}"),
        now() + 3600,
        Some("registration"),
    )
    .unwrap();
    let mut opts = MqttOptions::new(reg, "localhost", hub.hub.mqtt_addr().port());
    opts.set_credentials(
        format!("{scope}/registrations/{reg}/api-version=2019-03-31"),
        bad,
    );
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        hub.tls.clone(),
    )));
    assert!(Device::connect(opts).await.is_err());
}

#[tokio::test]
async fn x509_device_connects_by_registered_thumbprint_only() {
    let hub = TestHub::start().await;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().to_vec();
    let thumb: String = Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let body = json!({"deviceId": "x1", "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": thumb}}});
    let (s, _, _) = hub.call(Method::PUT, "/devices/x1", Some(body), &[]).await;
    assert_eq!(s, 200);

    let tls_for = |der: Vec<u8>, key: &rcgen::KeyPair| {
        let chain = vec![CertificateDer::from(der)];
        let pk = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Arc::new(client_tls(
            hub.hub.ca_cert_path().unwrap(),
            Some((chain, pk)),
        ))
    };
    let opts_with = |tls| {
        let mut opts = MqttOptions::new("x1", "localhost", hub.hub.mqtt_addr().port());
        opts.set_credentials(
            format!("{}/x1/?api-version=2021-04-12", hub.hub.hostname()),
            "",
        );
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        opts
    };
    let mut dev = Device::connect(opts_with(tls_for(der, &key)))
        .await
        .unwrap();
    dev.client
        .subscribe("$iothub/twin/res/#", QoS::AtMostOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = dev
        .twin_request("$iothub/twin/GET/?$rid=1", Value::Null)
        .await;
    assert_eq!(common::status_of(&res.topic), 200);

    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::CertificateParams::new(vec!["x1".into()])
        .unwrap()
        .self_signed(&other_key)
        .unwrap();
    assert!(
        Device::connect(opts_with(tls_for(other.der().to_vec(), &other_key)))
            .await
            .is_err()
    );
}
