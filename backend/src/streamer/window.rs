//! Flow control of one download: room in the device's C2D queue, sends in flight, and a fair
//! share of the streamer's sends.
//!
//! Room: the device's queue never holds more than `max_pending` of our messages beyond what it
//! already held. The job reads the queue depth from the hub and sends only into the room left;
//! while the queue is full it polls until the device has taken messages off. A hub that cannot
//! tell its queue depth refuses sends past its own limit, and the job then waits and retries
//! the same message.
//!
//! Fair share: every send takes one of the streamer's [`SendSlots`] first. Slots go to the
//! downloads in the order they asked, and a download asks for one slot at a time, so while
//! more downloads want to send than there are slots they take turns message by message
//! instead of whichever task reaches the hub first filling its writer.

use cloudpillar_protocol::causes::ErrorChain;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::download::{Download, Stopped};
use crate::hub_link::{C2dSend, HubLinkError};

/// Sends in flight across all downloads of one streamer, handed out first come, first served.
#[derive(Debug, Clone)]
pub(super) struct SendSlots(Arc<Semaphore>);

impl SendSlots {
    pub(super) fn new(slots: usize) -> Self {
        Self(Arc::new(Semaphore::new(slots.max(1))))
    }

    /// Waits for a slot; `None` only if the slots were closed, which this module never does.
    fn take(&self) -> impl Future<Output = Option<OwnedSemaphorePermit>> + Send + 'static {
        let slots = self.0.clone();
        async move { slots.acquire_owned().await.ok() }
    }
}

type Slot = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// What the send loop waited for.
enum Woke {
    Slot(Option<OwnedSemaphorePermit>),
    Sent(Option<Result<(), Stopped>>),
}

/// Room left in one device's C2D queue.
pub(super) struct Window<'a> {
    job: &'a Download,
    room: usize,
    last_progress: Instant,
}

impl<'a> Window<'a> {
    pub(super) fn new(job: &'a Download) -> Self {
        Self {
            job,
            room: 0,
            last_progress: Instant::now(),
        }
    }

    /// Queues `messages` in order, never more at once than the queue has room for, with up to
    /// `send_ahead` sends in flight: a new send starts as soon as one finishes and a slot is
    /// free. Every message is queued when this returns.
    ///
    /// Sends start in order and the embedded hub commits them in that order; over the REST
    /// API concurrent sends may land out of offset order within a CRC range (the
    /// `VerifyRangeCRC` is sent only after all of them).
    pub(super) async fn send_all<I>(&mut self, messages: I) -> Result<(), Stopped>
    where
        I: IntoIterator<Item = Result<C2dSend, Stopped>>,
    {
        let job = self.job;
        let ahead = job.options.send_ahead.max(1);
        let mut messages = messages.into_iter().peekable();
        let mut in_flight = FuturesUnordered::new();
        // The slot asked for, kept across wake-ups so the download keeps its place in line.
        let mut asking: Option<Slot> = None;
        loop {
            let more = messages.peek().is_some();
            if !more && in_flight.is_empty() {
                return Ok(());
            }
            let may_start = more && in_flight.len() < ahead && self.room > 0;
            if !may_start {
                // A slot granted while this download cannot use it would sit idle.
                asking = None;
            }
            if !may_start && in_flight.is_empty() {
                self.wait_for_room().await?;
                continue;
            }
            let woke = if may_start {
                let slot = asking.get_or_insert_with(|| Box::pin(job.slots.take()));
                tokio::select! {
                    biased;
                    sent = in_flight.next(), if !in_flight.is_empty() => Woke::Sent(sent),
                    permit = slot => Woke::Slot(permit),
                }
            } else {
                Woke::Sent(in_flight.next().await)
            };
            match woke {
                Woke::Slot(permit) => {
                    asking = None;
                    if let Some(message) = messages.next() {
                        let message = message?;
                        in_flight.push(async move {
                            let _slot = permit;
                            job.send_one(message).await
                        });
                        self.room -= 1;
                    }
                }
                Woke::Sent(sent) => {
                    sent.unwrap_or(Ok(()))?;
                    self.last_progress = Instant::now();
                    if self.room == 0 && messages.peek().is_some() {
                        self.refresh_room(in_flight.len()).await?;
                    }
                }
            }
        }
    }

    /// Reads the queue depth once: the room is what `max_pending` leaves beside the queued
    /// messages and the `in_flight` sends (which the depth may not show yet).
    async fn refresh_room(&mut self, in_flight: usize) -> Result<(), Stopped> {
        let max = self.job.options.max_pending.max(1);
        match self.job.hub.c2d_pending(&self.job.device).await {
            Ok(Some(pending)) => self.room = max.saturating_sub(pending + in_flight),
            // The hub cannot tell: send until it refuses.
            Ok(None) => self.room = max,
            Err(HubLinkError::DeviceNotFound { .. }) => return Err(Stopped::DeviceGone),
            Err(error) => {
                let error = ErrorChain(&error);
                tracing::warn!(%error, device = %self.job.device, "queue depth unknown");
            }
        }
        Ok(())
    }

    /// Polls the queue depth until there is room, with nothing in flight.
    async fn wait_for_room(&mut self) -> Result<(), Stopped> {
        let mut poll = Duration::from_millis(1);
        loop {
            self.refresh_room(0).await?;
            if self.room > 0 {
                return Ok(());
            }
            let waited = self.last_progress.elapsed();
            if waited >= self.job.options.stall_timeout {
                return Err(Stopped::Stalled(waited));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(self.job.options.poll_ceiling);
        }
    }
}

impl Download {
    /// Queues one message, waiting out a full queue and retrying transient failures.
    async fn send_one(&self, message: C2dSend) -> Result<(), Stopped> {
        let mut delay = self.options.retry_first;
        let started = Instant::now();
        loop {
            match self.hub.send_c2d(&self.device, message.clone()).await {
                Ok(()) => return Ok(()),
                Err(HubLinkError::QueueFull { .. }) => {
                    let waited = started.elapsed();
                    if waited >= self.options.stall_timeout {
                        return Err(Stopped::Stalled(waited));
                    }
                    tokio::time::sleep(self.options.poll_ceiling).await;
                }
                Err(HubLinkError::DeviceNotFound { .. }) => return Err(Stopped::DeviceGone),
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), ?delay, device = %self.device, "c2d send failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.options.retry_ceiling);
                }
            }
        }
    }
}
