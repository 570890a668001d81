//! The client connection's I/O wrapper: the timeouts and framing checks that
//! hyper's server does not give us in the form we want.
//!
//! - **Header timeout → 408.** hyper's own `header_read_timeout` closes the
//!   socket silently; a slowloris client (or a confused one) should get a
//!   `408 Request Timeout` it can log. The timer starts at the first byte of
//!   a request head and stops when hyper hands the request to the service.
//! - **Idle timeout.** A keep-alive connection with no request in progress is
//!   closed after `idle_timeout` (hyper has none without a timer).
//! - **Framing guard.** hyper resolves `Content-Length` + `Transfer-Encoding`
//!   safely (chunked wins, connection closes after), but a request with both
//!   is a smuggling attempt or a broken client and is refused with 400. The
//!   guard scans each request head as it arrives and flags the connection;
//!   the service answers 400 before anything is forwarded. Heads of requests
//!   pipelined behind a body are not scanned; hyper's own handling still
//!   keeps those safe.
//!
//! HTTP/2 connections (prior knowledge) are recognised by their preface and
//! passed through untouched: h2 has its own framing and flow control.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::*};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Shared between the I/O wrapper and the service of one client connection.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Requests handed to the service whose response has not finished.
    pub active: AtomicU32,
    /// Bytes of a new request head have arrived; the service has not seen it.
    head_pending: AtomicBool,
    /// The head being read had both Content-Length and Transfer-Encoding.
    ambiguous: AtomicBool,
}

impl ConnState {
    /// Called by the service when hyper hands it a request.
    pub(crate) fn request_started(&self) -> bool {
        self.active.fetch_add(1, SeqCst);
        self.head_pending.store(false, SeqCst);
        self.ambiguous.swap(false, SeqCst)
    }
}

const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 52\r\n\r\nhandoff: the request head did not arrive in time\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Timer {
    Off,
    Header,
    Idle,
}

pub struct ClientIo<T> {
    inner: T,
    state: Arc<ConnState>,
    header_timeout: Duration,
    idle_timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    timer: Timer,
    /// `None` until the first bytes tell h1 from h2.
    h2: Option<bool>,
    scan: HeadScanner,
    on_header_timeout: Box<dyn Fn() + Send + Sync>,
}

impl<T> ClientIo<T> {
    pub fn new(
        inner: T,
        state: Arc<ConnState>,
        header_timeout: Duration,
        idle_timeout: Duration,
        on_header_timeout: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        ClientIo {
            inner,
            state,
            header_timeout,
            idle_timeout,
            sleep: Box::pin(tokio::time::sleep(header_timeout)),
            // A new connection must send its first head in time too.
            timer: Timer::Header,
            h2: None,
            scan: HeadScanner::default(),
            on_header_timeout,
        }
    }

    fn arm(&mut self, timer: Timer, after: Duration) {
        if self.timer != timer {
            self.timer = timer;
            self.sleep.as_mut().reset(Instant::now() + after);
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.h2 == Some(true) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if got.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if this.h2.is_none() {
                    let is_h2 = b"PRI * HTTP/2.0".starts_with(&got[..got.len().min(14)]);
                    this.h2 = Some(is_h2);
                    if is_h2 {
                        this.timer = Timer::Off;
                        return Poll::Ready(Ok(()));
                    }
                }
                if this.state.active.load(SeqCst) == 0 {
                    if !this.state.head_pending.swap(true, SeqCst) {
                        this.scan = HeadScanner::default();
                        this.arm(Timer::Header, this.header_timeout);
                    }
                    if this.scan.feed(got) {
                        this.state.ambiguous.store(true, SeqCst);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let want = if this.state.active.load(SeqCst) > 0 {
                    Timer::Off
                } else if this.h2.is_none() || this.state.head_pending.load(SeqCst) {
                    Timer::Header
                } else {
                    Timer::Idle
                };
                match want {
                    Timer::Off => {
                        this.timer = Timer::Off;
                        return Poll::Pending;
                    }
                    Timer::Header => this.arm(Timer::Header, this.header_timeout),
                    Timer::Idle => this.arm(Timer::Idle, this.idle_timeout),
                }
                ready!(this.sleep.as_mut().poll(cx));
                match this.timer {
                    Timer::Header => {
                        (this.on_header_timeout)();
                        // Best effort: 200 bytes always fit an empty socket
                        // buffer; if not, the close alone still ends it.
                        let _ = Pin::new(&mut this.inner).poll_write(cx, RESPONSE_408);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "request head timed out",
                        )))
                    }
                    // EOF between requests: hyper closes the connection quietly.
                    Timer::Idle => Poll::Ready(Ok(())),
                    Timer::Off => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Finds `Content-Length` and `Transfer-Encoding` in one request head, fed
/// in arbitrary pieces. Only the first bytes of each line are kept.
#[derive(Debug, Default)]
pub(crate) struct HeadScanner {
    line: [u8; 20],
    len: usize,
    seen_request_line: bool,
    cl: bool,
    te: bool,
    done: bool,
}

impl HeadScanner {
    /// Feeds bytes; returns true once the head is known to be ambiguous.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if self.done {
                break;
            }
            if b == b'\n' {
                let n = self.len.min(self.line.len());
                let mut line = &self.line[..n];
                if line.last() == Some(&b'\r') {
                    line = &line[..n - 1];
                }
                if self.len <= 1 && line.is_empty() {
                    // Empty line: end of head (or a stray CRLF before it).
                    if self.seen_request_line {
                        self.done = true;
                    }
                } else if !self.seen_request_line {
                    self.seen_request_line = true;
                } else if line.starts_with(b"content-length") {
                    self.cl = true;
                } else if line.starts_with(b"transfer-encoding") {
                    self.te = true;
                }
                self.len = 0;
            } else {
                if self.len < self.line.len() {
                    self.line[self.len] = b.to_ascii_lowercase();
                }
                self.len += 1;
            }
        }
        self.cl && self.te
    }
}

#[cfg(test)]
mod tests {
    use super::HeadScanner;

    #[test]
    fn flags_cl_plus_te_even_split_across_reads() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        for split in 1..head.len() {
            let mut s = HeadScanner::default();
            let a = s.feed(&head[..split]);
            let b = s.feed(&head[split..]);
            assert!(a || b, "split at {split}");
        }
    }

    #[test]
    fn clean_heads_and_bodies_pass() {
        let mut s = HeadScanner::default();
        assert!(!s.feed(
            b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\ntransfer-encoding: in the body\r\n"
        ));
        let mut s = HeadScanner::default();
        assert!(!s.feed(b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\n\r\n0\r\n\r\n"));
    }
}
