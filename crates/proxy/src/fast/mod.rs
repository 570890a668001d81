//! The fast path: handoff's own HTTP/1.1 proxy loop, one task per client
//! connection, no hyper in between.
//!
//! Per request: the head is read into a buffer from the worker's pool and
//! parsed ([`h1::parse_request`], which writes the upstream head in the same
//! pass); a small body (`Content-Length` up to [`h1::MAX_SMALL_BODY`]) is
//! read whole under the head's deadline and sent in the same write, a
//! larger or chunked one is streamed after the head with back-pressure
//! ([`upload`]) — never sent twice: a body-carrying request is retried
//! only when the connect failed, as on hyper's path; a pooled upstream
//! socket of this worker is checked alive and written to; the response
//! head is parsed and relayed with its body, reframed by [`h1::Decoder`],
//! reading the upstream only as fast as the client takes it. Everything runs in the client connection's task: no
//! channel, no second task, no wake-up in between ([`exchange`]). Between
//! requests the connection holds no buffer at all: a plain TCP client
//! waits on socket readiness, and the buffers go back to the pool; after
//! [`park::PARK_AFTER`] of silence it leaves its task too, and waits as a
//! bare socket in its worker's epoll set ([`park`]).
//!
//! The rules are those of the hyper path ([`crate::forward`]), shared where
//! they can be: the same target pick, in-flight claims (drains wait for
//! them), retries (connect failures elsewhere; an idempotent request once
//! more if nothing of a response arrived), passive health, metrics, 408
//! after `header_timeout`, `idle_timeout`, `Connection: close` while
//! stopping. Whatever it does not take — an upgrade, `Expect`, a length or
//! transfer coding to judge (two lengths, both framings, `gzip, chunked`),
//! HTTP/1.0, HTTP/2, a malformed or oversized head, a service with
//! `fast_path = false` — goes to hyper with the bytes read so far
//! ([`Rewind`]), for the rest of the connection: hyper's answers (400, 431,
//! 101) and its framing checks stay the one implementation of those.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::Failure;
use crate::forward::answer_text;
use crate::h1::{self, Extra, Forwarded, ReqParse};
use crate::server::{Front, LINGER};
use crate::service::ServiceProxy;

mod alarm;
mod exchange;
pub(crate) mod park;
mod pool;
mod rewind;
mod upload;

use alarm::Woke;
use exchange::forward;
use rewind::Rewind;
use upload::Upload;

/// A client stream the fast path serves.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Waits, holding no buffer, until there is something to read; `None`
    /// when the stream cannot tell (TLS may hold decrypted bytes already),
    /// and the wait then reads into a buffer.
    fn poll_idle(&self, _cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        None
    }

    /// Whether an idle connection can leave its task ([`park`]).
    fn parkable(&self) -> bool {
        false
    }

    /// The plain TCP stream, to park; `Err(self)` for any other.
    fn into_tcp(self) -> Result<TcpStream, Self>
    where
        Self: Sized,
    {
        Err(self)
    }
}

impl ClientStream for TcpStream {
    fn poll_idle(&self, cx: &mut Context<'_>) -> Option<Poll<io::Result<()>>> {
        Some(self.poll_read_ready(cx))
    }

    fn parkable(&self) -> bool {
        park::available()
    }

    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {}

/// What a connection needs to go on to hyper when the fast path declines.
pub(crate) struct Handover {
    pub builder: Arc<auto::Builder<TokioExecutor>>,
    pub alive: mpsc::Sender<()>,
}

/// Serves one client connection on the fast path, until it ends, is
/// handed to hyper, or is parked while idle ([`park`]; `resumed` carries
/// its idle deadline when its task starts again, at reading its next
/// request).
///
/// Not an `async fn`: that would keep its arguments twice in the future
/// (as arguments and as locals), and this future is what every idle
/// connection holds (measured with `-Zprint-type-sizes`: 880 → 800 bytes,
/// the task 1,152 → 1,024).
#[allow(clippy::manual_async_fn, clippy::too_many_arguments)]
pub(crate) fn serve<S: ClientStream>(
    mut io: S,
    peer: SocketAddr,
    tls: bool,
    front: Arc<Front>,
    worker: usize,
    stop: watch::Receiver<bool>,
    hand: Handover,
    resumed: Option<Instant>,
) -> impl std::future::Future<Output = ()> {
    async move {
        let live = park::Live::new();
        let mut alarm = std::pin::pin!(alarm::new());
        let svc0 = front.routes.first().clone();
        let fwd = Forwarded {
            peer: peer.ip(),
            tls,
        };
        let accepted = Instant::now();
        let max_head = svc0.settings.max_header_bytes.max(8192);
        // Bytes of the next request(s); capacity only while one is read.
        let mut buf: Vec<u8> = Vec::new();
        let mut first = resumed.is_none();
        // A deadline that outlives one wait: a resumed connection's.
        let mut idle_until = resumed;
        let mut closing = false;
        loop {
            if buf.is_empty() {
                // Between requests: nothing held but the socket.
                let now = Instant::now();
                let mut until = if first {
                    accepted + svc0.settings.header_timeout
                } else {
                    idle_until
                        .take()
                        .unwrap_or_else(|| now + svc0.settings.idle_timeout)
                };
                // A resumed connection may come back to a stop.
                closing |= *stop.borrow();
                if closing {
                    until = until.min(now + LINGER);
                }
                // Idle after a response: parked after a while, unless the
                // connection is ending anyway.
                let park_at = (!first && io.parkable())
                    .then(|| now + park::PARK_AFTER)
                    .filter(|p| *p < until);
                let ready = {
                    let mut readable = std::pin::pin!(idle(&io));
                    loop {
                        let wake = match park_at {
                            Some(p) if !closing => p,
                            _ => until,
                        };
                        match alarm::wait(alarm.as_mut(), wake, readable.as_mut()).await {
                            Woke::Done(r) => break Ok(r),
                            Woke::Due => break Err(alarm::Late),
                            // A stop reaches a connection idle in its task
                            // within a tick (a parked one, at once: the
                            // parker hands it back).
                            Woke::Tick if !closing && *stop.borrow() => {
                                closing = true;
                                until = until.min(Instant::now() + LINGER);
                            }
                            Woke::Tick => {}
                        }
                    }
                };
                match ready {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) if park_at.is_some() && !closing && Instant::now() < until => {
                        let stopping = *stop.borrow();
                        if stopping || !park::available() {
                            // A stop came with the park timer (the parker
                            // may be gone already): wait on here, as any
                            // idle connection does on a stop.
                            closing = stopping;
                            idle_until = Some(until);
                            continue;
                        }
                        // Only TCP is parkable: the `Err` arm is never taken.
                        if let Ok(tcp) = io.into_tcp() {
                            park::park(tcp, peer, until, front, hand);
                        }
                        return;
                    }
                    Err(_) => {
                        if first && !closing {
                            time_out(&mut io, &svc0).await;
                        }
                        return;
                    }
                }
                buf = pool::take();
                match alarm::within(alarm.as_mut(), until, io.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => return pool::give(buf),
                    Err(_) => {
                        pool::give(buf);
                        if first && !closing {
                            time_out(&mut io, &svc0).await;
                        }
                        return;
                    }
                }
            }
            // Set when a head needs a second read (rarely: the clock is
            // not read for nothing).
            let mut head_by = first.then(|| accepted + svc0.settings.header_timeout);
            let mut out = pool::take();
            // A head whose small body is still coming.
            let mut waiting = None;
            // `short`: the client ended its side before the small body did.
            let (req, short) = loop {
                // Bytes a small body still needs, beyond room for a read.
                let body_rest = match h1::parse_request(&buf, &fwd, &mut out) {
                    // A head over the limit that arrived in one read: hyper
                    // answers 431 for it, as for one that did not.
                    ReqParse::Ready(r) if r.head_len > max_head => {
                        pool::give(out);
                        return to_hyper(io, buf, peer, tls, front, worker, stop, hand, live).await;
                    }
                    // A streamed body follows the head as it comes.
                    ReqParse::Ready(r) if r.stream.is_some() => break (r, false),
                    ReqParse::Ready(r) if buf.len() >= r.head_len + r.body => {
                        // A small body goes upstream in the same write as its
                        // head (one whole request to send, or to send again
                        // elsewhere when a connect fails).
                        out.extend_from_slice(&buf[r.head_len..r.head_len + r.body]);
                        break (r, false);
                    }
                    // The rest of a small body: under the head's deadline,
                    // it is part of reading the request.
                    ReqParse::Ready(r) => {
                        let rest = r.head_len + r.body - buf.len();
                        waiting = Some(r);
                        rest
                    }
                    ReqParse::Decline => {
                        pool::give(out);
                        return to_hyper(io, buf, peer, tls, front, worker, stop, hand, live).await;
                    }
                    ReqParse::Partial if buf.len() > max_head => {
                        // hyper answers 431 for it.
                        pool::give(out);
                        return to_hyper(io, buf, peer, tls, front, worker, stop, hand, live).await;
                    }
                    ReqParse::Partial => 0,
                };
                pool::room(&mut buf);
                buf.reserve(body_rest);
                let by =
                    *head_by.get_or_insert_with(|| Instant::now() + svc0.settings.header_timeout);
                match alarm::within(alarm.as_mut(), by, io.read_buf(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    Ok(_) => {
                        // A body cut short is answered (400, as hyper does);
                        // a head cut short is not.
                        if let Some(r) = waiting.take() {
                            break (r, true);
                        }
                        pool::give(out);
                        return pool::give(buf);
                    }
                    Err(_) => {
                        pool::give(out);
                        pool::give(buf);
                        time_out(&mut io, &svc0).await;
                        return;
                    }
                }
            };
            first = false;
            let mut consumed = req.head_len + req.body;
            // A body left partly unread: the client may still be sending it,
            // and its bytes must never be read as a next request. Until an
            // upload reads it, a streamed body is unread.
            let mut unread = short || req.stream.is_some();
            let host = std::str::from_utf8(&buf[req.host.clone()]).ok();
            let target = &buf[req.path.clone()];
            let path = target.split(|&b| b == b'?').next().unwrap_or(target);
            let path = std::str::from_utf8(path).unwrap_or("/");
            closing |= *stop.borrow();
            let close = closing || req.close || short;
            let picked = front.routes.pick(host, path).cloned();
            let kept = match picked {
                None => {
                    let why = format!(
                        "no service here for host {} and path {path}",
                        host.unwrap_or("(none)")
                    );
                    out.clear();
                    write_answer(
                        &mut out,
                        StatusCode::NOT_FOUND,
                        "no_route",
                        &why,
                        close || unread,
                        false,
                    );
                    io.write_all(&out).await.is_ok() && io.flush().await.is_ok()
                }
                Some(svc) if !svc.settings.fast_path => {
                    pool::give(out);
                    return to_hyper(io, buf, peer, tls, front, worker, stop, hand, live).await;
                }
                Some(svc) if short => {
                    let hsts = svc.tls.as_ref().is_some_and(|t| t.hsts);
                    let extra = Extra { close, hsts };
                    tracing::debug!(service = %svc.name, "request body cut short");
                    exchange::answer(&mut io, &svc, Failure::BadRequest, &mut out, &extra, None)
                        .await
                }
                Some(svc) => {
                    let hsts = svc.tls.as_ref().is_some_and(|t| t.hsts);
                    let extra = Extra { close, hsts };
                    let mut upload = req.stream.map(|framing| {
                        Upload::new(std::mem::take(&mut buf), req.head_len, framing)
                    });
                    // Boxed: an idle connection's task then holds none of a
                    // request's state.
                    let kept = Box::pin(forward(
                        &mut io,
                        &svc,
                        &req,
                        &mut out,
                        &extra,
                        upload.as_mut(),
                        worker,
                        alarm.as_mut(),
                    ))
                    .await;
                    if let Some(mut u) = upload {
                        // What follows the body: the next request.
                        buf = std::mem::take(&mut u.buf);
                        consumed = u.at;
                        unread = !u.read_whole();
                    }
                    kept
                }
            };
            pool::give(out);
            // Pipelined requests stay; otherwise the buffer goes back.
            let consumed = consumed.min(buf.len());
            let rest = std::mem::take(&mut buf).split_off_front(consumed);
            if rest.is_empty() {
                pool::give(rest);
            } else {
                buf = rest;
            }
            if !kept || close || unread {
                let _ = io.shutdown().await;
                if unread {
                    discard(&mut io, &mut buf).await;
                }
                return pool::give(buf);
            }
        }
    }
}

/// Gives a parked connection its task again, on the current worker.
fn resume(
    io: TcpStream,
    peer: SocketAddr,
    front: Arc<Front>,
    worker: usize,
    stop: watch::Receiver<bool>,
    hand: Handover,
    until: Instant,
) {
    tokio::spawn(serve(
        io,
        peer,
        false,
        front,
        worker,
        stop,
        hand,
        Some(until),
    ));
}

trait SplitFront {
    /// Drops the first `n` bytes, keeping the allocation.
    fn split_off_front(self, n: usize) -> Self;
}

impl SplitFront for Vec<u8> {
    fn split_off_front(mut self, n: usize) -> Self {
        self.drain(..n);
        self
    }
}

/// How long the rest of an unread body is read and dropped ([`discard`]).
const DISCARD_FOR: Duration = Duration::from_secs(2);

/// After an answer to a request whose body was not read to its end (its
/// connection already shut for writing): the client may still be sending
/// the body, and closing now would make the kernel reset the connection,
/// which can destroy the answer before the client reads it (RFC 9112
/// §9.6). So what it sends is read and dropped for a while first, until
/// it closes too, as nginx's lingering close does.
async fn discard<S: ClientStream>(io: &mut S, buf: &mut Vec<u8>) {
    let until = Instant::now() + DISCARD_FOR;
    loop {
        buf.clear();
        pool::room(buf);
        match tokio::time::timeout_at(until, io.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Resolves once the client has sent something (or EOF, or an error).
async fn idle<S: ClientStream>(io: &S) -> io::Result<()> {
    std::future::poll_fn(|cx| io.poll_idle(cx).unwrap_or(Poll::Ready(Ok(())))).await
}

/// A head that did not arrive within `header_timeout`: 408, as on hyper's
/// path ([`crate::io`]).
async fn time_out<S: ClientStream>(io: &mut S, svc: &ServiceProxy) {
    svc.stats.header_timeout.fetch_add(1, Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = io.write_all(crate::io::RESPONSE_408).await;
        let _ = io.flush().await;
    })
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn to_hyper<S: ClientStream>(
    io: S,
    read: Vec<u8>,
    peer: SocketAddr,
    tls: bool,
    front: Arc<Front>,
    worker: usize,
    stop: watch::Receiver<bool>,
    hand: Handover,
    live: park::Live,
) {
    // hyper's connections are not the parker's to keep its timer for: a
    // long-lived tunnel or HTTP/2 connection would keep it ticking.
    drop(live);
    let io = Rewind {
        pre: read,
        at: 0,
        inner: io,
    };
    Box::pin(crate::server::serve_conn(
        io,
        peer,
        tls,
        front,
        hand.builder,
        worker,
        stop,
        hand.alive,
    ))
    .await
}

/// An answer handoff gives itself, as bytes.
fn write_answer(
    out: &mut Vec<u8>,
    status: StatusCode,
    code: &str,
    why: &str,
    close: bool,
    hsts: bool,
) {
    use std::io::Write as _;
    let body = answer_text(status, why);
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\nx-handoff-error: {code}\r\ncontent-length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if hsts {
        out.extend_from_slice(h1::HSTS);
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}
