//! One request's exchange with a target on the fast path: pick, connect
//! (or take a pooled connection of this worker), write the request (a
//! streamed body goes on while the answer is awaited, [`Upload`]), read
//! the response head, relay head and body to the client at the client's
//! pace, and put the upstream connection back when it can be reused.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;

use tokio::time::Instant;

use super::alarm::{self, Alarm, Woke};
use super::upload::{finish, read_up, write_down, State, Stop, Upload};
use super::{pool, write_answer, ClientStream};
use crate::error::Failure;
use crate::forward::{failed, within_connect_timeout, MAX_ATTEMPTS};
use crate::h1::{self, Decoder, Extra, Framing, RespParse};
use crate::service::ServiceProxy;
use crate::target::Target;
use crate::upstream::Upstream;

/// An upstream response head larger than this is refused (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why an exchange with a target gave no response.
enum Missed {
    /// Closed (or reset) before any byte of a response: the request may be
    /// sent again if it is idempotent.
    Closed,
    /// Bytes arrived that are not a response to it.
    Bad(&'static str),
    /// The client's streamed body broke.
    Client(&'static str),
}

/// Forwards one request (its upstream head in `out`, and the rest of its
/// body in `upload` when streamed) and relays the response to the client.
/// Returns whether the client connection can carry another request.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward<S: ClientStream>(
    io: &mut S,
    svc: &Arc<ServiceProxy>,
    req: &h1::Req,
    out: &mut Vec<u8>,
    extra: &Extra,
    mut upload: Option<&mut Upload>,
    worker: usize,
    mut alarm: Alarm<'_>,
) -> bool {
    let started = std::time::Instant::now();
    let mut tried = [0u64; MAX_ATTEMPTS];
    let mut last = Failure::NoHealthyTarget;
    let mut resent = false;
    if let Some(u) = upload.as_deref_mut() {
        let primed = tokio::time::timeout(svc.settings.response_timeout, u.prime(io, out)).await;
        let missed = match primed {
            Ok(Ok(())) => None,
            Ok(Err(why)) => {
                tracing::debug!(service = %svc.name, why, "request body broken");
                Some(Failure::BadRequest)
            }
            Err(_) => Some(Failure::Timeout),
        };
        if let Some(f) = missed {
            return answer(io, svc, f, out, extra, Some(u)).await;
        }
    }
    // After `prime`, which may wait: targets are picked from the table of
    // now.
    let table = svc.table_guard();
    let mut ubuf = pool::take();
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            svc.stats.retries.fetch_add(1, Relaxed);
        }
        let Some(claim) = table.pick(svc.settings.balance, &svc.rr, &tried[..attempt]) else {
            break;
        };
        tried[attempt] = claim.0.id;
        let t = claim.0.clone();
        // Biased: a pooled connection is taken at once, and waits on
        // nothing (`abandoned` registers a waiter when polled).
        let connected = tokio::select! {
            biased;
            c = connection(svc, &t, worker) => c,
            _ = t.abandoned() => Err(()),
        };
        let Ok((mut up, reused)) = connected else {
            last = Failure::Connect;
            continue;
        };
        let due = Instant::now() + svc.settings.response_timeout;
        let got = {
            let mut ex = std::pin::pin!(exchange(
                io,
                &mut up,
                out,
                &mut ubuf,
                req.head_method,
                extra,
                upload.as_deref_mut()
            ));
            loop {
                // Its host was lost: no answer can come. Seen within a
                // tick: a waiter per request on the target's `abandoned`
                // cost as much as the timer did.
                if t.is_lost() {
                    break None;
                }
                match alarm::wait(alarm.as_mut(), due, ex.as_mut()).await {
                    Woke::Done(r) => break Some(Ok(r)),
                    // A host lost after the last tick (or with a
                    // `response_timeout` shorter than a tick): a lost
                    // host, not a slow target.
                    Woke::Due if t.is_lost() => break None,
                    Woke::Due => break Some(Err(alarm::Late)),
                    Woke::Tick => {}
                }
            }
        };
        match got {
            Some(Ok(Ok(resp))) => {
                let kept = relay(
                    io, up, svc, &t, resp, out, &mut ubuf, upload, worker, started,
                )
                .await;
                drop(claim);
                pool::give(ubuf);
                return kept && !extra.close;
            }
            Some(Ok(Err(Missed::Client(why)))) => {
                tracing::debug!(service = %svc.name, why, "request body broken");
                last = Failure::BadRequest;
                break;
            }
            Some(Err(_)) => {
                last = Failure::Timeout;
                // A body still coming is the client's slowness, not the
                // target's: slow uploads must not eject healthy targets.
                if upload.as_ref().is_none_or(|u| u.state != State::Going) {
                    svc.passive_failure(&t);
                }
                break;
            }
            Some(Ok(Err(Missed::Bad(why)))) => {
                tracing::debug!(service = %svc.name, target = %t.name, why, "bad response from target");
                last = Failure::Upstream;
                svc.passive_failure(&t);
                break;
            }
            None | Some(Ok(Err(Missed::Closed))) => {
                last = Failure::Upstream;
                // A pooled connection the target closed as we wrote is the
                // keep-alive race, not a sign of a bad target.
                if !reused || got.is_none() {
                    svc.passive_failure(&t);
                }
                if !req.idempotent || resent {
                    break;
                }
                resent = true;
            }
        }
    }
    pool::give(ubuf);
    answer(io, svc, last, out, extra, upload).await
}

/// Answers a request no target answered. Returns whether the client
/// connection can carry another request.
pub(super) async fn answer<S: ClientStream>(
    io: &mut S,
    svc: &ServiceProxy,
    last: Failure,
    out: &mut Vec<u8>,
    extra: &Extra,
    upload: Option<&mut Upload>,
) -> bool {
    let why = failed(svc, last);
    // A body not read to its end hides where the next request starts.
    let close = extra.close || upload.is_some_and(|u| !u.read_whole());
    out.clear();
    write_answer(out, last.status(), last.code(), &why, close, extra.hsts);
    tracing::debug!(service = %svc.name, status = last.status().as_u16(), why, "answered by proxy");
    io.write_all(out).await.is_ok() && io.flush().await.is_ok() && !close
}

/// A pooled connection of this worker, or a new one (`true`: reused).
async fn connection(
    svc: &ServiceProxy,
    t: &Arc<Target>,
    worker: usize,
) -> Result<(Upstream, bool), ()> {
    if let Some(c) = t.checkout_raw(worker) {
        return Ok((c, true));
    }
    let dial = crate::upstream::dial(t.addr, svc.upstream.as_deref());
    Ok((within_connect_timeout(svc, t, dial).await?, false))
}

/// Writes the request head and reads the response head (interim 1xx heads
/// skipped), sending a streamed body meanwhile. On success `ubuf` holds the
/// head and the first body bytes and `out` the head for the client.
#[allow(clippy::too_many_arguments)]
async fn exchange<S: ClientStream>(
    io: &mut S,
    up: &mut Upstream,
    out: &mut Vec<u8>,
    ubuf: &mut Vec<u8>,
    head_method: bool,
    extra: &Extra,
    mut upload: Option<&mut Upload>,
) -> Result<h1::Resp, Missed> {
    if up.write_all(out).await.is_err() || up.flush().await.is_err() {
        return Err(Missed::Closed);
    }
    ubuf.clear();
    let mut answered = false;
    loop {
        match read_up(io, up, ubuf, upload.as_deref_mut()).await {
            Err(Stop::Client(why)) => return Err(Missed::Client(why)),
            Ok(0) | Err(Stop::Io) if !answered && ubuf.is_empty() => return Err(Missed::Closed),
            Ok(0) | Err(Stop::Io) => {
                return Err(Missed::Bad("closed in the middle of a response head"))
            }
            Ok(_) => answered = true,
        }
        // A target that stopped taking the body: the client's connection
        // ends after this answer, since the rest is never read, and the
        // client is told so in this head. One that answers while it still
        // reads (an echo; nginx's `return`, which drops the rest) gets the
        // rest after its answer, in `relay`.
        let cut = upload.as_ref().is_some_and(|u| u.state == State::Cut);
        let extra = &Extra {
            close: extra.close || cut,
            hsts: extra.hsts,
        };
        loop {
            match h1::parse_response(ubuf, head_method, extra, out) {
                RespParse::Ready(r) => return Ok(r),
                RespParse::Interim(n) => {
                    ubuf.drain(..n);
                }
                RespParse::Bad(why) => return Err(Missed::Bad(why)),
                RespParse::Partial if ubuf.len() > MAX_RESPONSE_HEAD => {
                    return Err(Missed::Bad("response head too large"))
                }
                RespParse::Partial => break,
            }
        }
    }
}

/// Relays the response whose head is in `out` and first bytes in `ubuf`.
/// The upstream is read only after the client took what came before.
#[allow(clippy::too_many_arguments)]
async fn relay<S: ClientStream>(
    io: &mut S,
    mut up: Upstream,
    svc: &ServiceProxy,
    t: &Arc<Target>,
    resp: h1::Resp,
    out: &mut Vec<u8>,
    ubuf: &mut Vec<u8>,
    mut upload: Option<&mut Upload>,
    worker: usize,
    started: std::time::Instant,
) -> bool {
    // A body that stops coming while the answer waits for it.
    let stalled = svc.settings.response_timeout;
    if resp.status >= 500 {
        svc.passive_failure(t);
    } else {
        t.passive_ok();
    }
    let mut dec = Decoder::new(resp.framing);
    let mut reusable = resp.reusable;
    let mut at = resp.head_len;
    let mut ok = true;
    // Until a byte of the body decodes, a broken body sends nothing (the
    // client sees the connection close, as with hyper, which writes a
    // head only with the body's first bytes).
    let head_only = out.len();
    let mut sent = false;
    loop {
        match dec.decode(&ubuf[at..], out) {
            Ok(n) => {
                if dec.is_done() && at + n < ubuf.len() {
                    // Bytes after the body: not a connection to trust again.
                    reusable = false;
                }
                at += n;
            }
            Err(e) => {
                tracing::debug!(target = %t.name, error = %e, "response body broken");
                ok = false;
                break;
            }
        }
        if dec.is_done() {
            break;
        }
        if (out.len() >= 16 * 1024 || at == ubuf.len()) && (sent || out.len() > head_only) {
            if !write_down(io, &mut up, out, upload.as_deref_mut()).await {
                t.stats.record(resp.status, started.elapsed());
                return false;
            }
            sent = true;
            out.clear();
        }
        if at == ubuf.len() {
            ubuf.clear();
            at = 0;
            pool::room(ubuf);
            // As hyper does: the head goes out with the body's first bytes,
            // or alone once the body must be waited for — so a body already
            // known to be broken sends nothing at all.
            let read = match read_up(io, &mut up, ubuf, upload.as_deref_mut()).now_or_never() {
                Some(r) => r,
                None => {
                    if !sent && !out.is_empty() {
                        if !write_down(io, &mut up, out, upload.as_deref_mut()).await {
                            t.stats.record(resp.status, started.elapsed());
                            return false;
                        }
                        sent = true;
                        out.clear();
                    }
                    let going = upload.as_ref().is_some_and(|u| u.state == State::Going);
                    let read = read_up(io, &mut up, ubuf, upload.as_deref_mut());
                    if going {
                        tokio::time::timeout(stalled, read)
                            .await
                            .unwrap_or(Err(Stop::Client("the body stopped coming")))
                    } else {
                        read.await
                    }
                }
            };
            match read {
                Ok(0) => {
                    if let Err(e) = dec.eof(out) {
                        tracing::debug!(target = %t.name, error = %e, "response body cut");
                        ok = false;
                    }
                    reusable = false;
                    break;
                }
                Ok(_) => {}
                Err(Stop::Io) => {
                    tracing::debug!(target = %t.name, "response body cut");
                    ok = false;
                    break;
                }
                Err(Stop::Client(why)) => {
                    tracing::debug!(target = %t.name, why, "request body broken mid-response");
                    ok = false;
                    break;
                }
            }
        }
    }
    if !ok && !sent && out.len() == head_only {
        out.clear();
    }
    let wrote = out.is_empty() || write_down(io, &mut up, out, upload.as_deref_mut()).await;
    t.stats.record(resp.status, started.elapsed());
    // An answer that ended before the whole body went up: the target may
    // still be reading, so the rest goes on to it while it comes. A body
    // sent whole leaves both connections fit for the next request; one
    // that is not (the target stopped reading, the client stopped sending)
    // ends both, the client's without a word: it is still sending and
    // cannot have sent another request yet.
    if let Some(u) = upload.as_deref_mut().filter(|u| u.state == State::Going) {
        if ok && wrote {
            let _ = tokio::time::timeout(stalled, finish(io, &mut up, u)).await;
        }
    }
    let whole = upload.is_none_or(|u| u.state == State::Whole);
    if ok && whole && reusable && dec.is_done() && resp.framing != Framing::Close {
        t.checkin_raw(worker, up);
    }
    ok && wrote && whole
}
