//! Device Provisioning Service over MQTT with a symmetric key (individual or group).
//!
//! Flow: connect with the registration's SAS, subscribe to the responses, register,
//! poll the operation until it is assigned, then return the hub and device id.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{Value, json};

use super::identity::Identity;
use super::topics::{self, Incoming};
use super::{MAX_PACKET_BYTES, sas, tls};
use crate::causes::with_causes;
use crate::config::{Config, read_secret_file};
use crate::keystore::{DeviceKey, KeyStore, KeyStoreError};

/// Errors of a provisioning attempt.
#[derive(Debug, thiserror::Error)]
pub enum DpsError {
    /// No `[dps]` section.
    #[error("no DPS is configured")]
    NotConfigured,
    /// Key or TLS material could not be used.
    #[error("failed to prepare provisioning: {0}")]
    Prepare(String),
    /// The MQTT connection failed.
    #[error("failed to talk to DPS")]
    Connection(#[from] rumqttc::ConnectionError),
    /// DPS refused or failed the registration.
    #[error("registration refused: status {status}: {body}")]
    Refused {
        /// Status from the topic.
        status: u16,
        /// Answer body.
        body: String,
    },
    /// No answer in time.
    #[error("provisioning timed out")]
    Timeout,
    /// The device key could not be stored.
    #[error("failed to store the device key")]
    Store(#[source] KeyStoreError),
}

/// Provisions `registration_id`; with `key_override` (an upgrade message's key, already
/// kept) that key signs instead of the configured one.
pub async fn provision(
    config: &Config,
    registration_id: &str,
    key_override: Option<DeviceKey>,
) -> Result<Identity, DpsError> {
    let dps = config.dps.as_ref().ok_or(DpsError::NotConfigured)?;
    let keys = KeyStore::new(config);
    let key = match key_override {
        Some(key) => key,
        None => registration_key(config, &keys, registration_id).await?,
    };
    let now = super::session::unix_now();
    let uri = topics::dps_resource_uri(&dps.id_scope, registration_id);
    let token = sas::token(&uri, &key, Some("registration"), now, 3600)
        .await
        .map_err(|e| prepare(&e))?;

    let address = dps.address.clone().unwrap_or_else(|| dps.host.clone());
    let mut options = MqttOptions::new(registration_id, &address, dps.port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_credentials(
            topics::dps_username(&dps.id_scope, registration_id),
            token.token,
        );
    let tls = tls::client_config(dps.ca_file.as_deref(), None).map_err(|e| prepare(&e))?;
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(options, 16);

    let run = async {
        let mut rid = 1u64;
        loop {
            match eventloop.poll().await? {
                // Subscribe, then register.
                Event::Incoming(Packet::ConnAck(_)) => {
                    let _ = client
                        .subscribe(topics::DPS_RESPONSES, QoS::AtLeastOnce)
                        .await;
                }
                Event::Incoming(Packet::SubAck(_)) => {
                    let body = json!({ "registrationId": registration_id }).to_string();
                    let _ = client
                        .publish(topics::dps_register(rid), QoS::AtLeastOnce, false, body)
                        .await;
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let Incoming::Dps { status, properties } = topics::classify(&p.topic, "")
                    else {
                        continue;
                    };
                    let body: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    match status {
                        // Poll the operation after the time DPS asks for.
                        202 => {
                            let wait = properties.get("retry-after").and_then(|v| v.parse().ok());
                            tokio::time::sleep(Duration::from_secs(wait.unwrap_or(2).min(30)))
                                .await;
                            let op = body["operationId"].as_str().unwrap_or_default().to_owned();
                            rid += 1;
                            let _ = client
                                .publish(topics::dps_poll(rid, &op), QoS::AtLeastOnce, false, "")
                                .await;
                        }
                        200 if body["status"] == "assigned" => {
                            let _ = client.disconnect().await;
                            return Ok(body["registrationState"].clone());
                        }
                        _ => {
                            return Err(DpsError::Refused {
                                status,
                                body: body.to_string(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    };
    let state = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .map_err(|_| DpsError::Timeout)??;

    // Assigned: keep the device key beside the state and connect to the hub named.
    let device_id = state["deviceId"]
        .as_str()
        .unwrap_or(registration_id)
        .to_owned();
    let host = state["assignedHub"].as_str().unwrap_or_default().to_owned();
    let (credential, _) = keys.keep(key).await.map_err(DpsError::Store)?;
    let hub = config.hub.as_ref();
    tracing::info!(%device_id, %host, "provisioned via DPS");
    Ok(Identity {
        device_id,
        address: hub
            .and_then(|h| h.address.clone())
            .unwrap_or_else(|| host.clone()),
        port: hub.map_or(8883, |h| h.port),
        ca_file: hub
            .and_then(|h| h.ca_file.clone())
            .or_else(|| dps.ca_file.clone()),
        host,
        credential,
    })
}

fn prepare(error: &dyn std::error::Error) -> DpsError {
    DpsError::Prepare(with_causes(error))
}

/// The key that signs a registration: the configured enrollment key, or the device key
/// derived from a group key. With a TPM a derived key is imported before it signs.
async fn registration_key(
    config: &Config,
    keys: &KeyStore,
    registration_id: &str,
) -> Result<DeviceKey, DpsError> {
    let dps = config.dps.as_ref().ok_or(DpsError::NotConfigured)?;
    if !dps.group {
        if let Some(tpm) = keys.tpm() {
            return Ok(DeviceKey::Tpm(tpm.clone()));
        }
        let key = read_secret_file(&dps.key_file).map_err(|e| prepare(&e))?;
        return Ok(DeviceKey::Plain(key));
    }
    let group_key = read_secret_file(&dps.key_file).map_err(|e| prepare(&e))?;
    let derived = sas::derive_device_key(&group_key, registration_id).map_err(|e| prepare(&e))?;
    if keys.tpm().is_none() {
        return Ok(DeviceKey::Plain(derived));
    }
    let (_, key) = keys
        .keep(DeviceKey::Plain(derived))
        .await
        .map_err(DpsError::Store)?;
    Ok(key)
}
