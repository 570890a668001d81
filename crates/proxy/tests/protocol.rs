//! HTTP edge cases: smuggling refused, upgrades, streaming, h2c, slowloris,
//! header limits.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use handoff_core::config::Balance;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn proxy_with_a() -> (TestProxy, Upstream) {
    let a = upstream("a").await;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, health(50))).await;
    p.add_default(&a);
    p.wait_healthy(1).await;
    (p, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_with_400() {
    let (p, a) = proxy_with_a().await;
    let limit = Duration::from_secs(5);
    let r = raw(p.addr, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", limit).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(
        r.contains("both Content-Length and Transfer-Encoding"),
        "{r}"
    );
    let r = raw(
        p.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        limit,
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(p.addr, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", limit).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // Nothing of those reached the upstream.
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A clean chunked request still works.
    let r = raw(p.addr, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n", limit).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.contains("hello"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (p, _a) = proxy_with_a().await;
    let big = "x".repeat(40 * 1024);
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let r = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_gets_408() {
    let a = upstream("a").await;
    let mut cfg = service_cfg(Balance::RoundRobin, health(50));
    cfg.proxy.header_timeout = Duration::from_millis(300);
    let p = TestProxy::start(cfg).await;
    p.add_default(&a);
    p.wait_healthy(1).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Trickle a header byte by byte, never finishing the head.
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let read = async {
        let _ = s.write_all(b"X-Slow: a").await;
        s.read_to_end(&mut out).await
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap()
        .unwrap();
    let r = String::from_utf8_lossy(&out);
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // A keep-alive connection between requests is not a slowloris.
    let mut c = Client::connect(p.addr).await;
    assert_eq!(c.get("/").await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await; // idle longer than header_timeout on purpose
    assert_eq!(c.get("/").await.unwrap().0, 200);
}

/// A small body the fast path reads whole before forwarding: one that
/// stops short is a slow request (408 after `header_timeout`), and the
/// upstream never sees half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_that_stops_short_gets_408_and_nothing_goes_upstream() {
    let a = upstream("a").await;
    let mut cfg = service_cfg(Balance::RoundRobin, health(50));
    cfg.proxy.header_timeout = Duration::from_millis(300);
    let p = TestProxy::start(cfg).await;
    p.add_default(&a);
    p.wait_healthy(1).await;
    let before = p
        .svc
        .stats
        .header_timeout
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let r = String::from_utf8_lossy(&out);
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        p.svc
            .stats
            .header_timeout
            .load(std::sync::atomic::Ordering::Relaxed),
        before + 1
    );
    let hits = a.hits.load(std::sync::atomic::Ordering::Relaxed);
    // The same body sent whole goes through, on a new connection.
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhalf-whole")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let r = String::from_utf8_lossy(&out);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("half-whole"), "{r}");
    // The cut request never reached the upstream; the whole one did, once.
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::Relaxed), hits + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_tunnels_bytes_both_ways() {
    let (p, _a) = proxy_with_a().await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"\x81\x05world", &[7u8; 3000]] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let (p, _a) = proxy_with_a().await;
    const N: usize = 32 << 20;
    // Upload: a streamed body of N bytes echoed back.
    let chunks = futures_util::stream::iter((0..N / 65536).map(|i| {
        Ok::<_, hyper::Error>(hyper::body::Frame::data(Bytes::from(vec![
            b'a' + (i % 26)
                as u8;
            65536
        ])))
    }));
    let body = BodyExt::boxed(http_body_util::StreamBody::new(chunks));
    let mut c = Client::connect(p.addr).await;
    let req = http::Request::post("/echo")
        .header("host", "x")
        .body(body)
        .unwrap();
    let (s, echoed) = c.request(req).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(echoed.len(), N);
    // Download: N bytes, on the same connection.
    let (s, got) = c.get(&format!("/bytes?n={N}")).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(got.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served() {
    let (p, _a) = proxy_with_a().await;
    let stream = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::get(format!("http://{}/headers", p.addr))
            .body(empty())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(&format!("host: {}", p.addr)), "{text}");
        assert!(text.contains("uri: /headers\n"), "{text}");
    }
}
