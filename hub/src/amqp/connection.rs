//! One AMQP connection: SASL, sessions, and a task per link.

use std::sync::Arc;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SessionAcceptor,
};
use fe2o3_amqp::types::definitions::{AmqpError, Error};
use fe2o3_amqp::types::messaging::{Source, TargetArchetype};
use fe2o3_amqp::types::primitives::Symbol;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;

use super::address::{PartitionAddress, SELECTOR_FILTER, StartAt};
use super::auth::ConnectionAuth;
use super::nodes::{self, ReplyLinks};
use super::stream;
use crate::core::Core;

/// Serves one client connection until it closes. Dropping the future ends its sessions and
/// links with it.
pub async fn serve<Io>(core: Arc<Core>, io: Io)
where
    Io: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let auth = ConnectionAuth::new(core.clone());
    let acceptor = ConnectionAcceptor::builder()
        .container_id(core.config.hostname.clone())
        .sasl_acceptor(auth.clone())
        .build();
    let mut connection = match acceptor.accept(io).await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::info!(%error, "AMQP connection not opened");
            return;
        }
    };
    let sessions = SessionAcceptor::new();
    let mut tasks = JoinSet::new();
    while let Ok(session) = sessions.accept(&mut connection).await {
        tasks.spawn(serve_session(core.clone(), auth.clone(), session));
    }
    tasks.shutdown().await;
    let _ = connection.close().await;
}

async fn serve_session(core: Arc<Core>, auth: ConnectionAuth, mut session: ListenerSessionHandle) {
    let links = LinkAcceptor::new();
    let replies = ReplyLinks::default();
    let mut tasks = JoinSet::new();
    while let Some(attach) = session.next_incoming_attach().await {
        let source = attach.source.as_deref().cloned();
        let target = match attach.target.as_deref() {
            Some(TargetArchetype::Target(t)) => t.address.clone(),
            _ => None,
        };
        let link = match links.accept_incoming_attach(attach, &mut session).await {
            Ok(link) => link,
            Err(error) => {
                tracing::debug!(%error, "AMQP link not attached");
                continue;
            }
        };
        match link {
            LinkEndpoint::Receiver(receiver) => {
                let node = target.unwrap_or_default();
                if node == nodes::CBS || node == nodes::MANAGEMENT {
                    tasks.spawn(nodes::serve(
                        core.clone(),
                        auth.clone(),
                        node,
                        receiver,
                        replies.clone(),
                    ));
                } else {
                    let why = "this hub takes no messages from service clients";
                    let _ = receiver
                        .close_with_error(refusal(AmqpError::NotAllowed, why))
                        .await;
                }
            }
            LinkEndpoint::Sender(sender) => {
                let address = source.as_ref().and_then(|s| s.address.clone());
                let address = address.unwrap_or_default();
                if address == nodes::CBS || address == nodes::MANAGEMENT {
                    replies.lock().await.insert(address, sender);
                    continue;
                }
                match partition_link(&core, &auth, &address, source.as_ref()) {
                    Ok((address, start)) => {
                        tasks.spawn(stream::run(core.clone(), sender, address, start));
                    }
                    Err(error) => {
                        tracing::info!(%address, reason = ?error.description, "AMQP receiver refused");
                        let _ = sender.close_with_error(error).await;
                    }
                }
            }
        }
    }
    tasks.shutdown().await;
    let _ = session.end().await;
}

/// The partition and start position a receiver asks for, when it may have them.
fn partition_link(
    core: &Core,
    auth: &ConnectionAuth,
    address: &str,
    source: Option<&Source>,
) -> Result<(PartitionAddress, StartAt), Error> {
    let hub = &core.config.event_hub_name;
    let parsed = PartitionAddress::parse(address).ok_or_else(|| {
        refusal(
            AmqpError::NotFound,
            format!(
                "no such node; receivers attach to {hub}/ConsumerGroups/<group>/Partitions/<id>"
            ),
        )
    })?;
    if parsed.event_hub != *hub {
        return Err(refusal(
            AmqpError::NotFound,
            format!("no event hub {}; this hub serves {hub}", parsed.event_hub),
        ));
    }
    if parsed.partition >= core.config.partition_count {
        return Err(refusal(
            AmqpError::NotFound,
            format!("partition {} does not exist", parsed.partition),
        ));
    }
    if !auth.may_read(hub) {
        return Err(refusal(
            AmqpError::UnauthorizedAccess,
            "put a SAS token for the event hub on $cbs first, or sign in with SASL PLAIN",
        ));
    }
    let filter = source
        .and_then(|s| s.filter.as_ref())
        .and_then(|f| f.get(&Symbol::from(SELECTOR_FILTER)));
    let start = match filter {
        Some(value) => StartAt::from_filter_value(value)
            .map_err(|e| refusal(AmqpError::InvalidField, e.to_string()))?,
        None => StartAt::Earliest,
    };
    Ok((parsed, start))
}

fn refusal(condition: AmqpError, description: impl Into<String>) -> Error {
    Error::new(condition, Some(description.into()), None)
}
