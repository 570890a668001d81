//! Idle keep-alive connections parked without a task (`fast::park`): a
//! parked connection goes on as if it had never left, closes at its idle
//! timeout, frees its slot when the client leaves, and is ended like any
//! idle connection by a stop.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::*;
use handoff_core::config::Balance;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

async fn proxy(idle_timeout: Duration) -> (TestProxy, Upstream) {
    let a = upstream("a").await;
    let mut cfg = service_cfg(Balance::RoundRobin, health(50));
    cfg.proxy.idle_timeout = idle_timeout;
    let p = TestProxy::start(cfg).await;
    p.add_default(&a);
    p.wait_healthy(1).await;
    (p, a)
}

fn parked(p: &TestProxy) -> u64 {
    p.svc.stats.parked_connections.load(Relaxed)
}

/// Reads one response whose body has a `content-length`; returns the head
/// (lowercased) and body.
async fn response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (head, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the proxy closes the connection; how long that took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut rest = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut rest)).await {
        Ok(Ok(_)) | Ok(Err(_)) => {}
        Err(_) => panic!("not closed within {limit:?}"),
    }
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_serves_its_next_request_even_split() {
    let (p, a) = proxy(Duration::from_secs(30)).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(GET).await.unwrap();
    let (head, body) = response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "a");
    wait_for("the connection parked", Duration::from_secs(5), || {
        parked(&p) == 1
    })
    .await;
    // The next request in two writes: the first wakes the connection, the
    // second finds its task reading.
    s.write_all(&GET[..10]).await.unwrap();
    wait_for("the connection resumed", Duration::from_secs(5), || {
        parked(&p) == 0
    })
    .await;
    s.write_all(&GET[10..]).await.unwrap();
    let (head, body) = response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(body, "a");
    // Parked again, and again woken: a third request, in one write.
    wait_for("parked again", Duration::from_secs(5), || parked(&p) == 1).await;
    s.write_all(GET).await.unwrap();
    let (head, _) = response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(a.hits.load(Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_closes_at_its_idle_timeout() {
    let idle = Duration::from_millis(1500);
    let (p, _a) = proxy(idle).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(GET).await.unwrap();
    response(&mut s).await;
    let answered = Instant::now();
    wait_for("the connection parked", Duration::from_secs(5), || {
        parked(&p) == 1
    })
    .await;
    closed_within(&mut s, Duration::from_secs(10)).await;
    let after = answered.elapsed();
    // Not before its idle timeout; late by at most a sweep (and this
    // machine's noise).
    assert!(after >= idle - Duration::from_millis(50), "{after:?}");
    assert!(after < idle + Duration::from_secs(2), "{after:?}");
    assert_eq!(parked(&p), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_parked_frees_its_slot() {
    let (p, a) = proxy(Duration::from_secs(30)).await;
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(GET).await.unwrap();
        response(&mut s).await;
        conns.push(s);
    }
    wait_for("20 connections parked", Duration::from_secs(5), || {
        parked(&p) == 20
    })
    .await;
    conns.truncate(5);
    wait_for("15 slots freed", Duration::from_secs(5), || parked(&p) == 5).await;
    // The five left still serve.
    for s in &mut conns {
        s.write_all(GET).await.unwrap();
        let (head, _) = response(s).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
    }
    assert_eq!(a.hits.load(Relaxed), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_parked_connections_like_idle_ones() {
    let (mut p, a) = proxy(Duration::from_secs(30)).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(GET).await.unwrap();
    response(&mut s).await;
    let mut silent = TcpStream::connect(p.addr).await.unwrap();
    silent.write_all(GET).await.unwrap();
    response(&mut silent).await;
    wait_for("both parked", Duration::from_secs(5), || parked(&p) == 2).await;
    let svc = p.svc.clone();
    let stopping = p.shutdown_in_background();
    // The stop gives each connection its task back; a request within
    // LINGER is answered, with `Connection: close`.
    wait_for(
        "connections resumed by the stop",
        Duration::from_secs(5),
        || svc.stats.parked_connections.load(Relaxed) == 0,
    )
    .await;
    s.write_all(GET).await.unwrap();
    let (head, body) = response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "a");
    closed_within(&mut s, Duration::from_secs(5)).await;
    // The silent one is closed after LINGER (1 s), and the shutdown,
    // which waits for every connection, ends.
    closed_within(&mut silent, Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stopping.is_finished() {
        assert!(Instant::now() < deadline, "shutdown did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stopping.join().unwrap();
    assert_eq!(a.hits.load(Relaxed), 3);
}
