//! One connection after another: connect, subscribe, sync the twin, serve, reconnect.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, Request, TlsConfiguration, Transport,
};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::identity::{Credential, Identity};
use super::sync::Sync;
use super::{Health, Link, MAX_PACKET_BYTES, sas, tls, topics};
use crate::causes::with_causes;
use crate::keystore::KeyStore;
use crate::state::DeviceState;

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The device went BUSY.
    Paused,
    /// The token is due for renewal, or the identity changed.
    Renew,
    /// The connection failed.
    Failed,
    /// Authentication failed with an implausible clock (F10).
    ClockInvalid,
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(super) async fn run(link: Arc<Link>) {
    let mut carried = VecDeque::new();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut clock_backoff = Backoff::new(Duration::from_secs(30), Duration::from_secs(3600));
    loop {
        if link.device.is_busy() {
            link.set_health(Health::Paused);
            link.device.wait_not_busy().await;
        }
        let Some(identity) = link.identity() else {
            link.set_health(Health::Unprovisioned);
            link.identity_changed.notified().await;
            continue;
        };
        match connect_once(&link, &identity, &mut backoff, &mut carried).await {
            Ended::Paused | Ended::Renew => {}
            Ended::Failed => {
                link.set_health(Health::Retrying);
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Ended::ClockInvalid => {
                link.set_health(Health::ClockInvalid);
                tokio::time::sleep(clock_backoff.next_delay()).await;
            }
        }
    }
}

/// The SAS token for `identity`, when it authenticates with a symmetric key.
async fn sas_token(link: &Link, identity: &Identity) -> Result<Option<sas::SasToken>, String> {
    let key = KeyStore::new(&link.config)
        .key_for(&identity.credential)
        .map_err(|e| with_causes(&e))?;
    let Some(key) = key else {
        return Ok(None);
    };
    let uri = topics::device_resource_uri(&identity.host, &identity.device_id);
    let ttl = link.config.hub.as_ref().map_or(3600, |h| h.sas_ttl_secs);
    let now = unix_now();
    let token = sas::token(&uri, &key, None, now, ttl)
        .await
        .map_err(|e| with_causes(&e))?;
    // F10: never connect with a token that expires within the service's skew.
    if !token.usable_for_connect(now) {
        return Err(format!(
            "a {ttl} s token is too short-lived to connect with"
        ));
    }
    Ok(Some(token))
}

fn options(identity: &Identity, token: Option<&sas::SasToken>) -> Result<MqttOptions, String> {
    let mut options = MqttOptions::new(&identity.device_id, &identity.address, identity.port);
    options
        .set_keep_alive(Duration::from_secs(60))
        .set_clean_session(false)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_manual_acks(true)
        .set_inflight(32);
    let username = topics::hub_username(&identity.host, &identity.device_id);
    let client_cert = match (&identity.credential, token) {
        (Credential::X509 { cert, key }, _) => {
            options.set_credentials(username, "");
            Some((cert.as_path(), key.as_path()))
        }
        (_, Some(token)) => {
            options.set_credentials(username, token.token.clone());
            None
        }
        (_, None) => return Err("no SAS token for a symmetric-key identity".into()),
    };
    let tls =
        tls::client_config(identity.ca_file.as_deref(), client_cert).map_err(|e| e.to_string())?;
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    Ok(options)
}

async fn connect_once(
    link: &Arc<Link>,
    identity: &Identity,
    backoff: &mut Backoff,
    carried: &mut VecDeque<Request>,
) -> Ended {
    serve(link, identity, backoff, carried).await
}

/// Keeps device-to-cloud publishes that were not acknowledged, for the next connection.
fn carry_over(eventloop: &mut EventLoop, carried: &mut VecDeque<Request>) {
    eventloop.clean();
    carried.extend(
        eventloop
            .pending
            .drain(..)
            .filter(|r| matches!(r, Request::Publish(p) if p.topic.starts_with("devices/"))),
    );
}

async fn serve(
    link: &Arc<Link>,
    identity: &Identity,
    backoff: &mut Backoff,
    carried: &mut VecDeque<Request>,
) -> Ended {
    link.set_health(Health::Connecting);
    let prepared = sas_token(link, identity)
        .await
        .and_then(|token| Ok((options(identity, token.as_ref())?, token)));
    let (options, token) = match prepared {
        Ok(v) => v,
        Err(reason) => {
            tracing::warn!(%reason, "cannot prepare the connection");
            return Ended::Failed;
        }
    };
    // Renew no later than 80 % of the token's lifetime (F10).
    let renew_in = token
        .as_ref()
        .map(|t| t.renew_at().saturating_sub(unix_now()));
    let renew_at = Instant::now() + Duration::from_secs(renew_in.unwrap_or(u64::MAX / 4));
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    eventloop.pending = std::mem::take(carried);
    let mut sync = Sync::new(Arc::clone(link), client.clone(), identity.device_id.clone());
    let mut states = link.device.subscribe();

    let ended = loop {
        tokio::select! {
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    tracing::info!(session_present = ack.session_present, "connected to the hub");
                    backoff.reset();
                    // F09: every ConnAck re-subscribes all filters before anything else.
                    sync.on_connack().await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    link.set_health(Health::Connected);
                    sync.on_suback().await;
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => sync.on_publish(publish).await,
                Ok(Event::Outgoing(Outgoing::Publish(_))) => sync.on_publish_taken(),
                Ok(_) => {}
                Err(error) => break failure(&error, unix_now()),
            },
            () = tokio::time::sleep_until(renew_at) => {
                tracing::info!("renewing the SAS token");
                let _ = client.disconnect().await;
                drain(&mut eventloop).await;
                break Ended::Renew;
            }
            () = until_busy(&mut states) => {
                // The operator must see BUSY (deferred), not a device that vanished.
                let told = report_before_leaving(&mut sync, &mut eventloop, link).await;
                tracing::info!(reported = told, "device BUSY: disconnecting");
                let _ = client.disconnect().await;
                drain(&mut eventloop).await;
                break Ended::Paused;
            }
            () = link.identity_changed.notified() => {
                let _ = client.disconnect().await;
                drain(&mut eventloop).await;
                break Ended::Renew;
            }
            () = link.reported.changed(), if sync.can_report() => sync.send_reported().await,
            () = sleep_until_opt(sync.patch_deadline()) => sync.resend_reported().await,
            () = queued(&link.outbox),
                if sync.is_synced() && sync.can_hand_over() && !link.device.is_busy() => {
                if let Some((seq, message)) = link.outbox.peek() {
                    sync.send_d2c(message).await;
                    link.outbox.remove(seq);
                }
            }
        }
    };
    carry_over(&mut eventloop, carried);
    ended
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Returns at once when a message is queued, else when one arrives.
async fn queued(outbox: &super::outbox::Outbox) {
    let notified = outbox.changed();
    tokio::pin!(notified);
    if outbox.is_empty() {
        notified.await;
    }
}

/// Sends what is left to report (BUSY among it) and waits for the hub to take it, for at
/// most [`GOODBYE_TIMEOUT`]; whether everything was acknowledged.
async fn report_before_leaving(sync: &mut Sync, eventloop: &mut EventLoop, link: &Link) -> bool {
    tokio::time::timeout(GOODBYE_TIMEOUT, async {
        loop {
            if sync.can_report() {
                if link.reported.pending_patch().is_none() {
                    return;
                }
                sync.send_reported().await;
            }
            if !sync.is_synced() {
                // Not connected far enough to report: nothing can be said.
                return;
            }
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(publish))) => sync.on_publish(publish).await,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await
    .is_ok()
        && link.reported.pending_patch().is_none()
}

/// Longest wait for the hub to take the last reported patch before a BUSY disconnect.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);

async fn until_busy(states: &mut tokio::sync::watch::Receiver<DeviceState>) {
    let _ = states
        .wait_for(|s| *s == DeviceState::Busy)
        .await
        .map(|_| ());
}

async fn drain(eventloop: &mut EventLoop) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

/// Classifies a failed connection: an authentication refusal while the clock shows a time
/// before this release means the clock is wrong, not the key (F10).
fn failure(error: &ConnectionError, now: u64) -> Ended {
    let refused = matches!(
        error,
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword
        )
    );
    if refused && !sas::clock_is_plausible(now) {
        tracing::warn!(%error, "authentication refused and the clock is before the release date");
        return Ended::ClockInvalid;
    }
    tracing::warn!(%error, "hub connection failed");
    Ended::Failed
}

pub(super) const QOS: QoS = QoS::AtLeastOnce;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f10_auth_refusal_with_a_1970_clock_is_a_clock_problem() {
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized);
        assert_eq!(failure(&refused, 0), Ended::ClockInvalid);
        assert_eq!(
            failure(&refused, sas::CLOCK_FLOOR_UNIX - 3 * 3600),
            Ended::ClockInvalid
        );
        assert_eq!(failure(&refused, sas::CLOCK_FLOOR_UNIX + 10), Ended::Failed);
        let io = ConnectionError::Io(std::io::Error::other("reset"));
        assert_eq!(
            failure(&io, 0),
            Ended::Failed,
            "only auth refusals blame the clock"
        );
    }
}
