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

/// A target that answers 413 as soon as it has the head and never reads
/// the body (then shuts its side, or holds the connection open): the
/// client gets the answer at once, not after the response timeout, even
/// while it is still sending, and (on the fast path) its connection ends
/// once the rest of the body has stopped going up (the response timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_a_streamed_body_reaches_the_client() {
    for fast_path in [true, false] {
        for close_write in [false, true] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let target = tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let (mut s, _) = l.accept().await.unwrap();
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut b = [0u8; 1024];
                        match s.read(&mut b).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                            _ => break,
                        }
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large",
                        )
                        .await;
                    if close_write {
                        let _ = s.shutdown().await;
                    }
                    held.push(s);
                }
            });
            let mut h = health(1000);
            h.enabled = false;
            let mut cfg = service_cfg(Balance::RoundRobin, h);
            cfg.proxy.fast_path = fast_path;
            // A body nobody reads stops the upload after this long.
            cfg.proxy.response_timeout = Duration::from_secs(2);
            let p = TestProxy::start(cfg).await;
            p.add_at(addr, "early");
            p.wait_healthy(1).await;

            const N: usize = 64 << 20;
            let s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            let writer = tokio::spawn(async move {
                let head = format!("PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: {N}\r\n\r\n");
                wr.write_all(head.as_bytes()).await?;
                let piece = vec![b'u'; 64 * 1024];
                for _ in 0..N / piece.len() {
                    wr.write_all(&piece).await?;
                }
                Ok::<_, std::io::Error>(())
            });
            let started = std::time::Instant::now();
            let mut got = Vec::new();
            let mut answered = None;
            let ended = tokio::time::timeout(Duration::from_secs(10), async {
                let mut b = [0u8; 4096];
                loop {
                    match rd.read(&mut b).await {
                        Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                        _ => return,
                    }
                    if got.ends_with(b"too large") {
                        answered.get_or_insert(started.elapsed());
                        if !fast_path {
                            return;
                        }
                    }
                }
            })
            .await;
            let text = String::from_utf8_lossy(&got);
            let what = format!("fast_path={fast_path} close_write={close_write}: {text}");
            assert!(text.starts_with("HTTP/1.1 413"), "{what}");
            assert!(text.ends_with("\r\n\r\ntoo large"), "{what}");
            // Before the body stops being sent, which waits for the
            // response timeout (2 s) with a target that does not read it.
            let answered = answered.unwrap();
            assert!(
                answered < Duration::from_millis(1500),
                "{answered:?} {what}"
            );
            if !fast_path {
                // hyper's path keeps the connection while its client half
                // waits to send the rest to a target that never reads it:
                // the answer arrived, and that is all it promises.
                target.abort();
                continue;
            }
            assert!(ended.is_ok(), "the connection did not end: {what}");
            assert!(started.elapsed() < Duration::from_secs(10), "{what}");
            // The rest of the body is read and dropped for a while (so the
            // answer is not lost to a reset), then the connection ends: the
            // client's writes end too, one way or the other.
            tokio::time::timeout(Duration::from_secs(10), writer)
                .await
                .expect("the writer ends once the connection is closed")
                .unwrap()
                .ok();
            target.abort();
        }
    }
}

/// A body that is not forwarded (no service for its host) is never read
/// as the next request: the answer ends the connection. Before, a request
/// hidden in a large body reached a service the body was never meant for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_nobody_takes_is_not_read_as_a_request() {
    let a = upstream("a").await;
    let mut cfg = service_cfg(Balance::RoundRobin, health(50));
    cfg.domains = vec!["real.test".into()];
    let p = TestProxy::start(cfg).await;
    p.add_default(&a);
    p.wait_healthy(1).await;
    let hidden = "GET /echo HTTP/1.1\r\nHost: real.test\r\n\r\n";
    let padded = format!("{hidden}{}", "p".repeat(20_000 - hidden.len()));
    for framing in ["Content-Length: 20000", "Transfer-Encoding: chunked"] {
        let req = format!("POST / HTTP/1.1\r\nHost: nosuch.test\r\n{framing}\r\n\r\n{padded}");
        let r = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{framing}: {r}");
        assert_eq!(r.matches("HTTP/1.1").count(), 1, "{framing}: {r}");
        assert!(
            r.to_ascii_lowercase().contains("connection: close"),
            "{framing}: {r}"
        );
    }
    // `Connection: content-length` would hide the length from the target.
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: real.test\r\nConnection: content-length\r\nContent-Length: 20000\r\n\r\n{padded}"
    );
    let r = raw(p.addr, req.as_bytes(), Duration::from_secs(5)).await;
    // One answer: the POST's, its body echoed whole.
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("content-length: 20000\r\n"), "{r}");
    // The POST reached /echo, never the hidden GET.
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// A target that answers as soon as it has the head and then reads the
/// body to drop it (nginx's `return` does): the rest of the body follows
/// the answer, and both connections carry the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_that_still_reads_the_body_keeps_the_connection() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let target = tokio::spawn({
        let conns = conns.clone();
        async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                conns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut b = [0u8; 65536];
                            match s.read(&mut b).await {
                                Ok(n) if n > 0 => buf.extend_from_slice(&b[..n]),
                                _ => return,
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end);
                        let mut left: usize = head
                            .split("\r\n")
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        // The answer first, then the body, dropped.
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                        while left > 0 {
                            if buf.is_empty() {
                                let mut b = [0u8; 65536];
                                match s.read(&mut b).await {
                                    Ok(n) if n > 0 => buf.extend_from_slice(&b[..n]),
                                    _ => return,
                                }
                            }
                            let k = left.min(buf.len());
                            buf.drain(..k);
                            left -= k;
                        }
                    }
                });
            }
        }
    });
    let mut h = health(1000);
    h.enabled = false;
    let p = TestProxy::start(service_cfg(Balance::RoundRobin, h)).await;
    p.add_at(addr, "early");
    p.wait_healthy(1).await;

    const N: usize = 4 << 20;
    let s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let head = format!("POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: {N}\r\n\r\n");
        wr.write_all(head.as_bytes()).await.unwrap();
        wr.write_all(&vec![b'u'; N]).await.unwrap();
        wr.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        wr
    });
    let mut got = Vec::new();
    let two = tokio::time::timeout(Duration::from_secs(10), async {
        let mut b = [0u8; 4096];
        while got.windows(2).filter(|w| w == b"ok").count() < 2 {
            match rd.read(&mut b).await {
                Ok(n) if n > 0 => got.extend_from_slice(&b[..n]),
                _ => return,
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(two.is_ok(), "{text}");
    assert_eq!(text.matches("http/1.1 200 ok").count(), 2, "{text}");
    assert!(!text.contains("connection: close"), "{text}");
    let _wr = writer.await.unwrap();
    // Both requests on one upstream connection.
    assert_eq!(conns.load(std::sync::atomic::Ordering::Relaxed), 1);
    target.abort();
}
