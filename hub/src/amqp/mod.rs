//! The Event Hubs-compatible AMQP 1.0 endpoint: the hub's event log (D2C messages, twin
//! change, connection state and lifecycle events) read the way Azure IoT Hub's built-in
//! endpoint is read.
//!
//! - Receivers attach to `{eventHubName}/ConsumerGroups/{group}/Partitions/{id}` with
//!   Event Hubs' selector filter (`amqp.annotation.x-opt-offset > '..'`, `>=`, or
//!   `x-opt-sequence-number`, `x-opt-enqueued-time`) and resume from their checkpoint.
//! - A device's events go to partition `FNV-1a(device id) % partitionCount`; sequence numbers
//!   and offsets are the event's position in the hub's one log, so they increase within a
//!   partition without being contiguous.
//! - Sign-in: SASL PLAIN with the policy name and key, or SASL ANONYMOUS and a SAS token put on
//!   `$cbs`. `$management` answers `READ` of `com.microsoft:eventhub` (name, partition ids).

pub mod address;
mod auth;
mod connection;
pub mod message;
mod nodes;
mod stream;

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::core::Core;

/// The running endpoint; dropping it stops the listener and every connection.
#[derive(Debug)]
pub struct AmqpServer {
    task: tokio::task::JoinHandle<()>,
}

impl AmqpServer {
    /// Stops accepting and closes every connection.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for AmqpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `listener` (already bound, non-blocking) with TLS when `tls` is set.
pub fn start(
    core: Arc<Core>,
    listener: std::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
) -> std::io::Result<AmqpServer> {
    let listener = TcpListener::from_std(listener)?;
    let tls = tls.map(TlsAcceptor::from);
    let task = tokio::spawn(accept_loop(core, listener, tls));
    Ok(AmqpServer { task })
}

async fn accept_loop(core: Arc<Core>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    // Connection tasks live in this set, so aborting the loop ends them too.
    let mut connections = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "AMQP accept failed");
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = tcp.set_nodelay(true);
        let core = core.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            tracing::debug!(%peer, "AMQP connection");
            match tls {
                None => connection::serve(core, tcp).await,
                Some(tls) => match tls.accept(tcp).await {
                    Ok(stream) => connection::serve(core, stream).await,
                    Err(error) => tracing::info!(%peer, %error, "AMQP TLS handshake failed"),
                },
            }
        });
    }
}
