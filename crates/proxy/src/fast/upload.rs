//! A request body streamed to the target on the fast path: a
//! `Content-Length` above [`h1::MAX_SMALL_BODY`] or a chunked one.
//!
//! The body is pumped from the client to the target while the exchange
//! waits for the target's answer ([`read_up`]) and while it writes the
//! answer to the client ([`write_down`]): the client is read only
//! after the target took what came before (back-pressure both ways, one
//! buffer per direction), and the target may answer at any time, even
//! before the body is whole, as on hyper's path; the rest of the body
//! then follows its answer ([`finish`]). A target that stops reading (it
//! answered early and closed, say) ends the upload; the answer is still
//! relayed, and neither connection is used again, since the rest of the
//! body was never read.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{pool, ClientStream};
use crate::h1::{Decoder, Framing};
use crate::upstream::Upstream;

const CLOSED_MID_BODY: &str = "the client closed in the middle of the body";

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Going,
    /// The whole body went to the target.
    Whole,
    /// The target stopped taking it.
    Cut,
    /// The client's body broke (bad chunking, or it closed mid-body): a
    /// 400 if no answer has begun.
    Broke(&'static str),
}

pub(super) struct Upload {
    /// The client's bytes; the body goes on from `at`, and what follows
    /// it (a pipelined request) stays.
    pub buf: Vec<u8>,
    pub at: usize,
    dec: Decoder,
    /// Bytes for the target (a chunked body, re-framed), sent up to
    /// `sent`; a length-delimited body goes from `buf` as it is.
    send: Vec<u8>,
    sent: usize,
    /// Written since the last flush.
    dirty: bool,
    pub state: State,
}

/// The client's buffer while a body streams: 64 KiB reads (the first
/// version's 16 KiB reads and copy trailed hyper's path, 0.89×), and
/// `pool` still takes a buffer this size back.
const STREAM_BUF: usize = 64 * 1024;

impl Upload {
    pub(super) fn new(mut buf: Vec<u8>, at: usize, framing: Framing) -> Upload {
        if buf.capacity() < STREAM_BUF {
            buf.reserve_exact(STREAM_BUF - buf.len());
        }
        Upload {
            buf,
            at,
            dec: Decoder::new(framing),
            send: pool::take(),
            sent: 0,
            dirty: false,
            state: State::Going,
        }
    }

    /// Reads the body's first bytes into `out`, after the head, so that
    /// they go up in the head's write, and a body broken from its start
    /// (or never sent) reaches no target at all.
    pub(super) async fn prime<S: ClientStream>(
        &mut self,
        io: &mut S,
        out: &mut Vec<u8>,
    ) -> Result<(), &'static str> {
        let head = out.len();
        loop {
            let n = self
                .dec
                .decode(&self.buf[self.at..], out)
                .map_err(|e| e.0)?;
            self.at += n;
            if out.len() > head || self.dec.is_done() {
                return Ok(());
            }
            self.buf.clear();
            self.at = 0;
            pool::room(&mut self.buf);
            match io.read_buf(&mut self.buf).await {
                Ok(n) if n > 0 => {}
                _ => return Err(CLOSED_MID_BODY),
            }
        }
    }

    /// Whether the client's body was read to its end (what follows in
    /// `buf` is the next request).
    pub(super) fn read_whole(&self) -> bool {
        self.dec.is_done()
    }

    /// Moves the body on as far as both sides allow; `Ready` once it is no
    /// longer [`State::Going`].
    fn poll_pump<S: ClientStream>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        up: &mut Upstream,
    ) -> Poll<()> {
        loop {
            if self.state != State::Going {
                return Poll::Ready(());
            }
            if self.sent < self.send.len() {
                match pin!(up.write(&self.send[self.sent..])).poll(cx) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        self.sent += n;
                        self.dirty = true;
                    }
                    Poll::Ready(_) => self.state = State::Cut,
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            let avail = self.buf.len() - self.at;
            if let Some(n) = self.dec.passthrough(avail).filter(|&n| n > 0) {
                match pin!(up.write(&self.buf[self.at..self.at + n])).poll(cx) {
                    Poll::Ready(Ok(k)) if k > 0 => {
                        self.at += k;
                        self.dec.advance(k);
                        self.dirty = true;
                    }
                    Poll::Ready(_) => self.state = State::Cut,
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            if self.dirty {
                // TLS holds records back until flushed; TCP returns at once.
                match pin!(up.flush()).poll(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => {
                        self.state = State::Cut;
                        continue;
                    }
                    Poll::Pending => return Poll::Pending,
                }
                self.dirty = false;
                self.send.clear();
                self.sent = 0;
            }
            if self.dec.is_done() {
                self.state = State::Whole;
                continue;
            }
            if self.at < self.buf.len() {
                match self.dec.decode(&self.buf[self.at..], &mut self.send) {
                    Ok(n) => self.at += n,
                    Err(e) => self.state = State::Broke(e.0),
                }
                continue;
            }
            self.buf.clear();
            self.at = 0;
            pool::room(&mut self.buf);
            match pin!(io.read_buf(&mut self.buf)).poll(cx) {
                Poll::Ready(Ok(n)) if n > 0 => {}
                Poll::Ready(_) => self.state = State::Broke(CLOSED_MID_BODY),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        pool::give(std::mem::take(&mut self.send));
    }
}

/// Why [`read_up`] returned without the target's bytes.
pub(super) enum Stop {
    /// The target's connection failed.
    Io,
    /// The client's body broke.
    Client(&'static str),
}

/// Reads the target's next bytes into `ubuf` (`Ok(0)`: it closed), moving
/// the request body on meanwhile.
pub(super) async fn read_up<S: ClientStream>(
    io: &mut S,
    up: &mut Upstream,
    ubuf: &mut Vec<u8>,
    upload: Option<&mut Upload>,
) -> Result<usize, Stop> {
    let Some(u) = upload.filter(|u| u.state == State::Going) else {
        pool::room(ubuf);
        return up.read_buf(ubuf).await.map_err(|_| Stop::Io);
    };
    std::future::poll_fn(|cx| {
        if u.poll_pump(cx, io, up).is_ready() {
            if let State::Broke(why) = u.state {
                return Poll::Ready(Err(Stop::Client(why)));
            }
        }
        pool::room(ubuf);
        pin!(up.read_buf(ubuf))
            .poll(cx)
            .map(|r: io::Result<usize>| r.map_err(|_| Stop::Io))
    })
    .await
}

/// Writes `out` to the client (and flushes), moving the request body on
/// meanwhile: a client that sends its whole body before it reads must
/// not stall an answer that is sent while the target still reads.
pub(super) async fn write_down<S: ClientStream>(
    io: &mut S,
    up: &mut Upstream,
    out: &[u8],
    upload: Option<&mut Upload>,
) -> bool {
    let Some(u) = upload.filter(|u| u.state == State::Going) else {
        return io.write_all(out).await.is_ok() && io.flush().await.is_ok();
    };
    let mut at = 0;
    std::future::poll_fn(|cx| loop {
        // Its progress is its own; a broken body ends the answer too.
        let _ = u.poll_pump(cx, io, up);
        if let State::Broke(_) = u.state {
            return Poll::Ready(false);
        }
        if at == out.len() {
            return pin!(io.flush()).poll(cx).map(|r| r.is_ok());
        }
        match pin!(io.write(&out[at..])).poll(cx) {
            Poll::Ready(Ok(n)) if n > 0 => at += n,
            Poll::Ready(_) => return Poll::Ready(false),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// Sends the rest of the body after the answer ended; done once the upload
/// is no longer [`State::Going`].
pub(super) async fn finish<S: ClientStream>(io: &mut S, up: &mut Upstream, u: &mut Upload) {
    std::future::poll_fn(|cx| u.poll_pump(cx, io, up)).await
}
