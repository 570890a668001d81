//! Listeners and workers: the data plane's threads.
//!
//! Like nginx workers, each worker is one OS thread running a current-thread
//! tokio runtime with its *own* `SO_REUSEPORT` listener per service; the
//! kernel spreads new connections across them and a connection then lives on
//! one thread for good (no cross-thread wake-ups on the request path). Each
//! worker keeps its own upstream connections (see `Target::checkout`).
//!
//! Shutdown: stop accepting, ask every connection to finish gracefully
//! (in-flight requests complete, idle keep-alive connections close), and
//! wait for them up to the shutdown timeout.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use socket2::{Domain, Socket, Type};
use tokio::sync::{mpsc, watch};

use crate::error::ControlError;
use crate::forward::{self, ClientConn};
use crate::io::{ClientIo, ConnState};
use crate::service::ServiceProxy;

/// The running data plane.
pub struct ProxyServer {
    /// Bound address of each service (resolves port 0).
    pub addrs: BTreeMap<String, SocketAddr>,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
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
        let mut per_worker: Vec<Vec<(Arc<ServiceProxy>, std::net::TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut addrs = BTreeMap::new();
        for svc in services {
            let err = |source| ControlError::Bind {
                service: svc.name.to_string(),
                addr: svc.listen,
                source,
            };
            // The first bind resolves port 0; the others join that port.
            let first = bind(svc.listen).map_err(err)?;
            let actual = first.local_addr().map_err(err)?;
            addrs.insert(svc.name.to_string(), actual);
            svc.set_bound(actual);
            per_worker[0].push((svc.clone(), first));
            for w in per_worker.iter_mut().skip(1) {
                w.push((svc.clone(), bind(actual).map_err(err)?));
            }
        }
        let (stop, stop_rx) = watch::channel(false);
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
        })
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
    listeners: Vec<(Arc<ServiceProxy>, std::net::TcpListener)>,
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
        for (svc, l) in listeners {
            let l = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(service = %svc.name, error = %e, "cannot register listener");
                    continue;
                }
            };
            tokio::spawn(accept_loop(svc, l, index, stop.clone(), alive.clone()));
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

async fn accept_loop(
    svc: Arc<ServiceProxy>,
    l: tokio::net::TcpListener,
    worker: usize,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
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
        let svc = svc.clone();
        let builder = builder.clone();
        let mut stop = stop.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
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
            let client = Arc::new(ClientConn::new(peer, state, worker));
            let service = hyper::service::service_fn(move |req| {
                forward::handle(svc.clone(), client.clone(), req)
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => { if let Err(e) = r { tracing::trace!(error = %e, "client connection ended"); } }
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(alive);
        });
    }
}

/// Resolves once shutdown is asked for (or the sender is gone). The
/// `watch::Ref` that `wait_for` returns is not `Send`, so it is dropped here.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
