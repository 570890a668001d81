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
    /// The server is handing over or stopping: each HTTP/1 response says
    /// `Connection: close`, so a keep-alive client reconnects (to the
    /// next daemon) instead of meeting a closed socket.
    pub closing: AtomicBool,
    /// The connection speaks HTTP/2 (GOAWAY ends it cleanly at once).
    pub h2: AtomicBool,
}

impl ConnState {
    /// Called by the service when hyper hands it a request.
    pub(crate) fn request_started(&self) -> bool {
        self.active.fetch_add(1, SeqCst);
        self.head_pending.store(false, SeqCst);
        self.ambiguous.swap(false, SeqCst)
    }
}

pub(crate) const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 52\r\n\r\nhandoff: the request head did not arrive in time\r\n\r\n";

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
                    this.state.h2.store(is_h2, SeqCst);
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

    mod properties {
        use proptest::prelude::*;

        use super::HeadScanner;

        /// Feeds `bytes` cut at `cuts` (positions, any order, any count);
        /// true if any feed flagged the head.
        fn feed_split(bytes: &[u8], cuts: &[usize]) -> bool {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            at.push(0);
            at.push(bytes.len());
            at.sort_unstable();
            let mut s = HeadScanner::default();
            let mut flagged = false;
            for w in at.windows(2) {
                flagged |= s.feed(&bytes[w[0]..w[1]]);
            }
            flagged
        }

        /// `name` in the case `upper` says, letter by letter.
        fn cased(name: &str, upper: &[bool]) -> String {
            name.chars()
                .zip(upper.iter().cycle())
                .map(|(c, &u)| if u { c.to_ascii_uppercase() } else { c })
                .collect()
        }

        /// A header that is neither Content-Length nor Transfer-Encoding.
        fn other_header() -> impl Strategy<Value = String> {
            ("X-[A-Za-z-]{0,12}|Host|Accept|Content-Type", "[ -~]{0,20}")
                .prop_map(|(n, v)| format!("{n}: {v}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any bytes, cut anywhere: no panic, and the verdict does not
            /// depend on where the reads were cut.
            #[test]
            fn arbitrary_bytes_split_anywhere_never_panic(
                bytes in prop::collection::vec(any::<u8>(), 0..600),
                cuts in prop::collection::vec(any::<usize>(), 0..8),
            ) {
                let whole = HeadScanner::default().feed(&bytes);
                prop_assert_eq!(feed_split(&bytes, &cuts), whole);
            }

            /// A head with both Content-Length and Transfer-Encoding, in
            /// any case, in any order among other headers, with CRLF or
            /// bare LF, and cut anywhere, is always flagged.
            #[test]
            fn cl_plus_te_is_always_flagged(
                method in "GET|POST|PUT|PATCH|DELETE",
                others in prop::collection::vec(other_header(), 0..6),
                cl_at in any::<usize>(),
                te_at in any::<usize>(),
                cl_case in prop::collection::vec(any::<bool>(), 1..16),
                te_case in prop::collection::vec(any::<bool>(), 1..18),
                cl_value in "[0-9]{1,5}",
                te_value in "chunked|gzip, chunked|identity",
                crlf in any::<bool>(),
                body in prop::collection::vec(any::<u8>(), 0..64),
                cuts in prop::collection::vec(any::<usize>(), 0..8),
            ) {
                let mut headers = others;
                let cl = format!("{}: {cl_value}", cased("content-length", &cl_case));
                headers.insert(cl_at % (headers.len() + 1), cl);
                let te = format!("{}: {te_value}", cased("transfer-encoding", &te_case));
                headers.insert(te_at % (headers.len() + 1), te);
                let eol = if crlf { "\r\n" } else { "\n" };
                let mut head = format!("{method} /x HTTP/1.1{eol}");
                for h in &headers {
                    head.push_str(h);
                    head.push_str(eol);
                }
                head.push_str(eol);
                let mut bytes = head.into_bytes();
                bytes.extend_from_slice(&body);
                prop_assert!(feed_split(&bytes, &cuts), "not flagged: {:?}", String::from_utf8_lossy(&bytes));
            }

            /// Only one of them (and whatever the body says) is not flagged.
            #[test]
            fn one_framing_header_alone_is_not_flagged(
                others in prop::collection::vec(other_header(), 0..6),
                at in any::<usize>(),
                te in any::<bool>(),
                body in "[ -~\r\n]{0,80}",
                cuts in prop::collection::vec(any::<usize>(), 0..8),
            ) {
                let mut headers = others;
                let framing = if te { "Transfer-Encoding: chunked" } else { "Content-Length: 3" };
                headers.insert(at % (headers.len() + 1), framing.to_string());
                let mut head = "POST / HTTP/1.1\r\n".to_string();
                for h in &headers {
                    head.push_str(h);
                    head.push_str("\r\n");
                }
                head.push_str("\r\n");
                head.push_str(&body);
                prop_assert!(!feed_split(head.as_bytes(), &cuts), "flagged: {:?}", head);
            }
        }
    }
}
