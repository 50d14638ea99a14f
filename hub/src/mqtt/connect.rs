//! CONNECT: who the peer is and whether it may connect.
//!
//! Devices: client id = device id, user name `{host}/{deviceId}/?api-version=...`, password a
//! device SAS token for `{host}/devices/{deviceId}`, or no password and a TLS client
//! certificate whose SHA-1 or SHA-256 thumbprint is registered (`selfSigned`) or whose chain
//! leads to an enrollment group's CA (`certificateAuthority`). DPS clients: user name
//! `{idScope}/registrations/{registrationId}/api-version=...`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ntex_mqtt::v3;
use ntex_tls::rustls::PeerCertChain;
use tokio::sync::{Notify, Semaphore, mpsc};

use super::MqttFault;
use super::c2d::deliver_c2d;
use super::session::{Connection, Peer, TWIN_IN_FLIGHT, outbound};
use super::topics::device_feed;
use crate::core::Core;
use crate::dps::attest::CERTIFICATE_AUTHORITY;
use crate::rest::unix_now;
use crate::sas::{self, EXPIRY_TOLERANCE_SECS};

/// Why a CONNECT was refused (logged; the peer gets the CONNACK code).
pub(crate) enum Refuse {
    BadCredentials(String),
    NotAuthorized(String),
}

pub(super) async fn connect(
    core: Arc<Core>,
    handshake: v3::Connect,
) -> Result<v3::ConnectAck<Rc<Connection>>, MqttFault> {
    let pkt = handshake.packet();
    let client_id = pkt.client_id.to_string();
    let username = pkt
        .username
        .as_ref()
        .map(|u| u.to_string())
        .unwrap_or_default();
    let password = pkt
        .password
        .as_ref()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let clean = pkt.clean_session;
    let chain: Option<Vec<Vec<u8>>> = handshake
        .io()
        .query::<PeerCertChain<'static>>()
        .as_ref()
        .map(|c| c.0.iter().map(|cert| cert.to_vec()).collect())
        .filter(|c: &Vec<Vec<u8>>| !c.is_empty());

    let checked = if username.contains("/registrations/") {
        super::dps_authenticate(
            &core,
            &client_id,
            &username,
            password.as_deref(),
            chain.is_some(),
        )
        .map(|x509| (Peer::Provisioning(client_id.clone()), None, x509))
    } else {
        authenticate(
            &core,
            &client_id,
            &username,
            password.as_deref(),
            chain.as_deref(),
        )
        .map(|expiry| (Peer::Device(client_id.clone()), expiry, false))
    };
    let (peer, expiry, x509) = match checked {
        Ok(ok) => ok,
        Err(Refuse::BadCredentials(why)) => {
            tracing::warn!(client_id, why, "connect refused: bad credentials");
            return Ok(handshake.bad_username_or_pwd());
        }
        Err(Refuse::NotAuthorized(why)) => {
            tracing::warn!(client_id, why, "connect refused: not authorized");
            return Ok(handshake.not_authorized());
        }
    };

    // Session state: a persistent session keeps its subscriptions across connections.
    let mut feeds = BTreeMap::new();
    let mut session_present = false;
    if let Peer::Device(id) = &peer {
        if clean {
            core.save_session(id, None)
                .await
                .map_err(|e| MqttFault(e.to_string()))?;
        } else if let Some(saved) = core
            .stored_session(id)
            .map_err(|e| MqttFault(e.to_string()))?
        {
            session_present = true;
            for (filter, qos) in saved {
                if let Some(feed) = device_feed(id, &filter) {
                    feeds.insert(filter, (feed, qos));
                }
            }
        }
    }

    let (tx, rx) = mpsc::unbounded_channel();
    let conn_id = match &peer {
        Peer::Device(id) => core
            .attach(id, tx)
            .await
            .map_err(|e| MqttFault(e.to_string()))?,
        Peer::Provisioning(_) => core.next_id(),
    };
    let conn = Rc::new(Connection {
        core,
        peer,
        conn_id,
        persistent: !clean,
        feeds: RefCell::new(feeds),
        sink: handshake.sink(),
        c2d_wake: Arc::new(Notify::new()),
        x509_chain: if x509 { chain } else { None },
        twin_slots: Arc::new(Semaphore::new(TWIN_IN_FLIGHT)),
    });
    ntex_rt::spawn(outbound(conn.clone(), rx));
    ntex_rt::spawn(deliver_c2d(conn.clone()));
    if session_present {
        conn.c2d_wake.notify_one();
    }
    if let Some(expiry) = expiry {
        // IoT Hub drops a connection once its token is past expiry plus the tolerance.
        let cut_at = expiry
            .saturating_add(EXPIRY_TOLERANCE_SECS)
            .saturating_sub(unix_now());
        let sink = conn.sink.clone();
        ntex_rt::spawn(async move {
            ntex_util::time::sleep(Duration::from_secs(cut_at)).await;
            sink.force_close();
        });
    }
    tracing::info!(client_id, session_present, "device connected");
    Ok(handshake.ack(conn, session_present))
}

/// Checks a device CONNECT; returns the token expiry for SAS connections.
fn authenticate(
    core: &Core,
    client_id: &str,
    username: &str,
    password: Option<&str>,
    chain: Option<&[Vec<u8>]>,
) -> Result<Option<u64>, Refuse> {
    let mut parts = username.splitn(3, '/');
    let (_host, user_device) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if user_device != client_id || client_id.is_empty() {
        return Err(Refuse::BadCredentials(format!(
            "user name {username:?} does not name {client_id}"
        )));
    }
    let device = core
        .get_device(client_id)
        .map_err(|_| Refuse::NotAuthorized(format!("{client_id} is not registered")))?;
    if !device.is_enabled() {
        return Err(Refuse::NotAuthorized(format!("{client_id} is disabled")));
    }
    match (password, chain) {
        (Some(token), _) => {
            let token = sas::parse(token).map_err(|e| Refuse::BadCredentials(e.to_string()))?;
            let resource = format!("{}/devices/{client_id}", core.config.hostname);
            token
                .verify(&resource, &device.keys(), unix_now())
                .map_err(|e| Refuse::NotAuthorized(e.to_string()))?;
            Ok(Some(token.expiry))
        }
        (None, Some(chain)) if device.authentication.kind == CERTIFICATE_AUTHORITY => core
            .verify_ca_signed(client_id, chain)
            .map(|()| None)
            .map_err(|e| Refuse::NotAuthorized(e.to_string())),
        (None, Some(chain)) => {
            let registered = device.thumbprints();
            let presented = chain
                .first()
                .map(|der| crate::tls::thumbprints(der))
                .unwrap_or_default();
            if presented.iter().any(|t| registered.contains(t)) {
                Ok(None)
            } else {
                Err(Refuse::NotAuthorized(
                    "client certificate thumbprint not registered".into(),
                ))
            }
        }
        (None, None) => Err(Refuse::BadCredentials(
            "neither SAS token nor client certificate".into(),
        )),
    }
}

pub(crate) use Refuse as ConnectRefusal;
