//! Test kit: real upstream servers and a real proxy on 127.0.0.1 port 0,
//! a minimal HTTP client, and polling with deadlines (never bare sleeps).

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use handoff_core::config::{
    Amount, Backend, Balance, BlueGreen, Drain, Health, InPlace, ProxySettings, Service, Strategy,
};
use handoff_proxy::{Proxy, ProxyServer, ServiceProxy, TargetSpec, DEFAULT_GROUP};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn empty() -> Body {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A controllable upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub healthy: Arc<AtomicBool>,
    pub fail: Arc<AtomicBool>,
    /// Requests to `/` served (excluding health checks).
    pub hits: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub async fn upstream(name: &str) -> Upstream {
    upstream_on(name, "127.0.0.1:0".parse().unwrap()).await
}

/// An upstream on a given address (e.g. one a target was registered on
/// before anything listened there).
pub async fn upstream_on(name: &str, addr: SocketAddr) -> Upstream {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let fail = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (h, f, n, c, nm) = (
        healthy.clone(),
        fail.clone(),
        hits.clone(),
        connections.clone(),
        name.to_string(),
    );
    tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        loop {
            let (s, _) = tokio::select! {
                r = l.accept() => r.unwrap(),
                _ = stop_rx.changed() => return,
            };
            c.fetch_add(1, Relaxed);
            let (h, f, n, nm) = (h.clone(), f.clone(), n.clone(), nm.clone());
            let mut stop_rx = stop_rx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (h, f, n, nm) = (h.clone(), f.clone(), n.clone(), nm.clone());
                    async move { Ok::<_, Infallible>(serve(req, &nm, &h, &f, &n).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades();
                tokio::select! {
                    _ = conn => {}
                    _ = stop_rx.changed() => {}
                }
            });
        }
    });
    Upstream {
        addr,
        name: name.into(),
        healthy,
        fail,
        hits,
        connections,
        stop,
    }
}

async fn serve(
    mut req: Request<Incoming>,
    name: &str,
    healthy: &AtomicBool,
    fail: &AtomicBool,
    hits: &AtomicU64,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let q = req.uri().query().unwrap_or("").to_string();
    let num = |k: &str| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}="))?.parse::<u64>().ok())
    };
    match path.as_str() {
        "/healthz" => {
            if healthy.load(Relaxed) {
                Response::new(full("ok"))
            } else {
                let mut r = Response::new(full("sick"));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r
            }
        }
        "/echo" => {
            hits.fetch_add(1, Relaxed);
            Response::new(req.into_body().boxed())
        }
        // Answers only once the whole body came: its length.
        "/collect" => {
            hits.fetch_add(1, Relaxed);
            match req.into_body().collect().await {
                Ok(b) => Response::new(full(b.to_bytes().len().to_string())),
                Err(_) => Response::new(full("broken")),
            }
        }
        "/bytes" => {
            let n = num("n").unwrap_or(0);
            let chunk = Bytes::from(vec![b'z'; 65536]);
            let s = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let k = left.min(65536);
                    Some((
                        Ok::<_, hyper::Error>(hyper::body::Frame::data(chunk.slice(..k as usize))),
                        left - k,
                    ))
                }
            });
            Response::new(BodyExt::boxed(http_body_util::StreamBody::new(s)))
        }
        "/sleep" => {
            hits.fetch_add(1, Relaxed);
            tokio::time::sleep(Duration::from_millis(num("ms").unwrap_or(100))).await;
            Response::new(full(name.to_string()))
        }
        "/headers" => {
            let mut s = String::new();
            for (k, v) in req.headers() {
                s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            s.push_str(&format!("uri: {}\n", req.uri()));
            Response::new(full(s))
        }
        "/upgrade" => {
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
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r
        }
        _ => {
            hits.fetch_add(1, Relaxed);
            if fail.load(Relaxed) {
                let mut r = Response::new(full(format!("{name} failing")));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            } else {
                Response::new(full(name.to_string()))
            }
        }
    }
}

pub fn health(interval_ms: u64) -> Health {
    Health {
        enabled: true,
        path: "/healthz".into(),
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(500),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        min_healthy_time: Duration::ZERO,
        healthy_deadline: Duration::from_secs(10),
        passive_failures: 3,
        ejection_time: Duration::from_millis(500),
        max_ejection_time: Duration::from_secs(5),
        max_ejection_percent: 50,
    }
}

pub fn service_cfg(balance: Balance, health: Health) -> Service {
    Service {
        name: "web".into(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        balancer: Default::default(),
        domains: Vec::new(),
        path_prefix: None,
        tls: None,
        backend: Backend::Static { targets: vec![] },
        health,
        drain: Drain {
            timeout: Duration::from_secs(5),
        },
        proxy: ProxySettings {
            balance,
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            upstream_tls: None,
            fast_path: true,
        },
        strategy: Strategy::InPlace,
        in_place: InPlace {
            batch: Amount::Count(1).into(),
            headroom: 30,
            instance_capacity: None,
            min_healthy: Amount::Count(1),
        },
        blue_green: BlueGreen {
            traffic_steps: vec![50],
            bake: Duration::ZERO,
            retention: Duration::ZERO,
        },
        hooks: Default::default(),
        rollback: handoff_core::config::RollbackPolicy {
            max_error_rate_increase: 0.05,
            max_p99_ratio: 2.0,
            min_requests: 20,
        },
    }
}

pub struct TestProxy {
    pub svc: Arc<ServiceProxy>,
    pub addr: SocketAddr,
    server: Option<ProxyServer>,
    pub proxy: Proxy,
}

impl TestProxy {
    pub async fn start(cfg: Service) -> TestProxy {
        let mut proxy = Proxy::new(2);
        let svc = proxy.add_service(&cfg).unwrap();
        let server = proxy.start(Duration::from_secs(5)).unwrap();
        let addr = server.addrs["web"];
        TestProxy {
            svc,
            addr,
            server: Some(server),
            proxy,
        }
    }

    pub fn add(&self, group: &str, u: &Upstream) -> u64 {
        self.svc
            .add_target(
                group,
                TargetSpec {
                    addr: u.addr,
                    revision: u.name.clone(),
                    name: u.name.clone(),
                    hold: false,
                },
            )
            .unwrap()
            .id
    }

    pub fn add_default(&self, u: &Upstream) -> u64 {
        self.add(DEFAULT_GROUP, u)
    }

    /// Adds a target by address (a server of the test's own, revision
    /// `v1`) to the default group.
    pub fn add_at(&self, addr: std::net::SocketAddr, name: &str) -> u64 {
        self.svc
            .add_target(
                DEFAULT_GROUP,
                TargetSpec {
                    addr,
                    revision: "v1".into(),
                    name: name.into(),
                    hold: false,
                },
            )
            .unwrap()
            .id
    }

    /// Waits until `n` targets are healthy.
    pub async fn wait_healthy(&self, n: usize) {
        let svc = self.svc.clone();
        wait_for("targets healthy", Duration::from_secs(10), || {
            svc.table()
                .targets()
                .filter(|(_, t)| t.state() == handoff_core::TargetState::Healthy)
                .count()
                >= n
        })
        .await;
    }
}

impl TestProxy {
    /// Starts the data plane's shutdown on a thread of its own (it joins
    /// the workers); the handle ends when the shutdown has.
    pub fn shutdown_in_background(&mut self) -> std::thread::JoinHandle<()> {
        let s = self.server.take().expect("not shut down yet");
        std::thread::spawn(move || s.shutdown())
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            // Joins worker threads; fine to block in a test's drop.
            s.shutdown();
        }
    }
}

/// Polls `f` every 10 ms until true or the deadline, then panics naming `what`.
pub async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A keep-alive HTTP/1.1 client on one connection.
pub struct Client {
    send: hyper::client::conn::http1::SendRequest<Body>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        Client { send }
    }

    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, String), String> {
        self.request(
            Request::get(path)
                .header("host", "test.local")
                .body(empty())
                .unwrap(),
        )
        .await
    }

    pub async fn request(&mut self, req: Request<Body>) -> Result<(StatusCode, String), String> {
        self.send.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .send
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), String> {
    Client::connect(addr).await.get(path).await
}

/// Sends raw bytes and reads until the server closes or `limit` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads from `s` into `buf` until `buf` holds a whole head: its length,
/// or `None` at EOF or an error. For test targets that speak raw HTTP/1.
pub async fn read_head(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 16 * 1024];
        match s.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}
