//! Keeps each connection's requests in the order they arrived.
//!
//! ntex runs a request's handler at once when no earlier handler of the connection is still
//! pending, and as a task of its own otherwise; a newer request can then start before an older
//! one, and a device's reported patches could apply out of order. This middleware lets one
//! request at a time through: the next one is read only when the previous has finished, so
//! every handler starts at once, in arrival order.
//!
//! A publish whose payload arrives in chunks would deadlock that rule (its handler waits for
//! chunks that are not read), so the middleware collects the chunks itself, answers the
//! partial requests with nothing, and passes the publish on whole with its last chunk.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use ntex_bytes::BytesMut;
use ntex_mqtt::v3::codec::{Decoded, Publish};
use ntex_service::{Ctx, Middleware, Service};
use ntex_util::task::LocalWaker;

/// The middleware; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ordered;

impl<S, St> Middleware<S, St> for Ordered {
    type Service = OrderedService<S>;

    fn create(&self, _: &St, service: S) -> Self::Service {
        OrderedService {
            service,
            state: Rc::new(State::default()),
        }
    }
}

/// One connection's request state.
#[derive(Debug, Default)]
struct State {
    /// A request is being handled.
    busy: Cell<bool>,
    /// The dispatcher waiting to read the next request.
    reader: LocalWaker,
    /// A publish whose payload is still arriving: header, payload so far, packet size.
    partial: RefCell<Option<(Publish, BytesMut, u32)>>,
}

/// Marks the connection free again however its request ends (finished, failed or dropped).
struct Busy(Rc<State>);

impl Busy {
    fn new(state: &Rc<State>) -> Self {
        state.busy.set(true);
        Self(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.set(false);
        self.0.reader.wake();
    }
}

/// What a payload chunk completed.
enum Collected {
    /// More chunks follow.
    Pending,
    /// The last chunk: the publish with its whole payload.
    Whole(Decoded),
    /// No publish was waiting for it.
    Stray(Decoded),
}

impl<S> OrderedService<S> {
    fn collect(&self, chunk: ntex_bytes::Bytes, last: bool) -> Collected {
        let mut partial = self.state.partial.borrow_mut();
        let Some((_, buf, _)) = partial.as_mut() else {
            return Collected::Stray(Decoded::PayloadChunk(chunk, last));
        };
        buf.extend_from_slice(&chunk);
        if !last {
            return Collected::Pending;
        }
        match partial.take() {
            Some((publish, buf, size)) => {
                Collected::Whole(Decoded::Publish(publish, buf.freeze(), size))
            }
            None => Collected::Pending,
        }
    }
}

/// The service the middleware wraps around ntex's request dispatcher.
#[derive(Debug)]
pub(crate) struct OrderedService<S> {
    service: S,
    state: Rc<State>,
}

impl<S, St> Service<St, Decoded> for OrderedService<S>
where
    S: Service<St, Decoded>,
    S::Res: Default,
{
    type Res = S::Res;
    type Error = S::Error;

    async fn ready(&self, ctx: Ctx<'_, Self, St>) -> Result<(), Self::Error> {
        poll_fn(|cx| {
            if self.state.busy.get() {
                self.state.reader.register(cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        ctx.ready(&self.service).await
    }

    async fn call(&self, req: Decoded, ctx: Ctx<'_, Self, St>) -> Result<S::Res, S::Error> {
        let req = match req {
            Decoded::Publish(publish, payload, size)
                if payload.len() < publish.payload_size as usize =>
            {
                let buf = BytesMut::from(&payload[..]);
                *self.state.partial.borrow_mut() = Some((publish, buf, size));
                return Ok(S::Res::default());
            }
            Decoded::PayloadChunk(chunk, last) => match self.collect(chunk, last) {
                Collected::Pending => return Ok(S::Res::default()),
                Collected::Whole(publish) => publish,
                // Not ours to collect: let ntex judge it.
                Collected::Stray(chunk) => chunk,
            },
            other => other,
        };
        let busy = Busy::new(&self.state);
        // Readiness was checked before this request was read.
        let result = ctx.call_nowait(&self.service, req).await;
        drop(busy);
        result
    }

    ntex_service::forward_shutdown!(St, service);
}
