//! Listeners and workers: the data plane's threads.
//!
//! Like nginx workers, each worker is one OS thread running a current-thread
//! tokio runtime with its *own* `SO_REUSEPORT` listener per service; the
//! kernel spreads new connections across them and a connection then lives on
//! one thread for good (no cross-thread wake-ups on the request path). Each
//! worker keeps its own upstream connections (see `Target::checkout`).
//!
//! Shutdown (a stop, or handing over to a new daemon): stop accepting, then
//! let every connection finish. An HTTP/1 connection answers its next
//! request with `Connection: close` (a keep-alive client then reconnects,
//! to the next daemon, instead of writing into a closed socket) and is
//! closed after [`LINGER`] if it sends nothing; HTTP/2 gets a GOAWAY at
//! once; upgraded tunnels get the shutdown timeout. Listening sockets may
//! come from a previous daemon ([`ProxyServer::start_with`]) and can be
//! handed to the next ([`ProxyServer::listeners`]): the kernel's accept
//! queue lives on, so no connection is refused in between.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use socket2::{Domain, Socket, Type};
use tokio::sync::{mpsc, watch};

use crate::error::ControlError;
use crate::fast::{self, Handover};
use crate::forward::{self, ClientConn};
use crate::http01::Challenges;
use crate::io::{ClientIo, ConnState};
use crate::route::Routes;
use crate::service::ServiceProxy;
use crate::tls::Cert;

/// How long an idle HTTP/1 keep-alive connection is kept open after a stop
/// for its client's next request (answered with `Connection: close`).
pub const LINGER: Duration = Duration::from_secs(1);

/// How often certificate files are looked at for changes.
const CERT_CHECK_EVERY: Duration = Duration::from_secs(2);

/// A listen address to serve: its services, and for the ACME listener
/// the challenges it answers.
type FrontSpec = (SocketAddr, Vec<Arc<ServiceProxy>>, Option<Arc<Challenges>>);

/// The running data plane.
pub struct ProxyServer {
    /// Bound address of each service (resolves port 0).
    pub addrs: BTreeMap<String, SocketAddr>,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// A duplicate of every listening socket, by service, for a hand-over.
    sockets: Vec<(String, std::net::TcpListener)>,
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

impl ProxyServer {
    /// Binds every service's listen address `workers` times and starts the
    /// workers. Binding errors come back before any thread starts.
    pub fn start(
        services: &[Arc<ServiceProxy>],
        workers: usize,
        shutdown_timeout: Duration,
    ) -> Result<ProxyServer, ControlError> {
        Self::start_with(services, workers, shutdown_timeout, BTreeMap::new(), None)
    }

    /// [`Self::start`], taking over `inherited` listening sockets by
    /// service name (from a previous daemon or systemd). A service's
    /// inherited sockets are all accepted on (each has its own queue,
    /// which closing would reset), spread over the workers; workers left
    /// without one bind their own on the same address. A socket whose
    /// address is no longer the service's (the config changed it) is not
    /// used.
    pub fn start_with(
        services: &[Arc<ServiceProxy>],
        workers: usize,
        shutdown_timeout: Duration,
        mut inherited: BTreeMap<String, Vec<std::net::TcpListener>>,
        http01: Option<(SocketAddr, Arc<Challenges>)>,
    ) -> Result<ProxyServer, ControlError> {
        let mut per_worker: Vec<Vec<(Arc<Front>, std::net::TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut addrs = BTreeMap::new();
        let mut sockets = Vec::new();
        let mut watched = Vec::new();
        // Services sharing a fixed listen address share its sockets, and
        // each request picks its service (see `route`); port 0 means a
        // port of its own.
        let mut groups: Vec<(SocketAddr, Vec<Arc<ServiceProxy>>)> = Vec::new();
        for svc in services {
            let Some(listen) = svc.listen else {
                continue;
            };
            match groups
                .iter_mut()
                .find(|(a, _)| *a == listen && listen.port() != 0)
            {
                Some((_, g)) => g.push(svc.clone()),
                None => groups.push((listen, vec![svc.clone()])),
            }
        }
        // The ACME listener routes (to redirect) among the HTTPS services.
        let secure: Vec<Arc<ServiceProxy>> = services
            .iter()
            .filter(|s| s.tls.is_some() && s.listen.is_some())
            .cloned()
            .collect();
        let mut fronts: Vec<FrontSpec> = groups.into_iter().map(|(a, g)| (a, g, None)).collect();
        if let Some((addr, challenges)) = http01 {
            if !secure.is_empty() {
                fronts.push((addr, secure, Some(challenges)));
            }
        }
        for (listen, group, http01) in fronts {
            let name = if http01.is_some() {
                crate::http01::SOCKET_NAME.to_string()
            } else {
                group[0].name.to_string()
            };
            let err = |source| ControlError::Bind {
                service: name.clone(),
                addr: listen,
                source,
            };
            // Sockets handed over are named by a service of theirs; a fixed
            // address is also recognised by itself (the services that share
            // it may have changed).
            let mut own: Vec<std::net::TcpListener> = Vec::new();
            for (key, ls) in inherited.iter_mut() {
                let ours = if http01.is_some() {
                    *key == name
                } else {
                    group.iter().any(|s| *s.name == **key)
                };
                let (take, keep): (Vec<_>, Vec<_>) =
                    std::mem::take(ls).into_iter().partition(|l| {
                        l.local_addr().is_ok_and(|a| {
                            a == listen || (ours && listen.port() == 0 && a.ip() == listen.ip())
                        })
                    });
                own.extend(take);
                *ls = keep;
            }
            if own.is_empty() {
                // The first bind resolves port 0; the others join that port.
                own.push(bind(listen).map_err(err)?);
                let actual = own[0].local_addr().map_err(err)?;
                while own.len() < workers {
                    own.push(bind(actual).map_err(err)?);
                }
            } else {
                // Inherited sockets may lack SO_REUSEPORT (systemd's do,
                // unless `ReusePort=yes`): workers share them instead.
                let n = own.len();
                for i in n..workers {
                    own.push(own[i % n].try_clone().map_err(err)?);
                }
            }
            let actual = own[0].local_addr().map_err(err)?;
            if http01.is_some() {
                addrs.insert(name.clone(), actual);
            } else {
                for svc in &group {
                    addrs.insert(svc.name.to_string(), actual);
                    svc.set_bound(actual);
                }
            }
            let routes = Arc::new(Routes::new(&group));
            // HTTPS when the address's services have certificates (the
            // config has them all or none).
            let tls = if http01.is_none() && group.iter().any(|s| s.tls.is_some()) {
                let mut certs = Vec::new();
                for s in group.iter().filter(|s| s.tls.is_some()) {
                    let t = s.tls.as_ref().expect("filtered");
                    let c = Cert::new(&s.name, &s.domains, &t.cert, &t.key, !t.acme).map_err(
                        |source| ControlError::Tls {
                            service: s.name.to_string(),
                            source,
                        },
                    )?;
                    let c = Arc::new(c);
                    let _ = s.cert.set(c.clone());
                    certs.push(c);
                }
                watched.extend(certs.iter().cloned());
                Some(crate::tls::acceptor(certs))
            } else {
                None
            };
            let front = Arc::new(Front {
                routes,
                tls,
                http01,
            });
            for (i, l) in own.into_iter().enumerate() {
                l.set_nonblocking(true).map_err(err)?;
                sockets.push((name.clone(), l.try_clone().map_err(err)?));
                per_worker[i % workers].push((front.clone(), l));
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        crate::tls::watch(watched, CERT_CHECK_EVERY, stop_rx.clone());
        let mut threads = Vec::new();
        for (i, listeners) in per_worker.into_iter().enumerate() {
            let rx = stop_rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || worker(i, listeners, rx, shutdown_timeout))
                .map_err(ControlError::Worker)?;
            threads.push(h);
        }
        Ok(ProxyServer {
            addrs,
            stop,
            threads,
            sockets,
        })
    }

    /// Duplicates of every listening socket, by service, for the next
    /// daemon (see the module docs).
    pub fn listeners(&self) -> std::io::Result<Vec<(String, std::net::TcpListener)>> {
        self.sockets
            .iter()
            .map(|(n, l)| Ok((n.clone(), l.try_clone()?)))
            .collect()
    }

    /// Stops accepting, lets in-flight requests finish (bounded by the
    /// shutdown timeout) and joins the workers.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn worker(
    index: usize,
    listeners: Vec<(Arc<Front>, std::net::TcpListener)>,
    stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot build worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        // Every connection task holds a clone of `alive`; when the last one
        // is dropped, `all_done.recv()` returns None (mini-redis' pattern).
        let (alive, mut all_done) = mpsc::channel::<()>(1);
        fast::park::install(index, stop.clone());
        for (front, l) in listeners {
            let l = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(service = %front.routes.first().name, error = %e, "cannot register listener");
                    continue;
                }
            };
            tokio::spawn(accept_loop(front, l, index, stop.clone(), alive.clone()));
        }
        drop(alive);
        stopped(&mut stop.clone()).await;
        if tokio::time::timeout(grace, all_done.recv()).await.is_err() {
            tracing::warn!(
                worker = index,
                "shutdown timeout passed with requests still in flight; closing them"
            );
        }
    });
}

/// One listen address as a worker serves it.
pub(crate) struct Front {
    pub routes: Arc<Routes>,
    /// HTTPS: the handshake first (SNI picks the service's certificate).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The ACME listener: challenges and redirects, nothing proxied.
    pub http01: Option<Arc<Challenges>>,
}

async fn accept_loop(
    front: Arc<Front>,
    l: tokio::net::TcpListener,
    worker: usize,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    // Connection-level settings: those of the address's first service.
    let svc = front.routes.first().clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .max_buf_size(svc.settings.max_header_bytes.max(8192));
    builder.http2().max_concurrent_streams(250);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(service = %svc.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = stream.set_nodelay(true);
        let (front, builder, stop, alive) =
            (front.clone(), builder.clone(), stop.clone(), alive.clone());
        // A task's future is as large as the largest one it may await, for
        // the connection's whole life: hyper's connection and the TLS
        // branch are boxed so a plain fast-path connection carries only
        // the fast path's own state (idle: ~1 kB in all, not ~6 kB).
        tokio::spawn(async move {
            // The ACME listener answers challenges only: hyper's path.
            let fast = front.http01.is_none() && front.routes.first().settings.fast_path;
            let Some(tls) = front.tls.clone() else {
                if fast {
                    let hand = Handover { builder, alive };
                    fast::serve(stream, peer, false, front, worker, stop, hand, None).await;
                } else {
                    Box::pin(serve_conn(
                        stream, peer, false, front, builder, worker, stop, alive,
                    ))
                    .await;
                }
                return;
            };
            Box::pin(async move {
                // The handshake gets the header timeout: a client that opens
                // a connection and says nothing holds it no longer than that.
                let limit = front.routes.first().settings.header_timeout;
                match tokio::time::timeout(limit, tls.accept(stream)).await {
                    // HTTP/2 (by ALPN) is hyper's.
                    Ok(Ok(s)) if fast && s.get_ref().1.alpn_protocol() != Some(b"h2") => {
                        let hand = Handover { builder, alive };
                        fast::serve(s, peer, true, front, worker, stop, hand, None).await;
                    }
                    Ok(Ok(s)) => {
                        Box::pin(serve_conn(
                            s, peer, true, front, builder, worker, stop, alive,
                        ))
                        .await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            })
            .await;
        });
    }
}

/// Serves one client connection (plain or TLS) until it ends, or until a
/// stop: see the module docs for how it ends then.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_conn<S>(
    stream: S,
    peer: SocketAddr,
    tls: bool,
    front: Arc<Front>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    worker: usize,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = front.routes.first().clone();
    let state = Arc::new(ConnState::default());
    let stats_svc = svc.clone();
    let io = ClientIo::new(
        stream,
        state.clone(),
        svc.settings.header_timeout,
        svc.settings.idle_timeout,
        Box::new(move || {
            stats_svc
                .stats
                .header_timeout
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }),
    );
    let client = Arc::new(ClientConn::new(
        peer,
        state.clone(),
        worker,
        Some(alive.clone()),
        tls,
    ));
    let routes = front.routes.clone();
    let http01 = front.http01.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let h1 = req.version() <= hyper::Version::HTTP_11;
        let plain = http01
            .as_ref()
            .map(|c| crate::http01::answer(c, &routes, &client, request_host(&req), &req));
        let picked = match plain {
            Some(_) => None,
            None => routes.pick(request_host(&req), req.uri().path()).cloned(),
        };
        let client = client.clone();
        async move {
            if let Some(mut r) = plain {
                if h1
                    && client
                        .state
                        .closing
                        .load(std::sync::atomic::Ordering::SeqCst)
                {
                    r.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                }
                return Ok::<_, std::convert::Infallible>(r);
            }
            let hsts = picked
                .as_ref()
                .is_some_and(|s| s.tls.as_ref().is_some_and(|t| t.hsts));
            let mut r = match picked {
                Some(svc) => forward::handle(svc, client.clone(), req).await?,
                None => forward::unrouted(&client, &req),
            };
            let h = r.headers_mut();
            if hsts {
                h.insert(
                    hyper::header::STRICT_TRANSPORT_SECURITY,
                    hyper::header::HeaderValue::from_static("max-age=31536000"),
                );
            }
            if h1
                && client
                    .state
                    .closing
                    .load(std::sync::atomic::Ordering::SeqCst)
                && r.status() != hyper::StatusCode::SWITCHING_PROTOCOLS
            {
                r.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::trace!(error = %e, "client connection ended"); } }
        _ = stopped(&mut stop) => {
            use std::sync::atomic::Ordering::SeqCst;
            state.closing.store(true, SeqCst);
            // HTTP/1: the next response says close; a client that
            // sends nothing more within LINGER is closed then.
            // HTTP/2: GOAWAY now.
            let ended = !state.h2.load(SeqCst)
                && tokio::time::timeout(LINGER, conn.as_mut()).await.is_ok();
            if !ended {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
    drop(alive);
}

/// The host a request is for: the URI's authority (HTTP/2, absolute
/// form), else the `Host` header.
fn request_host<B>(req: &hyper::Request<B>) -> Option<&str> {
    req.uri()
        .host()
        .or_else(|| req.headers().get(hyper::header::HOST)?.to_str().ok())
}

/// Resolves once shutdown is asked for (or the sender is gone). The
/// `watch::Ref` that `wait_for` returns is not `Send`, so it is dropped here.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
