//! `handoff sample-app`: the bundled test and demo web app.
//!
//! One small single-threaded hyper server (about a megabyte of memory) whose
//! knobs let tests and the demo play every part a real app plays in a
//! deploy: slow to start, never healthy, crashing, erroring, slow.
//!
//! Routes: `GET /` (JSON: version, instance, pid, port), `GET /healthz`,
//! `POST /echo` (streams the body back), `GET /bytes?n=N` (N bytes,
//! streamed), `GET /sleep?ms=N`, and `GET /upgrade` (answers
//! `101 Switching Protocols` and echoes raw bytes, like a WebSocket echo).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;

#[derive(Debug, Clone, Args)]
pub struct SampleApp {
    /// Address to listen on (an instance on a host listens on the host's
    /// own address: `--address {address}`).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
    /// Port to listen on; 0 picks a free one and prints it.
    #[arg(long, env = "PORT")]
    pub port: u16,
    /// Version reported in every answer.
    #[arg(long, default_value = "v1")]
    pub version: String,
    /// Instance name reported in answers.
    #[arg(long, env = "HANDOFF_INSTANCE", default_value = "sample")]
    pub instance: String,
    /// Wait this long before listening (a slow-starting app).
    #[arg(long, value_parser = duration)]
    pub startup_delay: Option<Duration>,
    /// Answer /healthz with 503 (an app that never gets healthy).
    #[arg(long)]
    pub fail_health: bool,
    /// Answer /healthz with 503 from this long after starting on, while
    /// `GET /` still works (an app that hangs on a dependency).
    #[arg(long, value_parser = duration)]
    pub fail_health_after: Option<Duration>,
    /// Exit with status 1 this long after starting (a crashing app).
    #[arg(long, value_parser = duration)]
    pub crash_after: Option<Duration>,
    /// Share of `GET /` answered with 500, from 0.0 to 1.0.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Added latency on `GET /`.
    #[arg(long, value_parser = duration)]
    pub latency: Option<Duration>,
    /// Speak HTTPS only, with this PEM certificate chain (and `--tls-key`):
    /// an app behind `upstream_tls`.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// The HTTPS side of `--tls-cert`/`--tls-key` (HTTP/1.1 only).
fn tls_acceptor(cfg: &SampleApp) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else {
        return Ok(None);
    };
    let loaded = handoff_proxy::tls::load(cert, key, &[])
        .map_err(|e| anyhow::anyhow!("sample-app --tls-cert/--tls-key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(One(loaded.key.clone())));
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(c))))
}

/// The one certificate, whatever the client's SNI.
#[derive(Debug)]
struct One(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for One {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    handoff_core::duration::parse(s)
}

struct App {
    cfg: SampleApp,
    started: std::time::Instant,
    body_prefix: String,
    served: AtomicU64,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn run(cfg: SampleApp) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&cfg.error_rate) {
        anyhow::bail!(
            "--error-rate must be between 0.0 and 1.0, got {}",
            cfg.error_rate
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: SampleApp) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    if let Some(d) = cfg.startup_delay {
        tokio::time::sleep(d).await;
    }
    let tls = tls_acceptor(&cfg)?;
    let at = std::net::SocketAddr::new(cfg.address, cfg.port);
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .map_err(|e| anyhow::anyhow!("sample-app cannot listen on {at}: {e}"))?;
    let addr = listener.local_addr()?;
    println!(
        "sample-app {} ({}) listening on {addr}",
        cfg.version, cfg.instance
    );
    if let Some(d) = cfg.crash_after {
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            eprintln!("sample-app: crashing as asked (--crash-after)");
            std::process::exit(1);
        });
    }
    let app = Arc::new(App {
        started: std::time::Instant::now(),
        body_prefix: format!(
            "{{\"version\":{:?},\"instance\":{:?},\"pid\":{},\"port\":{}",
            cfg.version,
            cfg.instance,
            std::process::id(),
            addr.port()
        ),
        cfg,
        served: AtomicU64::new(0),
    });
    let (alive, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let alive = alive.clone();
        let stop = stop_rx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_conn(stream, app, stop).await,
                Some(tls) => {
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await
                    {
                        serve_conn(s, app, stop).await;
                    }
                }
            }
            drop(alive);
        });
    }
    // SIGTERM: stop accepting, let in-flight requests finish, exit 0.
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive);
    let _ = tokio::time::timeout(Duration::from_secs(30), all_done.recv()).await;
    Ok(())
}

async fn serve_conn<S>(stream: S, app: Arc<App>, mut stop: tokio::sync::watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |req| handle(app.clone(), req)),
        )
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn handle(app: Arc<App>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let resp = match (req.method().as_str(), path.as_str()) {
        ("GET", "/healthz") => {
            let sick = app
                .cfg
                .fail_health_after
                .is_some_and(|d| app.started.elapsed() >= d);
            if app.cfg.fail_health {
                status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unhealthy (--fail-health)\n",
                )
            } else if sick {
                status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unhealthy (--fail-health-after)\n",
                )
            } else {
                Response::new(full("ok\n"))
            }
        }
        (_, "/echo") => {
            let mut r = Response::new(req.into_body().boxed());
            r.headers_mut().insert(
                "x-version",
                app.cfg
                    .version
                    .parse()
                    .unwrap_or(http::HeaderValue::from_static("?")),
            );
            r
        }
        ("GET", "/bytes") => {
            let n = query_u64(&req, "n").unwrap_or(0);
            const CHUNK: usize = 64 * 1024;
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let k = left.min(CHUNK as u64);
                    Some((
                        Ok::<_, hyper::Error>(Frame::data(chunk.slice(..k as usize))),
                        left - k,
                    ))
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, n.into());
            r
        }
        ("GET", "/sleep") => {
            let ms = query_u64(&req, "ms").unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(format!("{},\"slept_ms\":{ms}}}\n", app.body_prefix)))
        }
        ("GET", "/upgrade") => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let (mut r, mut w) = tokio::io::split(&mut io);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let proto = req
                .headers()
                .get(http::header::UPGRADE)
                .cloned()
                .unwrap_or(http::HeaderValue::from_static("echo"));
            r.headers_mut().insert(http::header::UPGRADE, proto);
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
            r
        }
        ("GET", "/headers") => {
            let mut s = String::new();
            for (k, v) in req.headers() {
                s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            Response::new(full(s))
        }
        // `/` and any other path: the answer that names the revision
        // (services behind a path prefix get their full path).
        ("GET", _) => {
            if let Some(l) = app.cfg.latency {
                tokio::time::sleep(l).await;
            }
            let n = app.served.fetch_add(1, Ordering::Relaxed);
            if app.cfg.error_rate > 0.0 && fastrand::f64() < app.cfg.error_rate {
                status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!(
                        "{},\"error\":\"injected (--error-rate)\"}}\n",
                        app.body_prefix
                    ),
                )
            } else {
                let mut r = Response::new(full(format!("{},\"served\":{n}}}\n", app.body_prefix)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
        }
        _ => status(StatusCode::NOT_FOUND, "not found\n"),
    };
    Ok(resp)
}

fn status(s: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = s;
    r
}
