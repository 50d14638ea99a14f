//! An edge hub running in the same process as a [`HubLink`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudpillar_hub::core::Core;
use cloudpillar_hub::{HubError, HubEvent};

use super::{C2dSend, Event, EventPage, HubLink, HubLinkError};

/// The hub's shared state, called directly (no HTTP, no token).
#[derive(Debug, Clone)]
pub struct EmbeddedHub {
    core: Arc<Core>,
}

impl EmbeddedHub {
    /// Wraps a running hub's core (`HubHandle::core()`).
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    fn failure(action: &str, error: HubError) -> HubLinkError {
        HubLinkError::Request {
            action: action.to_owned(),
            reason: format!("status {}", error.status()),
            source: Some(Box::new(error)),
        }
    }
}

fn event(hub_event: HubEvent) -> Event {
    Event {
        sequence_number: hub_event.sequence_number,
        enqueued_time_utc: hub_event.enqueued_time_utc,
        enqueued_ms: hub_event.enqueued_ms,
        device_id: hub_event.device_id,
        source: hub_event.source,
        properties: hub_event.properties,
        system_properties: hub_event.system_properties,
        body: hub_event.body,
        body_base64: hub_event.body_base64,
    }
}

#[async_trait]
impl HubLink for EmbeddedHub {
    async fn read_events(
        &self,
        from: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<EventPage, HubLinkError> {
        let from = from.max(1);
        let mut last = self.core.bus.last_sequence();
        let mut events = self
            .core
            .read_events(from, limit)
            .map_err(|e| Self::failure("read events", e))?;
        if events.is_empty() && !wait.is_zero() {
            let deadline = tokio::time::Instant::now() + wait;
            while *last.borrow_and_update() < from {
                if tokio::time::timeout_at(deadline, last.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            events = self
                .core
                .read_events(from, limit)
                .map_err(|e| Self::failure("read events", e))?;
        }
        let next_sequence_number = events.last().map_or(from, |e| e.sequence_number + 1);
        Ok(EventPage {
            events: events.into_iter().map(event).collect(),
            next_sequence_number,
        })
    }

    async fn send_c2d(&self, device: &str, message: C2dSend) -> Result<(), HubLinkError> {
        let sent = self
            .core
            .send_c2d(
                device,
                message.body,
                message.properties,
                Some(message.message_id),
                None,
                None,
            )
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(HubError::Refused(r)) if r.code == "DeviceMaximumQueueDepthExceeded" => {
                Err(HubLinkError::QueueFull {
                    device: device.to_owned(),
                })
            }
            Err(HubError::Refused(r)) if r.code == "DeviceNotFound" => {
                Err(HubLinkError::DeviceNotFound {
                    device: device.to_owned(),
                })
            }
            Err(error) => Err(Self::failure("send c2d", error)),
        }
    }

    async fn c2d_pending(&self, device: &str) -> Result<Option<usize>, HubLinkError> {
        match self.core.c2d_depth(device) {
            Ok(depth) => Ok(Some(depth)),
            Err(HubError::Refused(r)) if r.code == "DeviceNotFound" => {
                Err(HubLinkError::DeviceNotFound {
                    device: device.to_owned(),
                })
            }
            Err(error) => Err(Self::failure("read c2d queue", error)),
        }
    }
}
