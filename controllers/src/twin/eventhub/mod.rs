//! Twin change and connection events read from an Event Hubs-compatible endpoint over AMQP
//! 1.0: Azure IoT Hub's built-in endpoint, or the edge hub's.
//!
//! One connection signs in with a SAS token on `$cbs`, lists the partitions on
//! `$management`, and attaches one receiver per partition with a selector filter naming
//! where to start. Every event says which partition it came from, so the caller can keep a
//! position per partition and resume from it.

mod decode;
mod link;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use tokio::task::JoinSet;

use super::{Checkpoint, TwinError, TwinEvent};
use link::Link;

/// Port of AMQP over TLS.
const AMQPS_PORT: u16 = 5671;
/// Events buffered between the receivers and the stream's reader.
const BUFFER: usize = 1024;

/// Where and how to read an Event Hubs-compatible endpoint.
#[derive(Clone)]
pub struct EventHubConnection {
    /// Host and optional port (default 5671), for example
    /// `ihsuprodxx.servicebus.windows.net` or `edge-hub:5671`.
    pub host: String,
    /// Event Hubs-compatible name (the `EntityPath` of the connection string).
    pub name: String,
    /// Consumer group, for example `$Default`.
    pub consumer_group: String,
    /// Shared access policy name with service connect rights.
    pub policy_name: String,
    /// Base64 key of the policy.
    pub policy_key: String,
    /// TLS settings; `None` speaks plain AMQP (edge hub on loopback only).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for EventHubConnection {
    /// Leaves the policy key out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHubConnection")
            .field("host", &self.host)
            .field("name", &self.name)
            .field("consumer_group", &self.consumer_group)
            .field("policy_name", &self.policy_name)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl EventHubConnection {
    /// Settings for TLS that trusts `ca_pem` only, or the system roots when it is `None`.
    pub fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
        link::tls_config(ca_pem)
    }

    /// The host without its port.
    fn host_name(&self) -> &str {
        match self.host.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => &self.host,
        }
    }

    /// `host:port`, with the AMQPS port when none is given.
    fn address(&self) -> String {
        if self.host.parse::<SocketAddr>().is_ok() || self.host_name() != self.host {
            self.host.clone()
        } else {
            format!("{}:{AMQPS_PORT}", self.host)
        }
    }

    /// The token audience and signed resource: `sb://{host}/{event hub}`.
    fn audience(&self) -> String {
        format!("sb://{}/{}", self.host_name(), self.name).to_lowercase()
    }

    fn failed(&self, operation: &'static str, source: impl fmt::Display) -> TwinError {
        TwinError::EventHub {
            operation,
            host: self.host.clone(),
            reason: source.to_string(),
        }
    }

    fn refused(&self, operation: &'static str, reason: String) -> TwinError {
        TwinError::EventHubRefused {
            operation,
            host: self.host.clone(),
            reason,
        }
    }
}

/// Where one partition's receiver starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartAt {
    /// Events enqueued after the receiver attaches.
    Latest,
    /// The event with this sequence number or the next later one.
    Sequence(u64),
    /// Events enqueued after this instant (milliseconds since 1970).
    EnqueuedAfter(u64),
}

impl StartAt {
    fn of(from: &Checkpoint, partition: &str) -> Self {
        match from {
            Checkpoint::Latest => Self::Latest,
            Checkpoint::Sequence(n) => Self::Sequence(*n),
            Checkpoint::Positions(positions) => match positions.next.get(partition) {
                Some(n) => Self::Sequence(*n),
                None => Self::EnqueuedAfter(positions.since_ms),
            },
        }
    }
}

/// Events of every partition from `from` on; the stream ends after the first error.
pub(super) fn subscribe(
    settings: EventHubConnection,
    from: Checkpoint,
) -> BoxStream<'static, Result<TwinEvent, TwinError>> {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let mut failed = tx.clone();
        if let Err(error) = read(settings, from, tx).await {
            let _ = failed.try_send(Err(error));
        }
    });
    rx.boxed()
}

type Events = mpsc::Sender<Result<TwinEvent, TwinError>>;

async fn read(settings: EventHubConnection, from: Checkpoint, tx: Events) -> Result<(), TwinError> {
    // Sign in, list the partitions, attach a receiver to each.
    let mut link = Link::open(&settings).await?;
    let partitions = link.partition_ids().await?;
    let mut receivers = JoinSet::new();
    for partition in partitions {
        let receiver = link
            .receiver(&partition, StartAt::of(&from, &partition))
            .await?;
        tracing::debug!(host = %settings.host, %partition, "event hub receiver attached");
        receivers.spawn(decode::forward(
            receiver,
            partition,
            settings.clone(),
            tx.clone(),
        ));
    }
    drop(tx);

    // The first receiver to stop ends the subscription; the caller resumes from its checkpoint.
    let result = match receivers.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(_)) | None => Ok(()),
    };
    receivers.shutdown().await;
    link.close().await;
    result
}
