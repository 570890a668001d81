//! Body types of the proxy: request bodies sent upstream and response bodies
//! sent to clients, both streamed frame by frame, never buffered whole.
//!
//! [`ProxyBody`] also carries the bookkeeping that must happen when a relayed
//! response ends: the target's in-flight slot is released (which may complete
//! a drain), metrics are recorded and the upstream connection goes back to
//! the worker's pool.

use std::pin::Pin;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use crate::io::ConnState;
use crate::target::InFlight;

/// What we send upstream: the client's streamed body, or nothing (retries
/// of body-less requests).
pub enum ReqBody {
    Incoming(Incoming),
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Incoming(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Incoming(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Done when the relayed response ends (or is abandoned by the client).
pub(crate) struct Completion {
    pub claim: InFlight,
    pub started: Instant,
    pub status: u16,
    /// Returned to the pool only after a clean end of the body: only then is
    /// the HTTP/1 connection ready for the next request.
    pub conn: Option<SendRequest<ReqBody>>,
    pub worker: usize,
    pub client: Arc<ConnState>,
}

impl Completion {
    fn finish(mut self, clean: bool) {
        let t = &self.claim.0;
        t.stats.record(self.status, self.started.elapsed());
        if clean {
            if let Some(c) = self.conn.take() {
                t.checkin(self.worker, c);
            }
        }
        // Dropping `self` releases the in-flight slot.
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.client.active.fetch_sub(1, SeqCst);
    }
}

pub enum ProxyBody {
    Relayed {
        inner: Incoming,
        done: Option<Completion>,
    },
    /// An answer handoff made itself (errors), or an empty body.
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub(crate) fn text(s: String) -> Self {
        ProxyBody::Full(Some(Bytes::from(s)))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Relayed { inner, done } => {
                let r = Pin::new(inner).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => {
                        if let Some(c) = done.take() {
                            c.finish(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(c) = done.take() {
                            c.finish(false);
                        }
                    }
                    _ => {}
                }
                r
            }
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            // Deliberately false until `poll_frame` saw the end: hyper would
            // otherwise skip polling and the completion would run on drop,
            // which cannot return the connection to the pool.
            ProxyBody::Relayed { done, .. } => done.is_none(),
            ProxyBody::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Relayed { inner, .. } => inner.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // The client went away mid-body: record, and do not pool a
        // connection that still has unread response bytes on it.
        // (HEAD answers and empty bodies are never polled by hyper; their
        // upstream connection is clean and goes back to the pool.)
        if let ProxyBody::Relayed { inner, done } = self {
            if let Some(c) = done.take() {
                c.finish(inner.is_end_stream());
            }
        }
    }
}
