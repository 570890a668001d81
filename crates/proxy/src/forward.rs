//! The request path: pick a target, relay the request, relay the response.
//!
//! Per request: one routing-table load (no lock), one target pick, one pooled
//! upstream connection (or a new one), headers rewritten in place. Failures
//! are classified ([`Failure`]) to decide the status and whether another
//! target may be tried:
//!
//! - connect failures are always retried elsewhere (nothing was sent);
//! - a request hyper never dispatched (connection not ready) is retried;
//! - an idempotent, body-less request that failed before any response byte
//!   is retried once (the stale keep-alive race, or an instance that died
//!   mid-request);
//! - nothing is retried once response bytes have begun.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::body::{Completion, ProxyBody, ReqBody};
use crate::error::Failure;
use crate::io::ConnState;
use crate::service::ServiceProxy;
use crate::target::{InFlight, Target};

/// Per client connection, shared by its requests.
pub(crate) struct ClientConn {
    pub peer_ip: HeaderValue,
    pub state: Arc<ConnState>,
    pub worker: usize,
    /// Held by tunnels too: a stopping worker waits for them (up to the
    /// shutdown timeout) instead of dropping them with its runtime.
    pub alive: Option<tokio::sync::mpsc::Sender<()>>,
    /// The client came over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl ClientConn {
    pub(crate) fn new(
        peer: SocketAddr,
        state: Arc<ConnState>,
        worker: usize,
        alive: Option<tokio::sync::mpsc::Sender<()>>,
        tls: bool,
    ) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        ClientConn {
            peer_ip: HeaderValue::from_str(&ip).expect("an IP is a valid header value"),
            state,
            worker,
            alive,
            tls,
        }
    }
}

/// At most this many targets are tried for one request.
pub(crate) const MAX_ATTEMPTS: usize = 3;

pub(crate) async fn handle(
    svc: Arc<ServiceProxy>,
    conn: Arc<ClientConn>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    if conn.state.request_started() {
        svc.stats.bad_request.fetch_add(1, Relaxed);
        let mut r = answer(
            &svc,
            Failure::BadRequest,
            "request has both Content-Length and Transfer-Encoding",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(done_without_target(r, &conn));
    }
    let client_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    rewrite_request(&mut parts, &conn, client_upgrade.is_some());
    let replay = (body_is_empty(&body) && is_idempotent(&parts.method)).then(|| head_copy(&parts));
    let mut body = Some(ReqBody::Incoming(body));

    let table = svc.table_guard();
    let mut tried = [0u64; MAX_ATTEMPTS];
    let mut last = Failure::NoHealthyTarget;
    let mut replayed = false;
    // A new connection for the next attempt, not a pooled one.
    let mut fresh = false;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            svc.stats.retries.fetch_add(1, Relaxed);
        }
        let Some(claim) = table.pick(svc.settings.balance, &svc.rr, &tried[..attempt]) else {
            break;
        };
        tried[attempt] = claim.0.id;
        let t = claim.0.clone();
        let connected = tokio::select! {
            c = connection(&svc, &t, conn.worker, fresh) => c,
            // Its host was lost while we connected: nothing was sent.
            _ = t.abandoned() => Err(()),
        };
        let (mut sender, reused) = match connected {
            Ok(c) => c,
            Err(()) => {
                last = Failure::Connect;
                continue;
            }
        };
        let outgoing = match body.take() {
            Some(b) => Request::from_parts(take_parts(&mut parts), b),
            None => match &replay {
                Some(copy) if !replayed => {
                    replayed = true;
                    rebuild(copy)
                }
                _ => break,
            },
        };
        let sent = tokio::select! {
            r = tokio::time::timeout(
                svc.settings.response_timeout,
                sender.try_send_request(outgoing),
            ) => Some(r),
            // Its host was lost: no answer can come. Nothing of the
            // response arrived, so an idempotent request goes elsewhere.
            _ = t.abandoned() => None,
        };
        let Some(sent) = sent else {
            last = Failure::Upstream;
            if replay.is_none() || replayed {
                break;
            }
            continue;
        };
        match sent {
            Err(_) => {
                last = Failure::Timeout;
                svc.passive_failure(&t);
                break;
            }
            Ok(Ok(resp)) => {
                return Ok(relay(
                    &svc,
                    &conn,
                    claim,
                    sender,
                    resp,
                    started,
                    client_upgrade,
                ));
            }
            Ok(Err(mut e)) => {
                if let Some(unsent) = e.take_message() {
                    // hyper never dispatched it: the request is whole again,
                    // and the target is not to blame — the pooled connection
                    // closed before hyper's task saw it (as after an answer
                    // that came before the whole body went up). It may be
                    // picked again, on a new connection.
                    let (p, b) = unsent.into_parts();
                    parts = p;
                    body = Some(b);
                    last = Failure::Upstream;
                    if reused {
                        tried[attempt] = 0;
                        fresh = true;
                    }
                    continue;
                }
                let err = e.error();
                tracing::debug!(service = %svc.name, target = %t.name, error = %err, reused, "upstream request failed");
                if err.is_user() {
                    // The client's body broke (bad chunking, early EOF).
                    last = Failure::BadRequest;
                    break;
                }
                last = Failure::Upstream;
                svc.passive_failure(&t);
                // Nothing of the response arrived, so an idempotent,
                // body-less request is safe to send once more elsewhere:
                // a stale keep-alive connection (reused) or an instance
                // killed mid-request (fresh) look the same from here.
                if replay.is_none() || replayed {
                    break;
                }
            }
        }
    }
    let why = failed(&svc, last);
    Ok(done_without_target(answer(&svc, last, &why), &conn))
}

/// Counts a request that got no answer from any target, and says why.
pub(crate) fn failed(svc: &ServiceProxy, last: Failure) -> String {
    let stat = match last {
        Failure::NoHealthyTarget => &svc.stats.no_healthy_target,
        Failure::Connect => &svc.stats.connect_failed,
        Failure::Timeout => &svc.stats.upstream_timeout,
        Failure::Upstream => &svc.stats.upstream_error,
        Failure::BadRequest => &svc.stats.bad_request,
    };
    stat.fetch_add(1, Relaxed);
    match last {
        Failure::NoHealthyTarget => format!("service '{}' has no healthy target", svc.name),
        Failure::Connect => format!("could not connect to any target of service '{}'", svc.name),
        Failure::Timeout => format!(
            "target of service '{}' did not answer within {}",
            svc.name,
            handoff_core::duration::format(svc.settings.response_timeout)
        ),
        Failure::Upstream => format!(
            "target of service '{}' closed the connection without answering",
            svc.name
        ),
        Failure::BadRequest => "malformed request body".to_string(),
    }
}

/// The body of an answer handoff gives itself.
pub(crate) fn answer_text(status: StatusCode, why: &str) -> String {
    format!(
        "{} {}: {why}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

/// Takes a pooled connection (unless `fresh`) or opens one. `Err` means
/// connect failed; the failure is already counted and reported to passive
/// health.
async fn connection(
    svc: &ServiceProxy,
    t: &Arc<Target>,
    worker: usize,
    fresh: bool,
) -> Result<(SendRequest<ReqBody>, bool), ()> {
    if !fresh {
        if let Some(c) = t.checkout(worker) {
            return Ok((c, true));
        }
    }
    let connect = async {
        let s = crate::upstream::dial(t.addr, svc.upstream.as_deref()).await?;
        let (send, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, ReqBody>(TokioIo::new(s))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok::<_, std::io::Error>(send)
    };
    Ok((within_connect_timeout(svc, t, connect).await?, false))
}

/// Runs a connect attempt to `t` under `connect_timeout`. A failure is
/// counted, logged and reported to passive health here, for both paths.
pub(crate) async fn within_connect_timeout<C>(
    svc: &ServiceProxy,
    t: &Target,
    connect: impl std::future::Future<Output = std::io::Result<C>>,
) -> Result<C, ()> {
    match tokio::time::timeout(svc.settings.connect_timeout, connect).await {
        Ok(Ok(c)) => Ok(c),
        res => {
            t.stats.connect_errors.fetch_add(1, Relaxed);
            let why = match res {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            tracing::debug!(service = %svc.name, target = %t.name, addr = %t.addr, error = %why, "connect failed");
            svc.passive_failure(t);
            Err(())
        }
    }
}

fn relay(
    svc: &Arc<ServiceProxy>,
    conn: &Arc<ClientConn>,
    claim: InFlight,
    sender: SendRequest<ReqBody>,
    mut resp: Response<Incoming>,
    started: Instant,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<ProxyBody> {
    let t = &claim.0;
    let status = resp.status();
    if status.is_server_error() {
        svc.passive_failure(t);
    } else {
        t.passive_ok();
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            t.stats.record(101, started.elapsed());
            conn.state
                .active
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            let alive = conn.alive.clone();
            tokio::spawn(async move {
                tunnel(claim, client, upstream).await;
                drop(alive);
            });
            let (parts, _) = resp.into_parts();
            return Response::from_parts(parts, ProxyBody::Full(None));
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    parts.version = Version::HTTP_11;
    let done = Completion {
        claim,
        started,
        status: status.as_u16(),
        conn: Some(sender),
        worker: conn.worker,
        client: conn.state.clone(),
    };
    Response::from_parts(
        parts,
        ProxyBody::Relayed {
            inner: body,
            done: Some(done),
        },
    )
}

/// Relays an upgraded connection (WebSocket) both ways. The in-flight claim
/// is held for the tunnel's life, so a drain waits for it, and a drain that
/// times out cuts it.
async fn tunnel(
    claim: InFlight,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    let (c, u) = match tokio::try_join!(client, upstream) {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut c = TokioIo::new(c);
    let mut u = TokioIo::new(u);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
            if let Err(e) = r { tracing::debug!(error = %e, "tunnel closed with error"); }
        }
        _ = claim.0.cut() => tracing::info!(target = %claim.0.name, "tunnel cut: drain timed out"),
    }
}

/// An answer handoff gives itself: a short, clear, one-line body.
fn answer(svc: &ServiceProxy, f: Failure, why: &str) -> Response<ProxyBody> {
    let status = f.status();
    let mut r = Response::new(ProxyBody::text(answer_text(status, why)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        HeaderName::from_static("x-handoff-error"),
        HeaderValue::from_static(f.code()),
    );
    tracing::debug!(service = %svc.name, status = status.as_u16(), why, "answered by proxy");
    r
}

/// No service of this listen address takes the request's host and path: a
/// 404 that says which, without touching any service's figures.
pub(crate) fn unrouted<B>(conn: &ClientConn, req: &Request<B>) -> Response<ProxyBody> {
    conn.state.request_started();
    let host = req
        .uri()
        .host()
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
        .unwrap_or("(none)");
    let mut r = Response::new(ProxyBody::text(format!(
        "404 Not Found: no service here for host {host} and path {}\n",
        req.uri().path()
    )));
    *r.status_mut() = StatusCode::NOT_FOUND;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        HeaderName::from_static("x-handoff-error"),
        HeaderValue::from_static("no_route"),
    );
    done_without_target(r, conn)
}

pub(crate) fn done_without_target(
    r: Response<ProxyBody>,
    conn: &ClientConn,
) -> Response<ProxyBody> {
    conn.state
        .active
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    r
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE)
}

fn body_is_empty(b: &Incoming) -> bool {
    http_body::Body::is_end_stream(b)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Just enough of a request to send it again: it had no body.
struct HeadCopy {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

fn head_copy(p: &Parts) -> HeadCopy {
    HeadCopy {
        method: p.method.clone(),
        uri: p.uri.clone(),
        headers: p.headers.clone(),
    }
}

fn rebuild(c: &HeadCopy) -> Request<ReqBody> {
    let mut r = Request::new(ReqBody::Empty);
    *r.method_mut() = c.method.clone();
    *r.uri_mut() = c.uri.clone();
    *r.headers_mut() = c.headers.clone();
    r
}

/// The parts to send now; `parts` itself is left as a placeholder because a
/// retry after "not dispatched" gets the originals back from hyper.
fn take_parts(parts: &mut Parts) -> Parts {
    let placeholder = Request::new(()).into_parts().0;
    std::mem::replace(parts, placeholder)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and any named in `Connection`.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = h.get(header::CONNECTION) {
        if let Ok(list) = conn.to_str() {
            let named: Vec<HeaderName> = list
                .split(',')
                .map(str::trim)
                .filter(|n| !(keep_upgrade && n.eq_ignore_ascii_case("upgrade")))
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect();
            for n in named {
                h.remove(n);
            }
        }
    }
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    for n in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

fn rewrite_request(p: &mut Parts, conn: &ClientConn, upgrade: bool) {
    let peer_ip = &conn.peer_ip;
    strip_hop_by_hop(&mut p.headers, upgrade);
    if upgrade {
        p.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // HTTP/2 (and absolute-form) requests carry the authority in the URI;
    // HTTP/1.1 upstreams want it in Host, and the path in origin form.
    if let Some(auth) = p.uri.authority() {
        if !p.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                p.headers.insert(header::HOST, v);
            }
        }
    }
    if p.uri.scheme().is_some() || p.uri.authority().is_some() {
        let pq = p.uri.path_and_query().map(|x| x.as_str()).unwrap_or("/");
        if let Ok(u) = pq.parse() {
            p.uri = u;
        }
    }
    p.version = Version::HTTP_11;
    let xff = match p.headers.get("x-forwarded-for") {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + peer_ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer_ip.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer_ip.clone())
        }
        None => peer_ip.clone(),
    };
    p.headers
        .insert(HeaderName::from_static("x-forwarded-for"), xff);
    // What the client spoke to us; a client's own claim is not trusted.
    p.headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    if let Some(host) = p.headers.get(header::HOST).cloned() {
        p.headers
            .insert(HeaderName::from_static("x-forwarded-host"), host);
    }
}
