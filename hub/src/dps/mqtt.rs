//! DPS over MQTT: authenticate a registration, then register and poll the operation.

use std::rc::Rc;

use serde_json::json;

use crate::core::Core;
use crate::error::{HubError, Refusal};
use crate::events::rfc3339;
use crate::mqtt::topics::{Feed, Inbound};
use crate::mqtt::{ConnectRefusal, MqttFault};
use crate::rest::unix_now;
use crate::sas;

/// Checks a DPS CONNECT: user name `{idScope}/registrations/{registrationId}/api-version=...`,
/// client id = registration id, and either a password (a SAS token for
/// `{idScope}/registrations/{id}` signed with the enrollment key, or the key derived from the
/// group key) or a TLS client certificate. Returns true when the client attests with its
/// certificate; that attestation is checked when it registers, where DPS answers 401.
pub(crate) fn dps_authenticate(
    core: &Core,
    client_id: &str,
    username: &str,
    password: Option<&str>,
    has_certificate: bool,
) -> Result<bool, ConnectRefusal> {
    let expected = format!("{}/registrations/{client_id}/", core.config.id_scope);
    if !username.starts_with(&expected) {
        return Err(ConnectRefusal::BadCredentials(format!(
            "user name {username:?} is not {expected}..."
        )));
    }
    let token = match (password.filter(|p| !p.is_empty()), has_certificate) {
        (Some(token), _) => token,
        (None, true) => return Ok(true),
        (None, false) => {
            return Err(ConnectRefusal::BadCredentials(
                "neither SAS token nor client certificate".into(),
            ));
        }
    };
    let token = sas::parse(token).map_err(|e| ConnectRefusal::BadCredentials(e.to_string()))?;
    let (_, keys) = core
        .enrollment_for(client_id)
        .ok()
        .flatten()
        .ok_or_else(|| {
            ConnectRefusal::NotAuthorized(format!("no enrollment covers {client_id}"))
        })?;
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let resource = format!("{}/registrations/{client_id}", core.config.id_scope);
    token
        .verify(&resource, &keys, unix_now())
        .map(|()| false)
        .map_err(|e| ConnectRefusal::NotAuthorized(e.to_string()))
}

/// DPS's error body: `errorCode` (status x 1000, 401002 for a failed attestation),
/// `trackingId`, `message`, `timestampUtc`.
fn error_body(e: &HubError) -> serde_json::Value {
    let status = u32::from(e.status());
    let code = if status == 401 {
        401_002
    } else {
        status * 1000
    };
    json!({
        "errorCode": code,
        "trackingId": format!("{:032x}", rand::random::<u128>()),
        "message": e.to_string(),
        "timestampUtc": rfc3339(chrono::Utc::now()),
    })
}

/// Handles a DPS client's publish; answers on `$dps/registrations/res/{status}/?$rid=..`.
pub(crate) async fn dps_publish(
    conn: &Rc<crate::mqtt::Connection>,
    registration_id: &str,
    topic: Inbound,
    _payload: &[u8],
) -> Result<(), MqttFault> {
    let core = &conn.core;
    let (rid, status, body) = match topic {
        // Register: assign right away, then answer 202 with an operation to poll.
        Inbound::DpsRegister(rid) => match register(conn, registration_id).await {
            Ok(device_id) => {
                let op = format!("4.{}.{registration_id}", core.next_id());
                let state = registration_state(core, registration_id, &device_id);
                crate::core::lock(&core.dps_ops).insert(op.clone(), state);
                (
                    rid,
                    202,
                    json!({ "operationId": op, "status": "assigning" }),
                )
            }
            Err(e) => {
                tracing::info!(registration_id, status = e.status(), reason = %e, "DPS registration refused");
                (rid, e.status(), error_body(&e))
            }
        },
        // Poll: the operation is already complete.
        Inbound::DpsStatus(rid, op) => match crate::core::lock(&core.dps_ops).get(&op) {
            Some(state) => (
                rid,
                200,
                json!({ "operationId": op, "status": "assigned", "registrationState": state }),
            ),
            None => {
                let e = HubError::from(Refusal::new(404, "NotFound", "unknown operationId"));
                (rid, 404, error_body(&e))
            }
        },
        other => {
            return Err(MqttFault(format!(
                "{registration_id} may not publish {other:?}"
            )));
        }
    };
    if conn.has_feed(Feed::Dps) {
        let topic = format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after=1");
        conn.push_raw(topic, serde_json::to_vec(&body).unwrap_or_default());
    }
    Ok(())
}

/// Assigns the registration through its X.509 or symmetric-key enrollment.
async fn register(
    conn: &crate::mqtt::Connection,
    registration_id: &str,
) -> Result<String, HubError> {
    match &conn.x509_chain {
        Some(chain) => conn.core.assign_x509(registration_id, chain).await,
        None => conn.core.assign(registration_id).await,
    }
}

fn registration_state(core: &Core, registration_id: &str, device_id: &str) -> serde_json::Value {
    let now = rfc3339(chrono::Utc::now());
    json!({
        "registrationId": registration_id,
        "createdDateTimeUtc": now,
        "assignedHub": core.config.hostname,
        "deviceId": device_id,
        "status": "assigned",
        "substatus": "initialAssignment",
        "lastUpdatedDateTimeUtc": now,
        "etag": sas::encode_uri(&now),
    })
}
